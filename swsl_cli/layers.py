"""The spatial interpolation soft weight sharing (SISWS) convolution layer.

Only `keras.ops` is used here, so the layers run on the TensorFlow, JAX and
PyTorch backends alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

SIMILARITIES = ("exp", "inv_euclidean")
PADDINGS = ("same", "valid")
IMPLEMENTATIONS = ("auto", "conv", "local")


def _positive_pair(value, name: str) -> tuple[int, int]:
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


def conv_output_length(length: int, kernel: int, stride: int, padding: str) -> int:
    """Spatial output length of a convolution, as `keras.layers.Conv2D` computes it."""
    if padding == "same":
        return (length + stride - 1) // stride
    return (length - kernel) // stride + 1


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
class SoftWeightSharingConv2D(keras.layers.Layer):
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
            Sigmas. A fixed grid is the same for every filter, so with
            `centroids_trainable=False` a grid collapses to shared centroids.
        local_normalization: bool, normalise the similarities to sum to 1
            over the KCPs at every cell.
        similarity: `"exp"` or `"inv_euclidean"`.
        scaling: float, the side of the coordinate square; Sigma starts as
            `scaling * I`.
        kernel_initializer: initializer of the stacked kernel.
        bias_initializer: initializer of the stacked bias.
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
    >>> layer(x).shape
    (4, 28, 28, 24)
    >>> layer.similarity_map().shape
    (28, 28, 1, 9)
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        centroids=(2, 2),
        strides=1,
        padding: str = "same",
        activation=None,
        use_bias: bool = True,
        centroids_trainable: bool = False,
        sigma_trainable: bool | None = None,
        per_feature: bool = False,
        local_normalization: bool = True,
        similarity: str = "exp",
        scaling: float = 1.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed: int | None = None,
        implementation: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"Expected a strictly positive value. Received filters={filters!r}.")
        self.filters = int(filters)
        self.kernel_size = _positive_pair(kernel_size, "kernel_size")
        self.strides = _positive_pair(strides, "strides")
        self.centroids = self._standardize_centroids(centroids)
        self.padding = str(padding).lower()
        if self.padding not in PADDINGS:
            raise ValueError(f"Expected `padding` in {PADDINGS}. Received padding={padding!r}.")
        if similarity not in SIMILARITIES:
            raise ValueError(
                f"Expected `similarity` in {SIMILARITIES}. Received similarity={similarity!r}."
            )
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"Expected `implementation` in {IMPLEMENTATIONS}. "
                f"Received implementation={implementation!r}."
            )
        if not scaling > 0:
            raise ValueError(f"Expected a strictly positive value. Received scaling={scaling!r}.")
        self.similarity = similarity
        self.implementation = implementation
        self.scaling = float(scaling)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.centroids_trainable = bool(centroids_trainable)
        self.sigma_trainable = (
            self.centroids_trainable if sigma_trainable is None else bool(sigma_trainable)
        )
        grid = not isinstance(self.centroids, int)
        self.per_feature = bool(per_feature) and not (grid and not self.centroids_trainable)
        self.local_normalization = bool(local_normalization)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.n_centroids = centroid_count(self.centroids)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @staticmethod
    def _standardize_centroids(centroids):
        if isinstance(centroids, (int, np.integer)) and not isinstance(centroids, bool):
            if centroids < 1:
                raise ValueError(
                    "Expected `centroids` to be an int >= 1 or a pair of positive ints. "
                    f"Received centroids={centroids!r}."
                )
            return int(centroids)
        try:
            return _positive_pair(centroids, "centroids")
        except ValueError:
            raise ValueError(
                "Expected `centroids` to be an int >= 1 or a pair of positive ints. "
                f"Received centroids={centroids!r}."
            ) from None

    @property
    def groups(self) -> int:
        """Number of centroid sets: `filters` when per-feature, else 1."""
        return self.filters if self.per_feature else 1

    def build(self, input_shape):
        rows, cols, channels = input_shape[1], input_shape[2], input_shape[3]
        if rows is None or cols is None or channels is None:
            raise ValueError(
                "SoftWeightSharingConv2D needs static rows, cols and channels, since its "
                f"similarity map depends on the output size. Received input_shape={input_shape}."
            )
        self.output_rows, self.output_cols = (
            conv_output_length(n, k, s, self.padding)
            for n, k, s in zip((rows, cols), self.kernel_size, self.strides)
        )
        if min(self.output_rows, self.output_cols) < 1:
            raise ValueError(
                f"Input {rows}x{cols} is smaller than kernel_size={self.kernel_size} "
                f"with padding='valid'. Received input_shape={input_shape}."
            )
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        self.uses_local = self.implementation == "local" or (
            self.implementation == "auto"
            and self.kernel_size[0] * self.kernel_size[1] * channels
            < 2 * self.filters * self.n_centroids
        )
        if self.uses_local:
            self._patch_padding, self._patch_indices = self._patch_rows(rows, cols)
        stacked = self.filters * self.n_centroids
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, channels, stacked),
            initializer=self.kernel_initializer,
        )
        self.bias = (
            self.add_weight(name="bias", shape=(stacked,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
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
        weights = ops.cast(self.similarity_map(), self.compute_dtype)
        if self.uses_local:
            outputs = self._mix_locally(inputs, weights)
        else:
            outputs = self._mix_convolutions(inputs, weights)
        if self.use_bias:
            bias = ops.reshape(self.bias, (self.filters, self.n_centroids))
            outputs = outputs + ops.sum(weights * bias, axis=-1)
        return self.activation(outputs)

    def _mix_convolutions(self, inputs, weights):
        """One convolution with `filters * S` outputs, mixed per cell over S."""
        stacked = ops.conv(inputs, self.kernel, strides=self.strides, padding=self.padding)
        stacked = ops.reshape(
            stacked, (-1, self.output_rows, self.output_cols, self.filters, self.n_centroids)
        )
        return ops.sum(stacked * weights, axis=-1)

    def _patch_rows(self, rows: int, cols: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """Padding and gather indices of every output cell's receptive field.

        Computed once, in `build`. Returns the `(top, bottom, left, right)` padding of the input and, for
        cell `p` and kernel tap `t = (ti, tj)` in order, the flat index
        `row * padded_cols + col` of the padded input pixel under that tap:
        shape `(H'W' * kh * kw,)`.
        """
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        pads = [0, 0]
        if self.padding == "same":
            for axis, (n, out, k, s) in enumerate(
                ((rows, self.output_rows, kh, sh), (cols, self.output_cols, kw, sw))
            ):
                pads[axis] = max((out - 1) * s + k - n, 0)
        padding = (pads[0] // 2, pads[0] - pads[0] // 2, pads[1] // 2, pads[1] - pads[1] // 2)
        i = np.arange(self.output_rows)[:, None, None, None] * sh + np.arange(kh)[:, None]
        j = np.arange(self.output_cols)[:, None, None] * sw + np.arange(kw)
        return padding, (i * (cols + pads[1]) + j).reshape(-1).astype("int32")

    def _mix_locally(self, inputs, weights):
        """Mix the kernels per cell, then apply them to the input's patches.

        The input is laid out `(rows, cols, channels, batch)`, so gathering
        the receptive fields gives the patches as `(H'W', K, B)` with no copy
        of the big patch tensor, and the per-cell products are one batched
        matmul. The gather's gradient is a segment sum, several times cheaper
        than the gradient of an image-patch extraction (README, benchmarks).
        """
        rows, cols, channels = inputs.shape[1:]
        top, bottom, left, right = self._patch_padding
        cells = self.output_rows * self.output_cols
        patch_size = self.kernel_size[0] * self.kernel_size[1] * channels
        pixels = ops.pad(
            ops.transpose(inputs, (1, 2, 3, 0)), ((top, bottom), (left, right), (0, 0), (0, 0))
        )
        pixels = ops.reshape(pixels, ((rows + top + bottom) * (cols + left + right), -1))
        patches = ops.reshape(
            ops.take(pixels, self._patch_indices, axis=0), (cells, patch_size, -1)
        )
        kernels = ops.reshape(self.kernel, (patch_size, self.filters, self.n_centroids))
        weights = ops.reshape(
            ops.broadcast_to(
                weights, (self.output_rows, self.output_cols, self.filters, self.n_centroids)
            ),
            (cells, self.filters, self.n_centroids),
        )
        # sum_s S[p, f, s] W[k, f, s] as F matmuls (P x S) @ (S x K): several times
        # faster, forward and backward, than broadcasting a (P, F, S, K) product.
        local_kernels = ops.matmul(
            ops.transpose(weights, (1, 0, 2)), ops.transpose(kernels, (1, 2, 0))
        )
        local_kernels = ops.transpose(local_kernels, (1, 0, 2))  # (H'W', F, K)
        outputs = ops.matmul(local_kernels, patches)  # (H'W', F, B)
        outputs = ops.transpose(outputs, (2, 0, 1))
        return ops.reshape(outputs, (-1, self.output_rows, self.output_cols, self.filters))

    def kcp_kernels(self) -> np.ndarray:
        """The KCPs' kernels as numpy, shape `(kh, kw, in_channels, filters, S)`."""
        kernel = ops.convert_to_numpy(self.kernel)
        return kernel.reshape(*kernel.shape[:3], self.filters, self.n_centroids)

    def compute_output_shape(self, input_shape):
        rows, cols = (
            conv_output_length(n, k, s, self.padding)
            for n, k, s in zip(input_shape[1:3], self.kernel_size, self.strides)
        )
        return (input_shape[0], rows, cols, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "centroids": self.centroids,
                "strides": self.strides,
                "padding": self.padding,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "centroids_trainable": self.centroids_trainable,
                "sigma_trainable": self.sigma_trainable,
                "per_feature": self.per_feature,
                "local_normalization": self.local_normalization,
                "similarity": self.similarity,
                "scaling": self.scaling,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
                "implementation": self.implementation,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("centroids"), list):
            config["centroids"] = tuple(config["centroids"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="swsl_cli")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalisation across channels, as `tf.nn.local_response_normalization`.

    `y = x / (bias + alpha * sum_{|d' - d| <= depth_radius} x[..., d']^2) ** beta`.
    Keras has no such layer; this one uses `keras.ops` so it runs on every
    backend. Defaults are tflearn's (`depth_radius=5, bias=1, alpha=1e-4,
    beta=0.75`), which the original network used.

    Args:
        depth_radius: int, half-width of the channel window.
        bias: float, offset (usually positive to avoid dividing by 0).
        alpha: float, scale of the squared sum.
        beta: float, exponent.

    Input shape:
        Any tensor with channels last.

    Output shape:
        Same as input.
    """

    def __init__(self, depth_radius=5, bias=1.0, alpha=1e-4, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(depth_radius, int) or depth_radius < 0:
            raise ValueError(
                f"Expected a non-negative int. Received depth_radius={depth_radius!r}."
            )
        self.depth_radius = depth_radius
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def build(self, input_shape):
        # The window sum over channels is a matmul with a 0/1 band matrix, and
        # the power goes through exp/log: both several times faster, forward
        # and backward, than shifted slices and `power` (benchmarks/bench.py).
        offsets = np.arange(input_shape[-1])
        self._band = (np.abs(offsets[:, None] - offsets) <= self.depth_radius).astype("float32")

    def call(self, inputs):
        squares = ops.square(ops.cast(inputs, "float32"))
        window = ops.matmul(squares, ops.convert_to_tensor(self._band))
        scale = ops.exp(-self.beta * ops.log(self.bias + self.alpha * window))
        return inputs * ops.cast(scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth_radius": self.depth_radius,
                "bias": self.bias,
                "alpha": self.alpha,
                "beta": self.beta,
            }
        )
        return config
