"""Pictures of a soft weight sharing layer: numpy arrays in, numpy arrays out.

The locally weighted kernel at output cell (i, j) is `sum_s S_s(i, j) W_s`.
Sampling it on a coarse grid of cells and tiling the samples shows how the
kernel changes across the image; tinting each tile by its nearest centroid's
colour shows which KCP dominates where.
"""

from __future__ import annotations

import numpy as np

# ColorBrewer "Paired" (qualitative, 12 classes), strong hues first so that a
# few centroids get clearly different colours.
PALETTE = (
    np.array(
        [
            (31, 120, 180),
            (51, 160, 44),
            (227, 26, 28),
            (255, 127, 0),
            (106, 61, 154),
            (177, 89, 40),
            (166, 206, 227),
            (178, 223, 138),
            (251, 154, 153),
            (253, 191, 111),
            (202, 178, 214),
            (255, 255, 153),
        ],
        dtype=np.float32,
    )
    / 255.0
)

SAMPLE_STEP = 3  # every third output cell, as the original visualisation


def palette(count: int) -> np.ndarray:
    """`(count, 3)` RGB colours in [0, 1], one per centroid."""
    if count > len(PALETTE):
        raise ValueError(
            f"Colour coding supports at most {len(PALETTE)} centroids. Received {count} centroids."
        )
    return PALETTE[:count]


def sample_cells(similarity: np.ndarray, step: int = SAMPLE_STEP) -> np.ndarray:
    """Every `step`-th row and column of a `(H', W', G, S)` similarity map."""
    return similarity[::step, ::step]


def weighted_kernels(kernels: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Locally weighted kernels at each sampled cell.

    Args:
        kernels: `(kh, kw, in_channels, filters, S)` KCP kernels.
        similarity: `(gy, gx, G, S)` coefficients, `G` 1 or `filters`.

    Returns:
        `(gy, gx, kh, kw, in_channels, filters)`.
    """
    filters = kernels.shape[3]
    similarity = np.broadcast_to(similarity, (*similarity.shape[:2], filters, similarity.shape[3]))
    return np.einsum("abcfs,yxfs->yxabcf", kernels, similarity)


def scale_kernels(kernels: np.ndarray, axes=(2, 3)) -> np.ndarray:
    """Min-max scales every kernel (over `axes`) to [0, 1]; a constant kernel becomes 0."""
    low = kernels.min(axis=axes, keepdims=True)
    span = kernels.max(axis=axes, keepdims=True) - low
    return (kernels - low) / np.where(span > 0, span, 1.0)


def tile(kernels: np.ndarray) -> np.ndarray:
    """Lays a grid of kernels out as images with 1-pixel separators.

    Args:
        kernels: `(gy, gx, kh, kw, in_channels, filters[, 3])`.

    Returns:
        `(in_channels, filters, gy * (kh + 1) + 1, gx * (kw + 1) + 1[, 3])`,
        separators 0.
    """
    gy, gx, kh, kw = kernels.shape[:4]
    padded = np.pad(kernels, [(0, 0), (0, 0), (1, 0), (1, 0)] + [(0, 0)] * (kernels.ndim - 4))
    # (gy, gx, kh+1, kw+1, c, f, ...) -> (c, f, gy, kh+1, gx, kw+1, ...)
    order = (4, 5, 0, 2, 1, 3) + tuple(range(6, kernels.ndim))
    grid = padded.transpose(order)
    c, f = grid.shape[:2]
    images = grid.reshape(c, f, gy * (kh + 1), gx * (kw + 1), *grid.shape[6:])
    return np.pad(images, [(0, 0), (0, 0), (0, 1), (0, 1)] + [(0, 0)] * (images.ndim - 4))


def kernel_tiles(kernels: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Grayscale images of the locally weighted kernels, one per (input channel, filter).

    Args:
        kernels: `(kh, kw, in_channels, filters, S)` KCP kernels.
        similarity: `(H', W', G, S)` similarity map; sampled every `SAMPLE_STEP` cells.

    Returns:
        `(in_channels, filters, height, width)` in [0, 1].
    """
    sampled = sample_cells(similarity)
    return tile(scale_kernels(weighted_kernels(kernels, sampled)))


def nearest_centroid(similarity: np.ndarray) -> np.ndarray:
    """Index of the most similar centroid per cell and group: `(H', W', G)`."""
    return similarity.argmax(axis=-1)


def color_coded_tiles(kernels: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """RGB kernel images, each tile tinted by the colour of its nearest centroid.

    Returns:
        `(in_channels, filters, height, width, 3)` in [0, 1].
    """
    sampled = sample_cells(similarity)
    colors = palette(similarity.shape[-1])
    filters = kernels.shape[3]
    nearest = np.broadcast_to(nearest_centroid(sampled), (*sampled.shape[:2], filters))
    scaled = scale_kernels(weighted_kernels(kernels, sampled))
    # (gy, gx, f, 3) -> (gy, gx, 1, 1, 1, f, 3) against (gy, gx, kh, kw, c, f, 1)
    tint = colors[nearest][:, :, None, None, None]
    return tile(scaled[..., None] * tint)


def centroid_map(
    similarity: np.ndarray, centroids: np.ndarray, scaling: float = 1.0, group: int = 0
) -> np.ndarray:
    """Colour legend: every cell coloured as its nearest centroid, centroids marked white.

    Args:
        similarity: `(H', W', G, S)` similarity map.
        centroids: `(G, S, 2)` centroid (y, x) positions.
        scaling: the side of the coordinate square.
        group: which centroid set (filter) to draw when per-feature.

    Returns:
        `(H', W', 3)` RGB in [0, 1]; the brightness is the nearest centroid's
        coefficient, so the blending zones show darker.
    """
    group = min(group, similarity.shape[2] - 1)
    sims = similarity[:, :, group]
    colors = palette(sims.shape[-1])
    image = colors[sims.argmax(-1)] * (0.4 + 0.6 * sims.max(-1, keepdims=True))
    rows, cols = sims.shape[:2]
    for y, x in centroids[min(group, len(centroids) - 1)]:
        i = int(round(np.clip(y / scaling, 0, 1) * (rows - 1)))
        j = int(round(np.clip(x / scaling, 0, 1) * (cols - 1)))
        image[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2] = 1.0
        image[i, j] = 0.0
    return image


def mosaic(images: np.ndarray) -> np.ndarray:
    """Arranges `(rows, cols, h, w[, 3])` images into one `(rows*h, cols*w[, 3])` picture.

    A single row (one input channel) is folded into a near-square grid of
    `ceil(sqrt(cols))` columns, so that 24 filters make 5 rows of 5 (the last
    cell blank) rather than one long strip.
    """
    rows, cols, height, width = images.shape[:4]
    if rows == 1 and cols > 3:
        columns = int(np.ceil(np.sqrt(cols)))
        blank = np.zeros((1, columns * -(-cols // columns) - cols, *images.shape[2:]), images.dtype)
        images = np.concatenate([images, blank], axis=1).reshape(-1, columns, *images.shape[2:])
        rows, cols = images.shape[:2]
    grid = images.swapaxes(1, 2)
    return grid.reshape(rows * height, cols * width, *images.shape[4:])


def kcp_tiles(kernels: np.ndarray) -> np.ndarray:
    """Every KCP's own kernel, scaled to [0, 1], as `(S * in_channels, filters, kh+1, kw+1)`.

    Rows run over KCPs, then input channels; a 1-pixel separator sits above
    and left of every kernel.
    """
    scaled = scale_kernels(kernels, axes=(0, 1))
    ordered = scaled.transpose(4, 2, 3, 0, 1)  # (S, c, f, kh, kw)
    s, c, f, kh, kw = ordered.shape
    padded = np.pad(ordered, [(0, 0), (0, 0), (0, 0), (1, 0), (1, 0)])
    return padded.reshape(s * c, f, kh + 1, kw + 1)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so that 3x3 kernels are visible in a viewer."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)
