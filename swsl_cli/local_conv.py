"""Convolution geometry, and per-cell kernels applied to an input's patches.

`SoftWeightSharingConv2D` (its `local` implementation) and
`LocallyConnected2D` both compute

    Y[b, i, j, f] = sum_k patch(X[b], i, j)[k] * kernel(i, j)[f, k]

with a kernel per output cell `(i, j)`; `CellPatches` is that one
implementation. Only `keras.ops` is used, so it runs on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class CellPatches:
    """The receptive field of every output cell, and per-cell kernels applied to them.

    Built once (in a layer's `build`) for one input size: it holds the input's
    padding and the gather indices of every cell's patch, so `apply` only
    pads, gathers and multiplies.

    Args:
        input_size: `(rows, cols)` of the input.
        output_size: `(H', W')`, the convolution's output size.
        kernel_size: `(kh, kw)`.
        strides: `(sh, sw)`.
        padding: `"same"` or `"valid"`, as `Conv2D` pads.

    A patch is flattened in `(kh, kw, channels)` order, so the kernel of cell
    `(i, j)` as a `Conv2D` kernel `(kh, kw, C, F)` is `K = kh * kw * C` rows
    of the `(K, F)` matrix whose transpose `apply` takes.
    """

    def __init__(self, input_size, output_size, kernel_size, strides, padding: str):
        (rows, cols), (kh, kw), (sh, sw) = input_size, kernel_size, strides
        self.output_size = tuple(output_size)
        out_rows, out_cols = self.output_size
        pad_rows = pad_cols = 0
        if padding == "same":
            pad_rows = max((out_rows - 1) * sh + kh - rows, 0)
            pad_cols = max((out_cols - 1) * sw + kw - cols, 0)
        # Conv2D's "same" puts the odd pixel at the bottom and the right.
        self.padding = (
            (pad_rows // 2, pad_rows - pad_rows // 2),
            (pad_cols // 2, pad_cols - pad_cols // 2),
        )
        # Flat index `row * padded_cols + col` of the padded input pixel under
        # tap `(ti, tj)` of cell `(i, j)`, in (i, j, ti, tj) order.
        i = np.arange(out_rows)[:, None, None, None] * sh + np.arange(kh)[:, None]
        j = np.arange(out_cols)[:, None, None] * sw + np.arange(kw)
        self.indices = (i * (cols + pad_cols) + j).reshape(-1).astype("int32")

    @property
    def cells(self) -> int:
        """The number of output cells, `H' * W'`."""
        return self.output_size[0] * self.output_size[1]

    def apply(self, inputs, kernels):
        """`Y[b, i, j, f] = sum_k patch(X[b], i, j)[k] * kernels[i * W' + j, f, k]`.

        Args:
            inputs: `(batch, rows, cols, C)`.
            kernels: `(H' * W', F, kh * kw * C)`, the cells' kernels, row-major
                over the cells.

        Returns:
            `(batch, H', W', F)`.

        The input is laid out `(rows, cols, C, batch)`, so gathering the
        receptive fields gives the patches as `(H'W', K, batch)` with no copy
        of the big patch tensor, and the per-cell products are one batched
        matmul. The gather's gradient is a segment sum, several times cheaper
        than the gradient of an image-patch extraction (README, benchmarks).
        """
        rows, cols, _ = inputs.shape[1:]
        (top, bottom), (left, right) = self.padding
        pixels = ops.pad(
            ops.transpose(inputs, (1, 2, 3, 0)), ((top, bottom), (left, right), (0, 0), (0, 0))
        )
        pixels = ops.reshape(pixels, ((rows + top + bottom) * (cols + left + right), -1))
        patches = ops.take(pixels, self.indices, axis=0)
        patches = ops.reshape(patches, (self.cells, kernels.shape[-1], -1))  # (H'W', K, batch)
        outputs = ops.matmul(kernels, patches)  # (H'W', F, batch)
        outputs = ops.transpose(outputs, (2, 0, 1))
        return ops.reshape(outputs, (-1, *self.output_size, kernels.shape[1]))
