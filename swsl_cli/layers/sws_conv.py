"""The spatial interpolation soft weight sharing (SISWS) convolution layer.

Only `keras.ops` is used here, so the layer runs on the TensorFlow, JAX and
PyTorch backends alike.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from swsl_cli.layers.base import BaseMixedLocalConv2D
from swsl_cli.layers.cells import CellPatches, positive_pair

SIMILARITIES = ("exp", "inv_euclidean")
IMPLEMENTATIONS = ("auto", "conv", "local")
KCP_INITS = ("independent", "shared")


def centroid_count(centroids) -> int:
    """Number of kernel-centroid pairs S for a `centroids` argument."""
    return centroids if isinstance(centroids, int) else centroids[0] * centroids[1]


def grid_centroids(rows: int, cols: int, scaling: float = 1.0) -> np.ndarray:
    """Centroids on a `rows x cols` grid, row-major, as `(S, 2)` (y, x) pairs.

    Per axis with n points the positions are
    `linspace(scaling / (1 + n), scaling - scaling / (1 + n), n)`.
    """
    ys = np.linspace(scaling / (1 + rows), scaling - scaling / (1 + rows), rows)
    xs = np.linspace(scaling / (1 + cols), scaling - scaling / (1 + cols), cols)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=-1).astype("float32")


def similarity_from_distance(squared: keras.KerasTensor, similarity: str, normalize: bool):
    """Similarity coefficients from squared distances, reduced over the last (S) axis.

    `exp` is `exp(-d^2)`; `inv_euclidean` is `1 / (1 + d)`. With `normalize` the
    coefficients are divided by their sum over S; for `exp` the smallest distance
    is subtracted first (a softmax of `-d^2`), which stays finite when every
    `exp(-d^2)` would underflow.
    """
    if similarity == "exp":
        if not normalize:
            return ops.exp(-squared)
        shifted = ops.exp(ops.min(squared, axis=-1, keepdims=True) - squared)
        return shifted / ops.sum(shifted, axis=-1, keepdims=True)
    positive = squared > 0
    # sqrt has an infinite gradient at 0 (a centroid exactly on a cell centre):
    # take the root only where it is positive, so the gradient there is 0.
    distance = ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0)
    coefficients = 1.0 / (1.0 + distance)
    if normalize:
        coefficients = coefficients / ops.sum(coefficients, axis=-1, keepdims=True)
    return coefficients


@keras.saving.register_keras_serializable(package="swsl_cli")
class SoftWeightSharingConv2D(BaseMixedLocalConv2D):
    """2D convolution with spatial interpolation soft weight sharing (SISWS).

    A compromise between a convolution (one kernel shared by every location)
    and a locally connected layer (a kernel per location). The layer holds S
    kernel-centroid pairs (KCPs): kernels `W_s` with biases `b_s`, each with a
    centroid `c_s` in `[0, scaling)^2` and a 2x2 matrix `Sigma_s`. Output cell
    `(i, j)` sits at `p_ij = (y_i, x_j)` with `y = linspace(0, scaling, H')`
    and `x = linspace(0, scaling, W')`, and mixes the KCPs by their similarity
    to it:

        d_s(i, j) = Sigma_s @ (c_s - p_ij)
        S_s(i, j) = exp(-|d_s|^2)        (similarity="exp")
                  = 1 / (1 + |d_s|)      (similarity="inv_euclidean")
        S_s(i, j) /= sum_s' S_s'(i, j)   (local_normalization=True)
        Y = activation(sum_s (W_s * X + b_s) . S_s)

    so the kernel seen at a location is `sum_s S_s(i, j) W_s`: close to a
    centroid it is that KCP's kernel, between centroids a blend of theirs.

    Args:
        filters: int, the number of output channels.
        kernel_size: int or pair of ints, the kernel's height and width.
        centroids: a `(rows, cols)` pair places `rows * cols` centroids on a
            grid (row-major: `s = r * cols + c`); an int `N` places `N`
            centroids uniformly at random in `[0, scaling)^2`, drawn with
            `seed`.
        strides: int or pair of ints, the convolution strides.
        padding: `"same"` or `"valid"` (case-insensitive).
        activation: activation applied to the mixed output.
        use_bias: bool, whether every KCP has a bias.
        centroids_trainable: bool, whether the centroids are learned.
        sigma_trainable: bool or None, whether the Sigma matrices are learned;
            `None` follows `centroids_trainable`.
        per_feature: bool, give every output filter its own centroids and
            Sigmas. A grid with fixed centroids and fixed Sigmas would be the
            same for every filter, so then (and only then) it collapses to
            shared centroids.
        local_normalization: bool, normalise the similarities to sum to 1
            over the KCPs at every cell.
        similarity: `"exp"` or `"inv_euclidean"`.
        scaling: float, the side of the coordinate square; Sigma starts as
            `scaling * I`.
        kernel_initializer: initializer of the stacked kernel.
        bias_initializer: initializer of the stacked bias.
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as for `Conv2D`, on the stacked
            kernel and bias.
        kcp_init: `"independent"` draws every KCP's kernel and bias on its
            own; `"shared"` draws one `(kh, kw, in_channels, filters)` kernel
            and one `(filters,)` bias and gives every KCP a copy, so with
            `local_normalization` the layer starts as exactly that `Conv2D`
            and learns where to specialise.
        seed: int or None, the seed of random centroid placement.
        implementation: `"conv"` runs one convolution with `filters * S`
            outputs and mixes its channels per cell; `"local"` mixes the
            kernels per output cell first and applies them to the gathered
            image patches (S times fewer multiply-adds, but a patch copy of
            the input); `"auto"` takes `"local"` when a patch
            (`kh * kw * in_channels` values) is smaller than twice the
            `filters * S` stacked outputs per cell, which holds for both
            layers of the MNIST net, and `"conv"` otherwise (measured on CPU,
            see the README's benchmarks).
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Weights:
        kernel: `(kh, kw, in_channels, filters * S)`; channel `f * S + s` is
            filter `f` of KCP `s`.
        bias: `(filters * S,)`, same layout.
        centroids: `(G, S, 2)` as (y, x), `G = filters` if per-feature else 1.
        sigma: `(G, S, 2, 2)`.

    Input shape:
        4D tensor `(batch, rows, cols, channels)` with static rows and cols.

    Output shape:
        4D tensor `(batch, new_rows, new_cols, filters)`, as `Conv2D`.

    Example:

    >>> x = np.random.rand(4, 28, 28, 1).astype("float32")
    >>> layer = SoftWeightSharingConv2D(24, 7, centroids=(3, 3),
    ...                                 centroids_trainable=True)
    >>> tuple(layer(x).shape)
    (4, 28, 28, 24)
    >>> tuple(layer.similarity_map().shape)
    (28, 28, 1, 9)
    >>> layer.local_kernels().shape
    (28, 28, 7, 7, 1, 24)
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        centroids=(2, 2),
        strides=1,
        padding: str = "same",
        centroids_trainable: bool = False,
        sigma_trainable: bool | None = None,
        per_feature: bool = False,
        local_normalization: bool = True,
        similarity: str = "exp",
        scaling: float = 1.0,
        kcp_init: str = "independent",
        seed: int | None = None,
        implementation: str = "auto",
        **kwargs,
    ):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)
        self.centroids = self._standardize_centroids(centroids)
        for name, value, choices in (
            ("similarity", similarity, SIMILARITIES),
            ("implementation", implementation, IMPLEMENTATIONS),
            ("kcp_init", kcp_init, KCP_INITS),
        ):
            if value not in choices:
                raise ValueError(f"Expected `{name}` in {choices}. Received {name}={value!r}.")
        if not scaling > 0:
            raise ValueError(f"Expected a strictly positive value. Received scaling={scaling!r}.")
        self.similarity = similarity
        self.implementation = implementation
        self.kcp_init = kcp_init
        self.scaling = float(scaling)
        self.centroids_trainable = bool(centroids_trainable)
        self.sigma_trainable = (
            self.centroids_trainable if sigma_trainable is None else bool(sigma_trainable)
        )
        fixed_grid = not (
            isinstance(self.centroids, int) or self.centroids_trainable or self.sigma_trainable
        )
        self.per_feature = bool(per_feature) and not fixed_grid
        self.local_normalization = bool(local_normalization)
        self.seed = seed
        self.n_centroids = centroid_count(self.centroids)

    @staticmethod
    def _standardize_centroids(centroids):
        """An int >= 1 (random centroids) or a pair of positive ints (a grid)."""
        if isinstance(centroids, (int, np.integer)) and not isinstance(centroids, bool):
            if centroids >= 1:
                return int(centroids)
        else:
            try:
                return positive_pair(centroids, "centroids")
            except ValueError:
                pass
        raise ValueError(
            "Expected `centroids` to be an int >= 1 or a pair of positive ints. "
            f"Received centroids={centroids!r}."
        )

    @property
    def groups(self) -> int:
        """Number of centroid sets: `filters` when per-feature, else 1."""
        return self.filters if self.per_feature else 1

    def build(self, input_shape):
        output_size = self.output_size_of(
            input_shape, "its similarity map depends on the output size"
        )
        self.output_rows, self.output_cols = output_size
        channels = input_shape[3]
        self.uses_local = self.implementation == "local" or (
            self.implementation == "auto"
            and self.kernel_size[0] * self.kernel_size[1] * channels
            < 2 * self.filters * self.n_centroids
        )
        if self.uses_local:
            self._cell_patches = CellPatches(
                input_shape[1:3], output_size, self.kernel_size, self.strides, self.padding
            )
        stacked = self.filters * self.n_centroids
        self.kernel = self.add_kernel(
            (*self.kernel_size, channels, stacked), self._kcp_initializer(self.kernel_initializer)
        )
        self.bias = self.add_bias((stacked,), self._kcp_initializer(self.bias_initializer))
        # Centroids and Sigma stay float32 under mixed precision: the
        # similarities are computed in float32 and cast once.
        self.centroid_positions = self.add_weight(
            name="centroids",
            shape=(self.groups, self.n_centroids, 2),
            initializer=self._centroid_initializer(),
            trainable=self.centroids_trainable,
            dtype="float32",
            autocast=False,
        )
        self.sigma = self.add_weight(
            name="sigma",
            shape=(self.groups, self.n_centroids, 2, 2),
            initializer=self._sigma_initializer,
            trainable=self.sigma_trainable,
            dtype="float32",
            autocast=False,
        )

    def _kcp_initializer(self, initializer):
        """`initializer` for the stacked weight, or one draw copied to every KCP ("shared")."""
        if self.kcp_init == "independent":
            return initializer

        def shared(shape, dtype=None):
            # Channel f * S + s is filter f of KCP s: repeat each filter S times.
            one = initializer((*shape[:-1], self.filters), dtype=dtype)
            return ops.repeat(one, self.n_centroids, axis=-1)

        return shared

    def _centroid_initializer(self):
        if isinstance(self.centroids, int):
            return keras.initializers.RandomUniform(0.0, self.scaling, seed=self.seed)
        grid = grid_centroids(*self.centroids, scaling=self.scaling)

        def initializer(shape, dtype=None):
            # A copy, not a broadcast view: torch cannot update a view in place.
            return ops.convert_to_tensor(np.broadcast_to(grid, shape).copy(), dtype or "float32")

        return initializer

    def _sigma_initializer(self, shape, dtype=None):
        sigma = np.broadcast_to(self.scaling * np.eye(2), shape).copy()
        return ops.convert_to_tensor(sigma, dtype or "float32")

    def cell_coordinates(self):
        """The output cells' coordinates: `y` of shape `(H',)` and `x` of shape `(W',)`."""
        ys = ops.linspace(0.0, self.scaling, self.output_rows)
        xs = ops.linspace(0.0, self.scaling, self.output_cols)
        return ops.cast(ys, "float32"), ops.cast(xs, "float32")

    def similarity_map(self):
        """The mixing coefficients `S_s(i, j)`, shape `(H', W', G, S)`, float32.

        `G` is `filters` for per-feature centroids and 1 otherwise.
        """
        ys, xs = self.cell_coordinates()
        centroids = ops.convert_to_tensor(self.centroid_positions)
        sigma = ops.convert_to_tensor(self.sigma)
        # c_s - p_ij per axis, broadcast to (H', W', G, S); Sigma @ offset written
        # out, which is several times faster than an einsum over these small axes.
        dy = centroids[..., 0] - ys[:, None, None, None]
        dx = centroids[..., 1] - xs[None, :, None, None]
        d0 = sigma[..., 0, 0] * dy + sigma[..., 0, 1] * dx
        d1 = sigma[..., 1, 0] * dy + sigma[..., 1, 1] * dx
        squared = ops.square(d0) + ops.square(d1)
        return similarity_from_distance(squared, self.similarity, self.local_normalization)

    def call(self, inputs):
        coefficients = ops.cast(self.similarity_map(), self.compute_dtype)
        if self.uses_local:
            outputs = self._cell_patches.apply(inputs, self._cell_kernels(coefficients))
        else:
            outputs = self._mix_convolutions(inputs, coefficients, self.n_centroids)
        if self.use_bias:
            bias = ops.reshape(self.bias, (self.filters, self.n_centroids))
            outputs = outputs + ops.sum(coefficients * bias, axis=-1)
        return self.activation(outputs)

    def _cell_kernels(self, coefficients):
        """`sum_s S_s(i, j) W_s` for every cell: `(H'W', kh * kw * in_channels, filters)`."""
        if self.groups == 1:
            return self._mix_shared(coefficients, self.n_centroids)
        cells = self.output_rows * self.output_cols
        kernels = ops.reshape(self.kernel, (-1, self.filters, self.n_centroids))  # (K, F, S)
        coefficients = ops.reshape(coefficients, (cells, self.filters, self.n_centroids))
        patches = getattr(self, "_cell_patches", None)  # the "conv" path has none
        mixed = patches.mix_per_filter(coefficients, kernels) if patches else None
        if mixed is not None:  # compiled, on a CPU
            return mixed
        # Per-filter coefficients: F matmuls (H'W' x S) @ (S x K), several times
        # faster, forward and backward, than broadcasting a (H'W', F, S, K) product.
        mixed = ops.matmul(
            ops.transpose(coefficients, (1, 0, 2)), ops.transpose(kernels, (1, 2, 0))
        )
        return ops.transpose(mixed, (1, 2, 0))

    def kcp_kernels(self) -> np.ndarray:
        """The KCPs' kernels as numpy, shape `(kh, kw, in_channels, filters, S)`."""
        kernel = ops.convert_to_numpy(self.kernel)
        return kernel.reshape(*kernel.shape[:3], self.filters, self.n_centroids)

    def mixing_weights(self):
        return self.similarity_map()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "centroids": self.centroids,
                "centroids_trainable": self.centroids_trainable,
                "sigma_trainable": self.sigma_trainable,
                "per_feature": self.per_feature,
                "local_normalization": self.local_normalization,
                "similarity": self.similarity,
                "scaling": self.scaling,
                "kcp_init": self.kcp_init,
                "seed": self.seed,
                "implementation": self.implementation,
            }
        )
        return config
