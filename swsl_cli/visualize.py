"""Pictures of convolution-like layers: numpy arrays in, numpy arrays out.

Every picture starts from per-cell kernels `(H', W', kh, kw, C, F)`, the
kernel each output cell sees: for a soft weight sharing layer the locally
weighted kernel `sum_s S_s(i, j) W_s` (`weighted_kernels`), for a Conv2D its
one kernel everywhere (`shared_kernels`), for a locally connected layer its
own weights. Sampling them on a coarse grid of cells and tiling the samples
shows how the kernel changes across the image (for Conv2D: not at all);
tinting each tile by its nearest centroid's colour shows which KCP dominates
where.
"""

from __future__ import annotations

import colorsys
import math

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

# Beyond the 12 qualitative colours: hues a golden-ratio turn apart (each new hue
# falls in the widest gap left on the colour wheel), cycling through four saturation/brightness levels so
# that neighbours in the sequence differ in lightness too; never dark (a tinted
# kernel must stay visible) nor white (the centroid markers are white).
GOLDEN_RATIO_TURN = 0.6180339887498949
EXTRA_SATURATION_VALUE = ((0.8, 1.0), (1.0, 0.7), (0.5, 0.85), (0.9, 0.6))

SAMPLE_STEP = 3  # every third output cell, as the original visualisation
MAX_SAMPLES = 10  # sampled cells per side at most: larger outputs get a larger step
MAX_SIDE = 8192  # pixels per side of an exported picture at most
MIN_PIXELS_PER_WEIGHT = 3  # every weight of every picture is at least 3x3 screen pixels
SCALE_LOW = 1e-3  # the specialisation pictures' scale: 0.001 (and below) to 1


def palette(count: int) -> np.ndarray:
    """`(count, 3)` RGB colours in [0, 1], one per centroid, for any `count`.

    The 12 ColorBrewer "Paired" colours come first; the rest are generated
    (golden-ratio hues), so `palette(n)[:m] == palette(m)` for `m <= n`.
    """
    if count < 0:
        raise ValueError(f"Expected a count >= 0. Received count={count}.")
    extra = max(count - len(PALETTE), 0)
    generated = [
        colorsys.hsv_to_rgb(
            (index * GOLDEN_RATIO_TURN) % 1.0,
            *EXTRA_SATURATION_VALUE[index % len(EXTRA_SATURATION_VALUE)],
        )
        for index in range(extra)
    ]
    generated = np.array(generated, dtype=np.float32).reshape(-1, 3)
    return np.concatenate([PALETTE, generated])[:count]


def sample_step(rows: int, cols: int) -> int:
    """The cell step that samples a `rows x cols` output at most `MAX_SAMPLES` times per side.

    Never below `SAMPLE_STEP` (3), so MNIST-sized outputs look as in the original.
    """
    return max(SAMPLE_STEP, math.ceil(max(rows, cols) / MAX_SAMPLES))


def sample_cells(array: np.ndarray, step: int | None = None) -> np.ndarray:
    """Every `step`-th row and column of a per-cell array (`(H', W', ...)`).

    `step` defaults to `sample_step(H', W')`.
    """
    step = step or sample_step(*array.shape[:2])
    return array[::step, ::step]


def weighted_kernels(kernels: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Locally weighted kernels of a SWS layer at each (sampled) cell.

    Args:
        kernels: `(kh, kw, in_channels, filters, S)` KCP kernels.
        similarity: `(gy, gx, G, S)` coefficients, `G` 1 or `filters`.

    Returns:
        `(gy, gx, kh, kw, in_channels, filters)`: the per-cell kernels.
    """
    filters = kernels.shape[3]
    similarity = np.broadcast_to(similarity, (*similarity.shape[:2], filters, similarity.shape[3]))
    return np.einsum("abcfs,yxfs->yxabcf", kernels, similarity)


def shared_kernels(kernel: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A convolution's one kernel `(kh, kw, C, F)` as per-cell kernels `(rows, cols, kh, kw, C, F)`.

    A read-only broadcast view: no copy, whatever the output size.
    """
    return np.broadcast_to(kernel, (rows, cols, *kernel.shape))


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


def kernel_tiles(cell_kernels: np.ndarray, rgb: bool = False) -> np.ndarray:
    """Images of per-cell kernels, each kernel min-max scaled on its own.

    Args:
        cell_kernels: `(gy, gx, kh, kw, in_channels, filters)`, the kernels at
            the sampled cells (see `sample_cells`), whatever layer they come from.
        rgb: the input channels are an image's red, green and blue (a first
            layer on colour images): each kernel is drawn as one colour patch,
            its three channels scaled together, so that the picture shows the
            colour and the pattern the filter responds to at once.

    Returns:
        `(in_channels, filters, height, width)` grey images in [0, 1], or with
        `rgb` `(1, filters, height, width, 3)`.
    """
    if rgb:
        scaled = scale_kernels(cell_kernels, axes=(2, 3, 4))
        return tile(np.moveaxis(scaled, 4, -1)[:, :, :, :, None])
    return tile(scale_kernels(cell_kernels))


def nearest_centroid(similarity: np.ndarray) -> np.ndarray:
    """Index of the most similar centroid per cell and group: `(H', W', G)`."""
    return similarity.argmax(axis=-1)


def color_coded_tiles(cell_kernels: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Grey kernel images, each tile tinted by the colour of its cell's nearest centroid.

    One row per input channel, RGB inputs included (a tint cannot be read
    off a kernel that already has colours).

    Args:
        cell_kernels: `(gy, gx, kh, kw, in_channels, filters)` at the sampled cells.
        similarity: `(gy, gx, G, S)` coefficients at the same cells.

    Returns:
        `(in_channels, filters, height, width, 3)` in [0, 1].
    """
    colors = palette(similarity.shape[-1])
    filters = cell_kernels.shape[5]
    nearest = np.broadcast_to(nearest_centroid(similarity), (*similarity.shape[:2], filters))
    # (gy, gx, f, 3) -> (gy, gx, 1, 1, 1, f, 3) against (gy, gx, kh, kw, c, f, 1)
    tint = colors[nearest][:, :, None, None, None]
    return tile(scale_kernels(cell_kernels)[..., None] * tint)


def centroid_map(
    similarity: np.ndarray,
    centroids: np.ndarray,
    scaling: float = 1.0,
    group: int = 0,
    marked: bool = True,
) -> np.ndarray:
    """Colour legend: every cell coloured as its nearest centroid, centroids marked white.

    Args:
        similarity: `(H', W', G, S)` similarity map.
        centroids: `(G, S, 2)` centroid (y, x) positions.
        scaling: the side of the coordinate square.
        group: which centroid set (filter) to draw when per-feature.
        marked: mark the centroids (3 x 3 cells, white with a dark centre).

    Returns:
        `(H', W', 3)` RGB in [0, 1]; the brightness is the nearest centroid's
        coefficient, so the blending zones show darker.
    """
    group = min(group, similarity.shape[2] - 1)
    sims = similarity[:, :, group]
    colors = palette(sims.shape[-1])
    image = colors[sims.argmax(-1)] * (0.4 + 0.6 * sims.max(-1, keepdims=True))
    if marked:
        mark_centroids(image, centroids[min(group, len(centroids) - 1)], scaling, sims.shape[:2])
    return image


def mark_centroids(picture: np.ndarray, centroids: np.ndarray, scaling: float, cells, factor=1):
    """Marks centroids `(..., 2)` (y, x in `[0, scaling]`) on a picture of `cells` `(H', W')`
    enlarged `factor` times, in place: 3 x 3 pixels, white with a dark centre."""
    rows, cols = cells
    for y, x in np.asarray(centroids).reshape(-1, 2):
        i = int(round(np.clip(y / scaling, 0, 1) * (rows - 1))) * factor + factor // 2
        j = int(round(np.clip(x / scaling, 0, 1) * (cols - 1))) * factor + factor // 2
        picture[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2] = 1.0
        picture[i, j] = 0.0


def fold_row(images: np.ndarray) -> np.ndarray:
    """A single row of more than 3 images `(1, n, h, w[, 3])` as a near-square grid.

    `ceil(sqrt(n))` columns, unused cells blank: 24 filters make 5 rows of 5
    rather than one long strip. Other grids are returned as they are.
    """
    rows, cols = images.shape[:2]
    if rows != 1 or cols <= 3:
        return images
    columns = int(np.ceil(np.sqrt(cols)))
    blank = np.zeros(
        (1, columns * math.ceil(cols / columns) - cols, *images.shape[2:]), images.dtype
    )
    return np.concatenate([images, blank], axis=1).reshape(-1, columns, *images.shape[2:])


def mosaic(images: np.ndarray) -> np.ndarray:
    """Arranges `(rows, cols, h, w[, 3])` images into one `(rows*h, cols*w[, 3])` picture.

    A single row (one input channel) is folded first (`fold_row`).
    """
    return _grid_picture(fold_row(images))


def _grid_picture(images: np.ndarray) -> np.ndarray:
    rows, cols, height, width = images.shape[:4]
    return images.swapaxes(1, 2).reshape(rows * height, cols * width, *images.shape[4:])


def fold_columns(images: np.ndarray, columns: int) -> np.ndarray:
    """A `(rows, cols, h, w[, 3])` grid re-laid as bands of at most `columns` columns.

    Band `b` holds columns `b * columns ...` of every row; a blank row of
    images separates bands of more than one row.
    """
    rows, cols = images.shape[:2]
    if cols <= columns:
        return images
    bands = math.ceil(cols / columns)
    blank = np.zeros((rows, bands * columns - cols, *images.shape[2:]), images.dtype)
    padded = np.concatenate([images, blank], axis=1)
    # (rows, bands, columns, ...) -> (bands, rows, columns, ...)
    banded = padded.reshape(rows, bands, columns, *images.shape[2:]).swapaxes(0, 1)
    if rows == 1:
        return banded.reshape(-1, columns, *images.shape[2:])
    gap = np.zeros((bands, 1, columns, *images.shape[2:]), images.dtype)
    banded = np.concatenate([banded, gap], axis=1)
    return banded.reshape(-1, columns, *images.shape[2:])[:-1]


def full_picture(images: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Every tile of `(rows, cols, h, w[, 3])` (e.g. input channels x filters) in one picture,
    `MIN_PIXELS_PER_WEIGHT` pixels per weight, at most `max_side` pixels a side.

    A single row is folded into a near-square grid (`fold_row`); a grid wider
    than `max_side` is folded into bands of columns (`fold_columns`), as many
    a band as make the picture nearest to square; a grid still too tall keeps
    its first rows that fit.
    """
    factor = MIN_PIXELS_PER_WEIGHT
    limit = max_side // factor
    grid = fold_row(images)
    rows, cols, height, width = grid.shape[:4]
    if cols * width > limit:

        def longer_side(columns: int) -> int:
            bands = math.ceil(cols / columns)
            return max(columns * width, (bands * (rows + 1) - 1) * height)

        fitting = range(max(1, limit // width), 0, -1)
        grid = fold_columns(grid, min(fitting, key=longer_side))
    return upscale(_grid_picture(grid[: max(1, limit // height)]), factor)


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


# ----------------------------------------------------------------------------- specialisation

# Stops of matplotlib's "viridis" colour map (perceptually uniform, legible for colour-blind
# readers), linearly interpolated: 0 is dark blue-purple, 1 bright yellow.
VIRIDIS_STOPS = (
    np.array(
        [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
        dtype=np.float32,
    )
    / 255.0
)
SUMMARY_CELLS = 4  # kernels per axis in the summary pictures: the corners and two between
SUMMARY_FILTERS = 64  # at most this many filters in a summary picture (all in the full one)
GAP = 3  # pixels between the filters of a summary picture
GAP_COLOUR = np.array([0.16, 0.2, 0.28], dtype=np.float32)  # slate, unlike any grey kernel


def specialisation_map(cell_kernels: np.ndarray) -> np.ndarray:
    """How far the kernel at each cell is from the layer's mean kernel, `(H', W')`.

    `||K(i, j) - mean K|| / rms ||K||`, the norms over every tap, input channel
    and filter of the per-cell kernels `(H', W', kh, kw, C, F)`: 0 where a cell
    sees the mean kernel (a convolution: 0 everywhere), about 1 where cells
    share nothing (independent kernels); a zero layer maps to 0.
    """
    flat = cell_kernels.reshape(*cell_kernels.shape[:2], -1).astype(np.float64)
    distance = np.linalg.norm(flat - flat.mean(axis=(0, 1)), axis=-1)
    size = np.sqrt(np.mean(np.sum(np.square(flat), axis=-1)))
    return (distance / size if size > 0 else np.zeros_like(distance)).astype(np.float32)


def sws_specialisation_map(kcp_kernels: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """`specialisation_map` of a soft weight sharing layer without its per-cell kernels.

    The kernel at a cell is `sum_s S_s W_s`, so its distance from the mean kernel
    is a quadratic form in the coefficients with each filter's Gram matrix
    of KCP kernels: `(H' W' F S^2)` work, however large the kernels are.

    Args:
        kcp_kernels: `(kh, kw, C, F, S)`.
        similarity: `(H', W', G, S)` coefficients, `G` 1 or `F`.
    """
    kh, kw, channels, filters, count = kcp_kernels.shape
    kernels = kcp_kernels.reshape(-1, filters, count).astype(np.float64)
    gram = np.einsum("pfs,pft->fst", kernels, kernels)  # (F, S, S)
    coefficients = np.broadcast_to(similarity, (*similarity.shape[:2], filters, count))
    coefficients = coefficients.astype(np.float64)
    offset = coefficients - coefficients.mean(axis=(0, 1))
    distance = np.einsum("yxfs,fst,yxft->yx", offset, gram, offset)
    squared_sizes = np.einsum("yxfs,fst,yxft->yx", coefficients, gram, coefficients)
    size = np.sqrt(max(float(squared_sizes.mean()), 0.0))
    if size == 0:
        return np.zeros(similarity.shape[:2], np.float32)
    return (np.sqrt(np.maximum(distance, 0.0)) / size).astype(np.float32)


def heat_colours(values: np.ndarray, high: float = 1.0) -> np.ndarray:
    """`values` in `[0, high]` (clipped) as viridis RGB, shape `(*values.shape, 3)`.

    Non-finite values (weights gone to NaN) show as 0.
    """
    values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    position = np.clip(values / high, 0.0, 1.0) * (len(VIRIDIS_STOPS) - 1)
    low = np.minimum(position.astype(int), len(VIRIDIS_STOPS) - 2)
    weight = (position - low)[..., None]
    return (1 - weight) * VIRIDIS_STOPS[low] + weight * VIRIDIS_STOPS[low + 1]


def decades(values: np.ndarray) -> np.ndarray:
    """The specialisation scale: `values` from `SCALE_LOW` to 1 on a log scale, as 0 to 1.

    Each third of the scale is a factor of 10 (0.001, 0.01, 0.1, 1); values at
    or below `SCALE_LOW`, 0 included, are 0, and 1 or more is 1.
    """
    values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low = np.log10(SCALE_LOW)
    return np.clip((np.log10(np.maximum(values, SCALE_LOW)) - low) / -low, 0.0, 1.0)


def colour_bar(width: int, height: int = 8) -> np.ndarray:
    """The heat map's scale from 0 (left) to 1 (right), `(height, width, 3)`, with dark
    ticks at its thirds (the decades of `decades`)."""
    bar = np.broadcast_to(heat_colours(np.linspace(0.0, 1.0, width)), (height, width, 3)).copy()
    for third in (1, 2):
        bar[: height // 2, round(third * (width - 1) / 3)] = 0.0
    return bar


def specialisation_picture(
    values: np.ndarray,
    centroids: np.ndarray | None = None,
    scaling: float = 1.0,
    side: int = 224,
) -> np.ndarray:
    """The specialisation map as a picture about `side` pixels wide, with its colour bar.

    Colours are on the fixed log scale of `decades` (0.001 to 1), so pictures
    of different layers, epochs and runs compare directly. `centroids`
    `(G, S, 2)` (y, x in `[0, scaling]`), if given, are marked.
    """
    rows, cols = values.shape
    factor = max(MIN_PIXELS_PER_WEIGHT, side // max(rows, cols))
    picture = upscale(heat_colours(decades(values)), factor)
    if centroids is not None:
        mark_centroids(picture, centroids, scaling, (rows, cols), factor)
    gap = np.ones((GAP, picture.shape[1], 3), np.float32)
    return np.concatenate([picture, gap, colour_bar(picture.shape[1])])


# ----------------------------------------------------------------------------- summaries


def summary_indices(length: int, count: int = SUMMARY_CELLS) -> np.ndarray:
    """`count` evenly spaced cells of an axis of `length`, its first and last included."""
    return np.unique(np.linspace(0, length - 1, min(count, length)).round().astype(int))


def summary_cells(cell_kernels: np.ndarray, count: int = SUMMARY_CELLS) -> np.ndarray:
    """The per-cell kernels `(H', W', ...)` at `count` evenly spaced cells per axis."""
    rows = summary_indices(cell_kernels.shape[0], count)
    cols = summary_indices(cell_kernels.shape[1], count)
    return cell_kernels[rows][:, cols]


def strongest_channel(cell_kernels: np.ndarray) -> np.ndarray:
    """Each filter's kernels on its strongest input channel (largest summed |weight|).

    `(gy, gx, kh, kw, C, F)` -> `(gy, gx, kh, kw, 1, F)`.
    """
    strength = np.abs(cell_kernels).sum(axis=(0, 1, 2, 3))  # (C, F)
    channel = strength.argmax(axis=0)
    chosen = np.take_along_axis(cell_kernels, channel[None, None, None, None, None, :], axis=4)
    return chosen


def filter_grid(tiles: np.ndarray, gap: int = GAP) -> np.ndarray:
    """One picture of per-filter tiles `(F, h, w[, 3])`: a near-square grid, `gap` pixels apart.

    Grey tiles become RGB; the gaps are `GAP_COLOUR`.
    """
    if tiles.ndim == 3:
        tiles = np.repeat(tiles[..., None], 3, axis=-1)
    count, height, width = tiles.shape[:3]
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    picture = np.empty((rows * (height + gap) + gap, columns * (width + gap) + gap, 3), np.float32)
    picture[:] = GAP_COLOUR
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = gap + row * (height + gap), gap + column * (width + gap)
        picture[top : top + height, left : left + width] = tiles[index]
    return picture


def summary_picture(
    cell_kernels: np.ndarray, rgb: bool = False, similarity: np.ndarray | None = None
) -> np.ndarray:
    """A layer's kernels as one legible picture: per filter, its kernel at a few cells.

    Args:
        cell_kernels: `(gy, gx, kh, kw, C, F)`, the kernels at the summary cells
            (`summary_cells`: 4 x 4, the corners included).
        rgb: the layer's input is an RGB image: kernels drawn in colour.
        similarity: optional `(gy, gx, G, S)` coefficients at the same cells:
            each kernel tinted by its cell's nearest centroid (`color_coded_tiles`).

    Each filter is one tile of its kernels at the summary cells, on its
    strongest input channel (all three in colour for RGB), each kernel
    min-max scaled on its own; the tiles of at most `SUMMARY_FILTERS` filters
    are laid out in a near-square grid, `GAP` pixels apart, at
    `MIN_PIXELS_PER_WEIGHT` pixels per weight.
    """
    sampled = cell_kernels[..., :SUMMARY_FILTERS]
    if rgb:
        tiles = kernel_tiles(sampled, rgb=True)[0]
    elif similarity is None:
        tiles = kernel_tiles(strongest_channel(sampled))[0]
    else:
        tiles = color_coded_tiles(strongest_channel(sampled), similarity[:, :, :SUMMARY_FILTERS])[0]
    return filter_grid(upscale_tiles(tiles, MIN_PIXELS_PER_WEIGHT))


def upscale_tiles(tiles: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of every tile of `(F, h, w[, 3])`."""
    return tiles.repeat(factor, axis=1).repeat(factor, axis=2)


def centroid_maps(
    similarity: np.ndarray, centroids: np.ndarray, scaling: float = 1.0, limit: int = 64
) -> np.ndarray:
    """`centroid_map` of every centroid set (filter) of a layer, up to `limit`, in one grid,
    enlarged to about 112 pixels a map, the centroids marked at that size."""
    groups = min(similarity.shape[2], limit)
    cells = similarity.shape[:2]
    factor = max(MIN_PIXELS_PER_WEIGHT, 112 // max(cells))
    maps = []
    for group in range(groups):
        picture = upscale(centroid_map(similarity, centroids, scaling, group, marked=False), factor)
        mark_centroids(picture, centroids[min(group, len(centroids) - 1)], scaling, cells, factor)
        maps.append(picture)
    return filter_grid(np.stack(maps))
