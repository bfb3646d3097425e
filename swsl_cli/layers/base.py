"""What every conv-like layer of the library shares: arguments, build checks, output shape, config.

And what the two layers share whose cells mix a few shared kernels (the SWS and
low-rank layers): the per-cell kernel mix and `local_kernels()`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from swsl_cli.layers.cells import conv_output_size, positive_pair, standardize_padding


def with_fan_axes(initializer, input_axes: tuple[int, ...], output_axes: tuple[int, ...]):
    """`initializer`, made to count its fans over the given axes if it is fan-based and names none.

    A weight that stacks several `Conv2D` kernels (one per output cell, one per
    basis) would otherwise count the whole stack's fans; over the axes of one
    kernel, every kernel of the stack starts at a `Conv2D`'s scale.
    """
    if not isinstance(initializer, keras.initializers.VarianceScaling) or (
        initializer.input_axes is not None or initializer.output_axes is not None
    ):
        return initializer
    config = initializer.get_config()
    config.update(input_axes=list(input_axes), output_axes=list(output_axes))
    return type(initializer).from_config(config)


class BaseLocalConv2D(keras.layers.Layer):
    """Base of the 2D convolutions whose kernel may depend on the output location.

    `SoftWeightSharingConv2D` and `LocallyConnected2D` share their arguments,
    their input checks, their output shape and most of their config, as
    Keras's own convolutions share `BaseConv`. A subclass builds its weights
    with `add_kernel` / `add_bias` (which apply the regularizers and
    constraints) after `output_size_of` has checked the input.

    Args:
        filters: int, the number of output channels.
        kernel_size: int or pair of ints, the kernel's height and width.
        strides: int or pair of ints, the strides.
        padding: `"valid"` or `"same"` (case-insensitive), as `Conv2D` pads.
        activation: activation function, `None` for none.
        use_bias: bool, whether the layer adds a bias.
        kernel_initializer: initializer of the kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the kernel.
        bias_constraint: constraint of the bias.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        padding: str = "valid",
        activation=None,
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"Expected a strictly positive value. Received filters={filters!r}.")
        self.filters = int(filters)
        self.kernel_size = positive_pair(kernel_size, "kernel_size")
        self.strides = positive_pair(strides, "strides")
        self.padding = standardize_padding(padding)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def output_size_of(self, input_shape, why_static: str) -> tuple[int, int]:
        """`(H', W')` for `input_shape`, after checking the input can be built on.

        Rows, cols and channels must be static (`why_static` says what of
        this layer depends on them), and the output at least one cell.
        """
        rows, cols, channels = input_shape[1], input_shape[2], input_shape[3]
        if rows is None or cols is None or channels is None:
            raise ValueError(
                f"{type(self).__name__} needs static rows, cols and channels, since {why_static}. "
                f"Received input_shape={input_shape}."
            )
        output_size = self.compute_output_shape(input_shape)[1:3]
        if min(output_size) < 1:
            raise ValueError(
                f"Input {rows}x{cols} is smaller than kernel_size={self.kernel_size} "
                f"with padding='valid'. Received input_shape={input_shape}."
            )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        return output_size

    def add_kernel(self, shape, initializer=None):
        """The kernel weight, with the layer's regularizer and constraint."""
        return self.add_weight(
            name="kernel",
            shape=shape,
            initializer=initializer or self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )

    def add_bias(self, shape, initializer=None):
        """The bias weight, with the layer's regularizer and constraint; None without a bias."""
        if not self.use_bias:
            return None
        return self.add_weight(
            name="bias",
            shape=shape,
            initializer=initializer or self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    def compute_output_shape(self, input_shape):
        rows, cols = conv_output_size(
            input_shape[1:3], self.kernel_size, self.strides, self.padding
        )
        return (input_shape[0], rows, cols, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            }
        )
        return config


class BaseMixedLocalConv2D(BaseLocalConv2D):
    """Base of the local convolutions whose cells mix S shared kernels, `sum_s w_s(i, j) W_s`.

    A subclass keeps the S kernels in `self.kernel`, filter `f`'s kernel `s`
    at channel `f * S + s` once the kernel is seen as `(kh, kw, in_channels,
    filters * S)` (so `(kh, kw, in_channels, filters, S)` is the same layout),
    sets `output_rows` / `output_cols` in `build`, and returns its mixing
    weights from `mixing_weights()` in float32: `(H', W', S)` or `(H', W', 1,
    S)` when the filters share them, `(H', W', filters, S)` when each filter
    has its own.
    """

    def mixing_weights(self):
        """The weights of the shared kernels at every output cell, float32."""
        raise NotImplementedError

    def _mix_shared(self, weights, count: int):
        """`(H'W', kh * kw * in_channels, filters)`: every cell's kernel for shared weights.

        One matmul `(H'W' x S) @ (S x kh kw C F)`, whose rows are the cells'
        kernels in place and whose gradient is one matmul too.
        """
        cells = self.output_rows * self.output_cols
        kernels = ops.reshape(self.kernel, (-1, self.filters, count))  # (kh kw C, F, S)
        bases = ops.reshape(ops.transpose(kernels, (2, 0, 1)), (count, -1))
        mixed = ops.matmul(ops.reshape(weights, (cells, count)), bases)
        return ops.reshape(mixed, (cells, -1, self.filters))

    def _mix_convolutions(self, inputs, weights, count: int):
        """One convolution with `filters * count` outputs, mixed per cell over the shared kernels.

        `weights` is `(H', W', count)` when the filters share them, `(H', W', filters,
        count)` when every filter has its own.
        """
        stacked_kernel = ops.reshape(self.kernel, (*self.kernel.shape[:3], -1))
        stacked = ops.conv(inputs, stacked_kernel, strides=self.strides, padding=self.padding)
        cells = self.output_rows * self.output_cols
        stacked = ops.reshape(stacked, (-1, cells, self.filters, count))
        if len(weights.shape) == 4 and weights.shape[2] != 1:
            mixed = ops.sum(stacked * ops.reshape(weights, (cells, self.filters, count)), axis=-1)
        else:
            # A matmul per cell, (F, S) @ (S, 1), broadcast over the batch: forward and
            # backward several times faster than broadcasting a product and summing over S.
            mixed = ops.matmul(stacked, ops.reshape(weights, (cells, count, 1)))
        return ops.reshape(mixed, (-1, self.output_rows, self.output_cols, self.filters))

    def _cell_kernels(self, weights):
        """Every cell's kernel, `(H'W', kh * kw * in_channels, filters)`, for `mixing_weights()`."""
        raise NotImplementedError

    def local_kernels(self) -> np.ndarray:
        """The kernel seen at every output cell, `sum_s w_s(i, j) W_s`, as numpy.

        Shape `(H', W', kh, kw, in_channels, filters)`: `local_kernels()[i, j]`
        is a `Conv2D` kernel, laid out as `LocallyConnected2D.kernel`.
        """
        weights = ops.cast(self.mixing_weights(), self.kernel.dtype)
        kernels = ops.convert_to_numpy(self._cell_kernels(weights))
        return kernels.reshape(
            self.output_rows, self.output_cols, *self.kernel_size, -1, self.filters
        )
