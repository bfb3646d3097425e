"""A 2D low-rank locally connected layer (LRLC): K basis kernels mixed per location."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from swsl_cli.layers.base import BaseMixedLocalConv2D, with_fan_axes
from swsl_cli.layers.cells import CellPatches

COMBININGS = ("row_col", "free")
IMPLEMENTATIONS = ("auto", "conv", "local")
# Axes of the (kh, kw, C, F, K) kernel that make up one basis's fans, as Conv2D
# counts them: fan_in = kh * kw * C, fan_out = kh * kw * F.
BASIS_INPUT_AXES = (0, 1, 2)
BASIS_OUTPUT_AXES = (0, 1, 3)


@keras.saving.register_keras_serializable(package="swsl_cli")
class LowRankLocallyConnected2D(BaseMixedLocalConv2D):
    """2D low-rank locally connected layer: K basis kernels, mixed per output cell.

    The layer of Elsayed, Ramachandran, Shlens and Kornblith, "Revisiting
    spatial invariance with low-rank local connectivity" (ICML 2020). It holds
    `rank` K kernels `W_k`, and every output cell `(i, j)` sees their mix by
    combining weights that sum to 1 over K:

        w(i, j) = softmax_k(row_logits[i] + col_logits[j])   (combining="row_col")
                = softmax_k(logits[i, j])                    (combining="free")
        K(i, j) = sum_k w_k(i, j) W_k
        Y[b, i, j, f] = activation(sum over the patch P_ij of X: K(i, j)[..., f] . P_ij
                                   + bias[f] + spatial_bias(i, j))

    The logits start at zero, so every cell starts with the weights `1 / K`
    and the layer starts as a `Conv2D` whose kernel is the mean of the K
    bases; it learns where to depart from it. Its kernels are drawn
    independently: equal bases would stay equal, since with equal weights
    every basis gets the same gradient. `rank=1` is a `Conv2D`; a rank of
    `H' * W'` with free weights can express any locally connected layer.
    `SoftWeightSharingConv2D` with `similarity="exp"` and a diagonal Sigma
    is the row-plus-column form whose logits per axis are restricted to a
    parabola (a centroid and a width per KCP).

    Args:
        filters: int, the number of output channels.
        kernel_size: int or pair of ints, the kernel's height and width.
        rank: int, the number K of basis kernels. The default 4 is as many
            kernels as the SWS layer's default 2x2 grid of KCPs.
        strides: int or pair of ints, the strides.
        padding: `"valid"` or `"same"` (case-insensitive), as `Conv2D`.
        combining: `"row_col"` learns a logit per output row and one per
            output column for each basis (`(H' + W') * K` numbers);
            `"free"` a logit per output cell and basis (`H' * W' * K`).
        spatial_bias: bool, add a learned bias per output cell, shared by the
            filters (per row plus per column with `"row_col"`, per cell with
            `"free"`), as the published layer; it starts at zero.
        activation: activation function, `None` for none.
        use_bias: bool, whether the layer adds a bias per filter.
        kernel_initializer: initializer of the bases. Fan-based ones
            (`VarianceScaling` and its Glorot, He and LeCun forms) count the
            fans of one basis, as `Conv2D` counts its kernel's, unless they
            set their own `input_axes`/`output_axes`.
        bias_initializer: initializer of the per-filter bias.
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as for `Conv2D`; the bias ones
            apply to the spatial bias too.
        implementation: `"conv"` runs one convolution with `filters * rank`
            outputs and mixes them per cell; `"local"` mixes the bases into a
            kernel per cell (one matmul) and applies them to the gathered
            patches (`CellPatches`, as `LocallyConnected2D`): `rank` times
            fewer multiply-adds per image. `"auto"` (the default) takes
            `"local"`: forward and backward at rank 4 on a 2-core x86_64 CPU
            (TF 2.21, `python benchmarks/bench.py --layer_steps_only`, two
            runs), it took 10.8-12.8 against 32.2-35.0 ms for the runner's
            first layer (input (64, 28, 28, 1), 24 filters of 7x7) and
            10.8-11.6 against 17.4-18.5 ms for its second (input
            (64, 14, 14, 24), 48 filters of 3x3), and won or tied at four
            other shapes (docs/benchmarks.md).
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Weights:
        kernel: `(kh, kw, in_channels, filters, rank)`: `kernel[..., k]` is
            basis `k` as a `Conv2D` kernel.
        bias: `(filters,)`.
        row_logits, col_logits: `(H', rank)` and `(W', rank)` (`"row_col"`);
            logits: `(H', W', rank)` (`"free"`). Float32 under mixed precision.
        row_bias, col_bias: `(H',)` and `(W',)` (`"row_col"`); cell_bias:
            `(H', W')` (`"free"`); only with `spatial_bias`.

    Input shape:
        4D tensor `(batch, rows, cols, channels)` with static rows, cols and
        channels (the combining weights depend on the output size).

    Output shape:
        4D tensor `(batch, new_rows, new_cols, filters)`, as `Conv2D`.

    Example:

    >>> x = np.random.rand(4, 28, 28, 1).astype("float32")
    >>> layer = LowRankLocallyConnected2D(24, 7, rank=4, padding="same")
    >>> tuple(layer(x).shape)
    (4, 28, 28, 24)
    >>> tuple(layer.combining_weights().shape)
    (28, 28, 4)
    >>> layer.local_kernels().shape
    (28, 28, 7, 7, 1, 24)
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        rank: int = 4,
        strides=1,
        padding: str = "valid",
        combining: str = "row_col",
        spatial_bias: bool = True,
        implementation: str = "auto",
        **kwargs,
    ):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"Expected a strictly positive value. Received rank={rank!r}.")
        for name, value, choices in (
            ("combining", combining, COMBININGS),
            ("implementation", implementation, IMPLEMENTATIONS),
        ):
            if value not in choices:
                raise ValueError(f"Expected `{name}` in {choices}. Received {name}={value!r}.")
        self.rank = int(rank)
        self.combining = combining
        self.spatial_bias = bool(spatial_bias)
        self.implementation = implementation

    def build(self, input_shape):
        output_size = self.output_size_of(
            input_shape, "its combining weights depend on the output size"
        )
        self.output_rows, self.output_cols = output_size
        self.uses_local = self.implementation != "conv"
        if self.uses_local:
            self._cell_patches = CellPatches(
                input_shape[1:3], output_size, self.kernel_size, self.strides, self.padding
            )
        self.kernel = self.add_kernel(
            (*self.kernel_size, input_shape[3], self.filters, self.rank),
            with_fan_axes(self.kernel_initializer, BASIS_INPUT_AXES, BASIS_OUTPUT_AXES),
        )
        self.bias = self.add_bias((self.filters,))
        if self.combining == "row_col":
            self.row_logits = self._add_logits("row_logits", (self.output_rows, self.rank))
            self.col_logits = self._add_logits("col_logits", (self.output_cols, self.rank))
        else:
            self.logits = self._add_logits("logits", (*output_size, self.rank))
        if not self.spatial_bias:
            return
        if self.combining == "row_col":
            self.row_bias = self._add_spatial_bias("row_bias", (self.output_rows,))
            self.col_bias = self._add_spatial_bias("col_bias", (self.output_cols,))
        else:
            self.cell_bias = self._add_spatial_bias("cell_bias", output_size)

    def _add_logits(self, name, shape):
        # Zeros: equal weights everywhere, so the layer starts as a convolution.
        # Float32 under mixed precision: the softmax is computed in float32, cast once.
        return self.add_weight(
            name=name, shape=shape, initializer="zeros", dtype="float32", autocast=False
        )

    def _add_spatial_bias(self, name, shape):
        return self.add_weight(
            name=name,
            shape=shape,
            initializer="zeros",
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    def combining_weights(self):
        """The weights `w_k(i, j)` of the bases at every output cell, `(H', W', rank)`, float32."""
        if self.combining == "row_col":
            rows = ops.convert_to_tensor(self.row_logits)
            cols = ops.convert_to_tensor(self.col_logits)
            logits = rows[:, None, :] + cols[None, :, :]
        else:
            logits = ops.convert_to_tensor(self.logits)
        return ops.softmax(logits, axis=-1)

    def call(self, inputs):
        weights = ops.cast(self.combining_weights(), self.compute_dtype)
        if self.uses_local:
            outputs = self._cell_patches.apply(inputs, self._cell_kernels(weights))
        else:
            outputs = self._mix_convolutions(inputs, weights, self.rank)
        if self.use_bias:
            outputs = outputs + self.bias
        if self.spatial_bias:
            outputs = outputs + self._spatial_bias()[..., None]
        return self.activation(outputs)

    def _spatial_bias(self):
        """The bias of every output cell, shared by the filters: `(H', W')`."""
        if self.combining == "row_col":
            return self.row_bias[:, None] + self.col_bias[None, :]
        return self.cell_bias

    def mixing_weights(self):
        return self.combining_weights()

    def _cell_kernels(self, weights):
        """`sum_k w_k(i, j) W_k` for every cell: `(H'W', kh * kw * in_channels, filters)`."""
        return self._mix_shared(weights, self.rank)

    def basis_kernels(self) -> np.ndarray:
        """The K bases as numpy, `(kh, kw, in_channels, filters, rank)`."""
        return ops.convert_to_numpy(self.kernel)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "rank": self.rank,
                "combining": self.combining,
                "spatial_bias": self.spatial_bias,
                "implementation": self.implementation,
            }
        )
        return config
