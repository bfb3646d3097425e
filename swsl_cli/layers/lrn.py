"""Local response normalisation across channels, with `keras.ops` only."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


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
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Input shape:
        Any tensor with channels last.

    Output shape:
        Same as input.

    Example:

    >>> x = np.ones((1, 2, 2, 3), "float32")
    >>> layer = LocalResponseNormalization(depth_radius=1, alpha=1.0, beta=1.0)
    >>> y = keras.ops.convert_to_numpy(layer(x))
    >>> [round(float(v), 3) for v in y[0, 0, 0]]  # 1 / (1 + window sums 2, 3, 2)
    [0.333, 0.25, 0.333]
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
