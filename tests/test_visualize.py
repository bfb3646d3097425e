"""Kernel tiles, colour coding and legends: shapes and values."""

import numpy as np
import pytest

from swsl_cli import visualize


def one_hot_similarity(rows, cols, groups, count, nearest):
    sims = np.zeros((rows, cols, groups, count))
    sims[..., nearest] = 1.0
    return sims


def test_weighted_kernels_mix_kcp_kernels_by_similarity(rng):
    kernels = rng.normal(size=(3, 3, 2, 4, 2))
    sims = np.zeros((2, 2, 1, 2))
    sims[0, 0, 0] = (1, 0)
    sims[1, 1, 0] = (0.25, 0.75)
    mixed = visualize.weighted_kernels(kernels, sims)
    assert mixed.shape == (2, 2, 3, 3, 2, 4)
    np.testing.assert_allclose(mixed[0, 0], kernels[..., 0])
    np.testing.assert_allclose(mixed[1, 1], 0.25 * kernels[..., 0] + 0.75 * kernels[..., 1])


def test_per_feature_similarity_weights_each_filter_with_its_own_coefficients(rng):
    kernels = rng.normal(size=(2, 2, 1, 3, 2))
    sims = np.zeros((1, 1, 3, 2))
    sims[0, 0, :, 1] = 1.0
    sims[0, 0, 2] = (1, 0)
    mixed = visualize.weighted_kernels(kernels, sims)
    np.testing.assert_allclose(mixed[0, 0, ..., 0], kernels[..., 0, 1])
    np.testing.assert_allclose(mixed[0, 0, ..., 2], kernels[..., 2, 0])


def test_kernel_tiles_layout_scale_and_separators(rng):
    kernels = rng.normal(size=(3, 3, 2, 5, 4))
    sims = rng.random((10, 10, 1, 4))
    sampled = visualize.sample_cells(sims)
    tiles = visualize.kernel_tiles(visualize.weighted_kernels(kernels, sampled))
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


def test_color_coded_tiles_tint_by_nearest_centroid(rng):
    kernels = rng.normal(size=(3, 3, 1, 2, 3))
    sims = one_hot_similarity(4, 4, 1, 3, nearest=2)
    cells = visualize.weighted_kernels(kernels, sims)
    colored = visualize.color_coded_tiles(cells, sims)
    gray = visualize.kernel_tiles(cells)
    assert colored.shape == gray.shape + (3,)
    np.testing.assert_allclose(colored, gray[..., None] * visualize.PALETTE[2])


def test_palette_starts_with_the_twelve_paired_colours_and_extends_for_any_count():
    np.testing.assert_array_equal(visualize.palette(1), visualize.PALETTE[:1])
    np.testing.assert_array_equal(visualize.palette(12), visualize.PALETTE)
    many = visualize.palette(50)
    assert many.shape == (50, 3) and visualize.palette(0).shape == (0, 3)
    np.testing.assert_array_equal(visualize.palette(13), many[:13])  # a prefix: stable colours
    assert 0 <= many.min() and many.max() <= 1
    distances = np.linalg.norm(many[:, None] - many[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 0.1  # no two of 50 colours alike
    generated = many[12:]
    assert generated.max(axis=1).min() >= 0.6  # never dark: tinted kernels stay visible
    assert (generated.max(axis=1) - generated.min(axis=1)).min() > 0.3  # never white or grey


@pytest.mark.parametrize("count", [1, 12, 13, 50])
def test_colour_coding_and_centroid_map_for_any_centroid_count(count, rng):
    kernels = rng.normal(size=(3, 3, 1, 2, count))
    sims = rng.random((9, 9, 1, count))
    colored = visualize.color_coded_tiles(visualize.weighted_kernels(kernels, sims), sims)
    assert colored.shape == (1, 2, 9 * 4 + 1, 9 * 4 + 1, 3)
    nearest = sims[0, 0, 0].argmax()  # the tile at cell (0, 0) wears its centroid's colour
    brightest = colored[0, 0, 1:4, 1:4].reshape(-1, 3).max(axis=0)
    np.testing.assert_allclose(brightest, visualize.palette(count)[nearest], atol=1e-6)
    centroids = rng.random((1, count, 2))
    image = visualize.centroid_map(sims, centroids)
    assert image.shape == (9, 9, 3) and np.isfinite(image).all()


def test_sample_step_grows_with_the_output_so_at_most_ten_cells_a_side_are_drawn():
    assert [visualize.sample_step(n, n) for n in (5, 14, 28, 30, 32, 64, 224)] == [
        3,
        3,
        3,
        3,
        4,
        7,
        23,
    ]
    assert visualize.sample_step(10, 224) == 23  # the longer side decides
    assert visualize.sample_cells(np.zeros((224, 224, 1, 4))).shape == (10, 10, 1, 4)
    assert visualize.sample_cells(np.zeros((28, 28, 1, 4))).shape == (10, 10, 1, 4)


def test_shared_kernels_are_the_conv_kernel_at_every_cell(rng):
    kernel = rng.normal(size=(3, 3, 2, 4))
    cells = visualize.shared_kernels(kernel, 5, 6)
    assert cells.shape == (5, 6, 3, 3, 2, 4)
    np.testing.assert_array_equal(cells[4, 5], kernel)
    tiles = visualize.kernel_tiles(cells)
    np.testing.assert_array_equal(tiles[1, 2, 1:4, 1:4], tiles[1, 2, 17:20, 21:24])  # same tile


def test_rgb_kernel_tiles_draw_each_kernel_as_one_colour_patch_scaled_across_channels():
    cells = np.zeros((2, 2, 3, 3, 3, 4))
    cells[0, 0, 1, 1, 0, 0] = 2.0  # filter 0 at cell (0, 0): a red centre ...
    cells[0, 0, 1, 1, 2, 0] = 1.0  # ... with half as much blue
    tiles = visualize.kernel_tiles(cells, rgb=True)
    assert tiles.shape == (1, 4, 9, 9, 3)
    np.testing.assert_allclose(tiles[0, 0, 2, 2], (1.0, 0.0, 0.5))  # pixel (1, 1) of the kernel
    np.testing.assert_allclose(tiles[0, 0, 1, 1], (0.0, 0.0, 0.0))
    grey = visualize.kernel_tiles(cells)
    assert grey.shape == (3, 4, 9, 9)  # one row per input channel without `rgb`
    assert grey[2, 0, 2, 2] == 1.0  # each channel scaled alone: blue's 1.0 is its maximum


def test_full_picture_folds_wide_grids_and_keeps_three_pixels_a_weight():
    small = np.ones((1, 24, 9, 9))
    assert visualize.full_picture(small).shape == (5 * 9 * 3, 5 * 9 * 3)  # folded 5 x 5
    wide = np.ones((24, 48, 21, 21))  # MNIST's second layer: 24 inputs x 48 filters
    assert visualize.full_picture(wide).shape == (24 * 21 * 3, 48 * 21 * 3)
    rgb_rows = np.arange(3 * 24 * 81 * 81, dtype=float).reshape(3, 24, 81, 81)  # 1944 px wide
    picture = visualize.full_picture(rgb_rows, max_side=4500)[::3, ::3]  # 1500 px at 1 px
    # 18 filters would fit a row; 11 a band make it square: bands of filters 0-10, 11-21,
    # 22-23, 3 rows each, a blank row between bands
    assert picture.shape == (11 * 81, 11 * 81)
    np.testing.assert_array_equal(picture[4 * 81 : 5 * 81, 81:162], rgb_rows[0, 12])
    assert (picture[3 * 81 : 4 * 81] == 0).all() and (picture[8 * 81 :, 2 * 81 :] == 0).all()
    huge = np.arange(100 * 200 * 21 * 21, dtype=float).reshape(100, 200, 21, 21)
    picture = visualize.full_picture(huge, max_side=4500)
    assert picture.shape == (71 * 21 * 3, 71 * 21 * 3)  # 71 filters a band; 71 rows fit
    np.testing.assert_array_equal(picture[-63::3, -63::3], huge[70, 70])
    rgb = np.ones((1, 64, 81, 81, 3))
    assert visualize.full_picture(rgb).shape == (8 * 81 * 3, 8 * 81 * 3, 3)


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


def test_mosaic_and_kcp_tiles_shapes(rng):
    kernels = rng.normal(size=(3, 3, 2, 4, 5))
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


def test_specialisation_is_zero_for_one_kernel_and_about_one_for_independent_kernels(rng):
    kernel = rng.normal(size=(3, 3, 2, 4))
    assert np.allclose(visualize.specialisation_map(np.broadcast_to(kernel, (5, 6, 3, 3, 2, 4))), 0)
    independent = visualize.specialisation_map(rng.normal(size=(30, 30, 3, 3, 2, 4)))
    assert independent.shape == (30, 30) and abs(independent.mean() - 1) < 0.05
    assert np.all(visualize.specialisation_map(np.zeros((2, 2, 1, 1, 1, 1))) == 0)
    # One cell's kernel doubled: it alone stands out.
    cells = np.array(np.broadcast_to(kernel, (4, 4, 3, 3, 2, 4)))
    cells[1, 2] *= 2
    spread = visualize.specialisation_map(cells)
    assert spread[1, 2] == spread.max() and np.allclose(np.delete(spread.ravel(), 6), spread[0, 0])


def test_sws_specialisation_from_gram_matrices_equals_the_per_cell_computation(rng):
    kcp = rng.normal(size=(3, 3, 2, 4, 5)).astype("float32")
    for groups in (1, 4):
        similarity = rng.random((6, 7, groups, 5)).astype("float32")
        similarity /= similarity.sum(-1, keepdims=True)
        direct = visualize.specialisation_map(visualize.weighted_kernels(kcp, similarity))
        np.testing.assert_allclose(
            visualize.sws_specialisation_map(kcp, similarity), direct, rtol=1e-4, atol=1e-6
        )


def test_heat_colours_run_from_viridis_dark_to_bright_and_clip():
    colours = visualize.heat_colours(np.array([-1.0, 0.0, 0.5, 1.0, 3.0]))
    np.testing.assert_allclose(colours[1], visualize.VIRIDIS_STOPS[0])
    np.testing.assert_allclose(colours[3], visualize.VIRIDIS_STOPS[-1])
    np.testing.assert_allclose(colours[2], visualize.VIRIDIS_STOPS[2])
    np.testing.assert_allclose(colours[0], colours[1])
    np.testing.assert_allclose(colours[4], colours[3])
    assert np.all(np.diff(colours.sum(-1)[1:4]) > 0)  # brighter with the value


def test_specialisation_picture_marks_centroids_and_has_its_log_scale_below():
    values = np.zeros((28, 28), "float32")
    values[5, 7] = 0.01
    picture = visualize.specialisation_picture(values, np.array([[[0.0, 1.0]]]), scaling=1.0)
    factor = 224 // 28
    assert picture.shape == (28 * factor + visualize.GAP + 8, 28 * factor, 3)
    centre = (factor // 2, 27 * factor + factor // 2)  # (y, x) = (0, 1): top right
    assert np.all(picture[centre] == 0) and np.all(picture[centre[0] + 1, centre[1]] == 1)
    np.testing.assert_allclose(picture[0, 0], visualize.VIRIDIS_STOPS[0])  # 0: the bottom
    cell = picture[5 * factor + 1, 7 * factor + 1]  # 0.01: a third of the way up
    np.testing.assert_allclose(cell, visualize.heat_colours(np.array(1 / 3)), atol=1e-6)
    np.testing.assert_allclose(picture[-1, 0], visualize.VIRIDIS_STOPS[0])
    np.testing.assert_allclose(picture[-1, -1], visualize.VIRIDIS_STOPS[-1])


def test_the_specialisation_scale_is_a_decade_a_third():
    np.testing.assert_allclose(
        visualize.decades(np.array([0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 5.0, np.nan])),
        [0, 0, 0, 1 / 3, 2 / 3, 1, 1, 0],
        atol=1e-12,
    )


def test_summary_picture_draws_every_filter_at_the_corner_cells_three_pixels_a_weight(rng):
    cells = rng.normal(size=(14, 14, 3, 3, 5, 7))
    sampled = visualize.summary_cells(cells)
    assert sampled.shape == (4, 4, 3, 3, 5, 7)
    np.testing.assert_array_equal(sampled[3, 3], cells[13, 13])
    np.testing.assert_array_equal(visualize.summary_indices(14), [0, 4, 9, 13])
    np.testing.assert_array_equal(visualize.summary_indices(2), [0, 1])
    picture = visualize.summary_picture(sampled)
    side = (4 * 4 + 1) * 3  # 4 kernels of 3 + 1 px and a separator, 3 px a weight
    assert picture.shape == (3 * (side + 3) + 3, 3 * (side + 3) + 3, 3)  # 7 filters: 3 x 3
    np.testing.assert_allclose(picture[0, 0], visualize.GAP_COLOUR)
    # Filter 0 on its strongest channel: cell (0, 0)'s kernel, scaled, each weight 3 x 3 px.
    channel = int(np.abs(sampled[..., 0]).sum(axis=(0, 1, 2, 3)).argmax())
    expected = visualize.scale_kernels(sampled[:1, :1, :, :, channel : channel + 1, :1])
    block = picture[3 + 3 : 3 + 12, 3 + 3 : 3 + 12, 0]
    np.testing.assert_allclose(block[::3, ::3], expected[0, 0, :, :, 0, 0], atol=1e-6)
    np.testing.assert_allclose(block[1::3, 2::3], expected[0, 0, :, :, 0, 0], atol=1e-6)


def test_pictures_of_non_finite_weights_are_drawn_not_raised():
    kernels = np.full((4, 4, 3, 3, 1, 2), np.nan)
    values = visualize.specialisation_map(kernels)
    assert visualize.specialisation_picture(values).shape[2] == 3
    np.testing.assert_allclose(
        visualize.heat_colours(np.array([np.inf]))[0], visualize.VIRIDIS_STOPS[0]
    )
