"""Kernel tiles, colour coding and legends: shapes and values."""

import numpy as np
import pytest

from swsl_cli import visualize

RNG = np.random.default_rng(3)


def one_hot_similarity(rows, cols, groups, count, nearest):
    sims = np.zeros((rows, cols, groups, count))
    sims[..., nearest] = 1.0
    return sims


def test_weighted_kernels_mix_kcp_kernels_by_similarity():
    kernels = RNG.normal(size=(3, 3, 2, 4, 2))
    sims = np.zeros((2, 2, 1, 2))
    sims[0, 0, 0] = (1, 0)
    sims[1, 1, 0] = (0.25, 0.75)
    mixed = visualize.weighted_kernels(kernels, sims)
    assert mixed.shape == (2, 2, 3, 3, 2, 4)
    np.testing.assert_allclose(mixed[0, 0], kernels[..., 0])
    np.testing.assert_allclose(mixed[1, 1], 0.25 * kernels[..., 0] + 0.75 * kernels[..., 1])


def test_per_feature_similarity_weights_each_filter_with_its_own_coefficients():
    kernels = RNG.normal(size=(2, 2, 1, 3, 2))
    sims = np.zeros((1, 1, 3, 2))
    sims[0, 0, :, 1] = 1.0
    sims[0, 0, 2] = (1, 0)
    mixed = visualize.weighted_kernels(kernels, sims)
    np.testing.assert_allclose(mixed[0, 0, ..., 0], kernels[..., 0, 1])
    np.testing.assert_allclose(mixed[0, 0, ..., 2], kernels[..., 2, 0])


def test_kernel_tiles_layout_scale_and_separators():
    kernels = RNG.normal(size=(3, 3, 2, 5, 4))
    sims = RNG.random((10, 10, 1, 4))
    tiles = visualize.kernel_tiles(kernels, sims)
    # every third cell of 10 -> 4 samples; 4 * (3 + 1) + 1 pixels
    assert tiles.shape == (2, 5, 17, 17)
    assert tiles.min() >= 0 and tiles.max() <= 1
    assert (tiles[:, :, ::4, :] == 0).all() and (tiles[:, :, :, ::4] == 0).all()
    first = tiles[0, 0, 1:4, 1:4]  # the kernel at cell (0, 0), scaled to [0, 1]
    assert first.min() == 0 and first.max() == pytest.approx(1)
    expected = visualize.weighted_kernels(kernels, sims[::3, ::3])[0, 0, :, :, 0, 0]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(first, expected)


def test_constant_kernel_scales_to_zero_not_nan():
    scaled = visualize.scale_kernels(np.ones((1, 1, 3, 3, 1, 1)))
    assert np.isfinite(scaled).all() and (scaled == 0).all()


def test_color_coded_tiles_tint_by_nearest_centroid():
    kernels = RNG.normal(size=(3, 3, 1, 2, 3))
    sims = one_hot_similarity(4, 4, 1, 3, nearest=2)
    colored = visualize.color_coded_tiles(kernels, sims)
    gray = visualize.kernel_tiles(kernels, sims)
    assert colored.shape == gray.shape + (3,)
    np.testing.assert_allclose(colored, gray[..., None] * visualize.PALETTE[2])


def test_palette_refuses_more_than_twelve_centroids():
    assert visualize.palette(12).shape == (12, 3)
    assert len({tuple(c) for c in visualize.palette(12)}) == 12
    with pytest.raises(ValueError, match="at most 12 centroids. Received 13"):
        visualize.palette(13)


def test_centroid_map_marks_centroids_and_colours_regions():
    sims = np.zeros((9, 9, 1, 2))
    sims[:, :5, 0, 0] = 1.0
    sims[:, 5:, 0, 1] = 1.0
    centroids = np.array([[[0.5, 0.25], [0.5, 0.75]]])
    image = visualize.centroid_map(sims, centroids)
    assert image.shape == (9, 9, 3)
    np.testing.assert_allclose(image[0, 0], visualize.PALETTE[0])
    np.testing.assert_allclose(image[0, 8], visualize.PALETTE[1])
    assert (image[4, 2] == 0).all() and (image[3, 2] == 1).all()  # centroid 0 at row 4, col 2
    assert (image[4, 6] == 0).all()  # centroid 1 at col round(0.75 * 8) = 6


def test_mosaic_and_kcp_tiles_shapes():
    kernels = RNG.normal(size=(3, 3, 2, 4, 5))
    tiles = visualize.kcp_tiles(kernels)
    assert tiles.shape == (10, 4, 4, 4)
    np.testing.assert_allclose(tiles[1, 2, 1:, 1:].max(), 1)  # KCP 0, input channel 1, filter 2
    picture = visualize.mosaic(tiles)
    assert picture.shape == (40, 16)
    np.testing.assert_array_equal(picture[4:8, 8:12], tiles[1, 2])
    assert visualize.upscale(np.ones((2, 3)), 4).shape == (8, 12)


def test_single_row_mosaic_folds_into_a_near_square_grid():
    images = np.arange(24 * 2 * 3, dtype=float).reshape(1, 24, 2, 3) + 1
    picture = visualize.mosaic(images)
    assert picture.shape == (5 * 2, 5 * 3)  # 24 images -> ceil(sqrt(24)) = 5 columns, 5 rows
    np.testing.assert_array_equal(picture[2:4, 0:3], images[0, 5])  # second row starts at image 5
    np.testing.assert_array_equal(picture[8:10, 9:12], images[0, 23])
    assert (picture[8:10, 12:15] == 0).all()  # the grid's unused last cell is blank
