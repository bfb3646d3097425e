"""A 2D locally connected layer: a convolution whose kernel is not shared."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from swsl_cli.layers.base import BaseLocalConv2D, with_fan_axes
from swsl_cli.layers.cells import CellPatches

# Axes of the (H', W', kh, kw, C, F) kernel that make up one cell's fans, as
# Conv2D counts them: fan_in = kh * kw * C, fan_out = kh * kw * F.
CELL_INPUT_AXES = (2, 3, 4)
CELL_OUTPUT_AXES = (2, 3, 5)


def per_cell_fans(initializer):
    """`initializer`, made to count one cell's fans if it is fan-based and names no axes."""
    return with_fan_axes(initializer, CELL_INPUT_AXES, CELL_OUTPUT_AXES)


@keras.saving.register_keras_serializable(package="swsl_cli")
class LocallyConnected2D(BaseLocalConv2D):
    """2D locally connected layer: every output cell has its own kernel.

    The far end of the spectrum that `SoftWeightSharingConv2D` sits in: a
    `Conv2D` shares one kernel over all locations, this layer shares none
    (as in DeepFace), and soft weight sharing interpolates between S kernels.
    Output cell `(i, j)` is

        Y[b, i, j, f] = activation(sum_{ti, tj, c} X_pad[b, i * sh + ti, j * sw + tj, c]
                                   * kernel[i, j, ti, tj, c, f] + bias[i, j, f])

    with `X_pad` padded as `Conv2D` pads. It replaces Keras 2's
    `LocallyConnected2D` (removed in Keras 3) and adds `padding="same"`; its
    per-cell kernels go through the same gather and batched matmul as the
    SWS layer's `local` implementation (`swsl_cli.layers.cells.CellPatches`).

    Args:
        filters: int, the number of output channels.
        kernel_size: int or pair of ints, the kernel's height and width.
        strides: int or pair of ints, the strides.
        padding: `"valid"` or `"same"` (case-insensitive), as `Conv2D`.
        activation: activation function, `None` for none.
        use_bias: bool, whether every cell has a bias per filter.
        kernel_initializer: initializer of the kernel. Fan-based ones
            (`VarianceScaling` and its Glorot, He and LeCun forms, the default
            `"glorot_uniform"` included) count the fans of one cell's kernel,
            as `Conv2D` counts its kernel's, unless they set their own
            `input_axes`/`output_axes`: every cell starts at a `Conv2D`'s
            scale. (Keras 2 counted every cell, which shrank the initial
            kernels by about `sqrt(H' * W')`.)
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the kernel.
        bias_constraint: constraint of the bias.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Weights:
        kernel: `(H', W', kh, kw, in_channels, filters)`: `kernel[i, j]` is
            the `Conv2D` kernel of output cell `(i, j)`. The layout makes
            one cell's kernel a plain index and is what
            `SoftWeightSharingConv2D.local_kernels()` returns, so the two are
            compared directly. Keras 2's `implementation=1` kernel is
            `kernel.reshape(H' * W', kh * kw * in_channels, filters)`.
        bias: `(H', W', filters)`.

    Migrating from Keras 2 (`tf_keras.layers.LocallyConnected2D`): the
    arguments are the same less `data_format` (channels-last only) and
    `implementation` (one implementation, not three); the bias layout is the
    same; the kernel is reshaped as above. `padding="same"` pads as `Conv2D` does;
    Keras 2's (implementations 2 and 3) put `kernel // 2` pixels before,
    which matches it at every input size only for odd kernels at stride 1.

    Input shape:
        4D tensor `(batch, rows, cols, channels)` with static rows, cols and
        channels (the kernel's shape depends on them).

    Output shape:
        4D tensor `(batch, new_rows, new_cols, filters)`, as `Conv2D`.

    Example:

    >>> x = np.random.rand(4, 28, 28, 1).astype("float32")
    >>> layer = LocallyConnected2D(8, 3, padding="same")
    >>> tuple(layer(x).shape)
    (4, 28, 28, 8)
    >>> layer.local_kernels().shape
    (28, 28, 3, 3, 1, 8)
    """

    def __init__(self, filters: int, kernel_size, strides=1, padding: str = "valid", **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)

    def build(self, input_shape):
        output_size = self.output_size_of(input_shape, "its kernel has one entry per output cell")
        self._cell_patches = CellPatches(
            input_shape[1:3], output_size, self.kernel_size, self.strides, self.padding
        )
        self.kernel = self.add_kernel(
            (*output_size, *self.kernel_size, input_shape[3], self.filters),
            per_cell_fans(self.kernel_initializer),
        )
        self.bias = self.add_bias((*output_size, self.filters))

    def call(self, inputs):
        # (H', W', kh, kw, C, F) -> (H'W', K, F): the layout CellPatches takes, no copy.
        kernels = ops.reshape(self.kernel, (self._cell_patches.cells, -1, self.filters))
        outputs = self._cell_patches.apply(inputs, kernels)
        if self.use_bias:
            outputs = outputs + self.bias
        return self.activation(outputs)

    def local_kernels(self) -> np.ndarray:
        """The kernel of every output cell as numpy, `(H', W', kh, kw, in_channels, filters)`."""
        return ops.convert_to_numpy(self.kernel)
