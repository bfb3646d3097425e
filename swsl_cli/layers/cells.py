"""Convolution geometry, and per-cell kernels applied to an input's patches.

`SoftWeightSharingConv2D` (its `local` implementation),
`LocallyConnected2D` and `LowRankLocallyConnected2D` all compute

    Y[b, i, j, f] = sum_k patch(X[b], i, j)[k] * kernel(i, j)[k, f]

with a kernel per output cell `(i, j)`; `CellPatches` is that one
implementation. It is written with `keras.ops` only, so it runs on every
backend; on TensorFlow's CPU kernels `CellPatches` takes the equal fast path
of `swsl_cli.layers.cells_tensorflow` (tested equal in outputs and gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

PADDINGS = ("same", "valid")


def positive_pair(value, name: str) -> tuple[int, int]:
    """Normalises an int or a pair of ints to a pair of positive ints."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    if (
        isinstance(value, bool)
        or not isinstance(pair, Sequence)
        or len(pair) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair)
        or min(pair) < 1
    ):
        raise ValueError(
            f"Expected `{name}` to be a positive int or a pair of positive ints. "
            f"Received {name}={value!r}."
        )
    return int(pair[0]), int(pair[1])


def standardize_padding(padding) -> str:
    """`"same"` or `"valid"`, case-insensitive; anything else raises `ValueError`."""
    normalized = str(padding).lower()
    if normalized not in PADDINGS:
        raise ValueError(f"Expected `padding` in {PADDINGS}. Received padding={padding!r}.")
    return normalized


def ceil_div(numerator: int, denominator: int) -> int:
    """`ceil(numerator / denominator)` for positive ints, without floats."""
    return -(-numerator // denominator)


def conv_output_length(length: int, kernel: int, stride: int, padding: str) -> int:
    """Spatial output length of a convolution, as `keras.layers.Conv2D` computes it."""
    if padding == "same":
        return ceil_div(length, stride)
    return (length - kernel) // stride + 1


def conv_output_size(
    input_size, kernel_size: tuple[int, int], strides: tuple[int, int], padding: str
) -> tuple[int, int]:
    """`(rows, cols)` of a convolution's output; a `None` input length stays `None`."""
    return tuple(
        None if n is None else conv_output_length(n, k, s, padding)
        for n, k, s in zip(input_size, kernel_size, strides)
    )


def gather_rows(indices: np.ndarray, rows: int):
    """`take(values, indices, axis=0)` whose gradient gathers instead of scattering.

    Args:
        indices: int array of row numbers in `[0, rows]`; `rows` reads a row of
            zeros appended to `values`.
        rows: the number of rows of `values`.

    Returns:
        A function of `values` (`(rows, n)`) giving `(len(indices), n)`.

    Autodiff turns a gather's gradient into a scatter-add, which TensorFlow
    runs as an `UnsortedSegmentSum`: on the second layer the slowest op of
    the training step (4.8 ms of ~64 in a profile). Here every row's gradient
    is instead the sum of the output rows that read it, fetched by one more
    gather from a table built once: the layer-2 step took 0.8-2.8 ms less in
    six paired measurements (README, Benchmarks).
    """
    indices = np.asarray(indices, dtype="int32")
    order = np.argsort(indices, kind="stable")
    sorted_rows = indices[order]
    kept = sorted_rows < rows
    counts = np.bincount(sorted_rows[kept], minlength=rows)
    # readers[r, t] is the t-th output row that reads row r; unused slots
    # point at an appended row of zeros (index len(indices)).
    readers = np.full((rows, max(int(counts.max(initial=0)), 1)), indices.size, dtype="int32")
    slot = np.arange(kept.sum()) - (np.cumsum(counts) - counts)[sorted_rows[kept]]
    readers[sorted_rows[kept], slot] = order[kept]

    @ops.custom_gradient
    def gather(values):
        def grad(*args, upstream=None):
            # TensorFlow and JAX pass the upstream gradient positionally, torch by name.
            upstream = args[0] if upstream is None else upstream
            padded = ops.pad(upstream, ((0, 1), (0, 0)))
            return ops.sum(ops.take(padded, readers, axis=0), axis=1)

        return ops.take(ops.pad(values, ((0, 1), (0, 0))), indices, axis=0), grad

    return gather


class CellPatches:
    """The receptive field of every output cell, and per-cell kernels applied to them.

    Built once (in a layer's `build`) for one input size: it holds the gather
    indices of every cell's patch (padding reads a row of zeros), so `apply`
    only gathers and multiplies.

    Args:
        input_size: `(rows, cols)` of the input.
        output_size: `(H', W')`, the convolution's output size.
        kernel_size: `(kh, kw)`.
        strides: `(sh, sw)`.
        padding: `"same"` or `"valid"`, as `Conv2D` pads.
        fast_path: whether `apply` may take TensorFlow's fast path
            (`swsl_cli.layers.cells_tensorflow`). `None` (the default): where
            it was measured faster, on TensorFlow without a GPU. Either way
            the results are the same up to float rounding.

    A patch is flattened in `(kh, kw, channels)` order, so the kernel of cell
    `(i, j)` as a `Conv2D` kernel `(kh, kw, C, F)` is the `(K, F)` matrix,
    `K = kh * kw * C`, that `apply` takes for that cell.
    """

    def __init__(self, input_size, output_size, kernel_size, strides, padding: str, fast_path=None):
        (rows, cols), (kh, kw), (sh, sw) = input_size, kernel_size, strides
        self.output_size = tuple(output_size)
        out_rows, out_cols = self.output_size
        top = left = 0
        if padding == "same":
            # Conv2D's "same" puts the odd pixel at the bottom and the right.
            top = max((out_rows - 1) * sh + kh - rows, 0) // 2
            left = max((out_cols - 1) * sw + kw - cols, 0) // 2
        # Input row and column under tap (ti, tj) of cell (i, j), in (i, j, ti, tj) order.
        i = np.arange(out_rows)[:, None, None, None] * sh + np.arange(kh)[:, None] - top
        j = np.arange(out_cols)[:, None, None] * sw + np.arange(kw) - left
        inside = (i >= 0) & (i < rows) & (j >= 0) & (j < cols)
        # Flat pixel index `row * cols + col`, or `rows * cols` (zeros) in the padding.
        flat = np.where(inside, i * cols + j, rows * cols).reshape(-1)
        self.gather = gather_rows(flat, rows * cols)
        self.fast = None
        if fast_path or (fast_path is None and fast_path_measured_faster()):
            from swsl_cli.layers.cells_tensorflow import TensorFlowCellPatches

            self.fast = TensorFlowCellPatches(flat, rows * cols, self.output_size)

    @property
    def cells(self) -> int:
        """The number of output cells, `H' * W'`."""
        return self.output_size[0] * self.output_size[1]

    def apply(self, inputs, kernels):
        """`Y[b, i, j, f] = sum_k patch(X[b], i, j)[k] * kernels[i * W' + j, k, f]`.

        Args:
            inputs: `(batch, rows, cols, C)`.
            kernels: `(H' * W', kh * kw * C, F)`, the cells' kernels, row-major
                over the cells.

        Returns:
            `(batch, H', W', F)`.
        """
        if self.fast is not None:
            return self.fast.apply(inputs, kernels)
        return self.reference_apply(inputs, kernels)

    def mix_per_filter(self, coefficients, weights):
        """`mixed[c, k, f] = sum_s coefficients[c, f, s] * weights[k, f, s]`, the cells'
        kernels `(cells, K, F)` of an SWS layer with per-filter coefficients, by the
        compiled per-cell kernels; `None` where they do not apply (the layer then mixes
        with `keras.ops`).

        Args:
            coefficients: `(cells, F, S)`.
            weights: `(K, F, S)`, the S shared kernels of every filter.
        """
        if self.fast is None:
            return None
        return self.fast.mix_per_filter(
            ops.convert_to_tensor(coefficients), ops.convert_to_tensor(weights)
        )

    def reference_apply(self, inputs, kernels):
        """`apply` with `keras.ops` alone, on every backend.

        The input is laid out `(rows, cols, C, batch)`, so gathering the
        receptive fields gives the patches as `(H'W', K, batch)` with no copy
        of the big patch tensor, and the per-cell products are one batched
        matmul. The gather is several times cheaper than an image-patch
        extraction, and its gradient gathers too (`gather_rows`).
        """
        rows, cols, _ = inputs.shape[1:]
        pixels = ops.reshape(ops.transpose(inputs, (1, 2, 3, 0)), (rows * cols, -1))
        patches = ops.reshape(self.gather(pixels), (self.cells, kernels.shape[1], -1))
        outputs = ops.matmul(ops.transpose(kernels, (0, 2, 1)), patches)  # (H'W', F, batch)
        outputs = ops.transpose(outputs, (2, 0, 1))
        return ops.reshape(outputs, (-1, *self.output_size, kernels.shape[2]))


def fast_path_measured_faster() -> bool:
    """Whether `CellPatches` takes TensorFlow's fast path by default: on TensorFlow's CPU
    kernels, where it was measured (docs/benchmarks.md); GPUs keep the `keras.ops` path."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")
