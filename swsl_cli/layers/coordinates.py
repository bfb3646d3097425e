"""Coordinate channels: the input of a CoordConv (Liu et al. 2018)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="swsl_cli")
class CoordinateChannels(keras.layers.Layer):
    """Appends two channels holding every pixel's row and column coordinate.

    The `AddCoords` step of CoordConv (Liu et al., "An intriguing failing of
    convolutional neural networks and the CoordConv solution", NeurIPS 2018):
    a `Conv2D` after it sees where each patch is, so its output may depend on
    the position while its kernel stays shared. Channel `C` is the row
    `linspace(-1, 1, rows)[i]`, channel `C + 1` the column
    `linspace(-1, 1, cols)[j]`, the same for every image.

    Input shape:
        4D tensor `(batch, rows, cols, channels)` with static rows and cols.

    Output shape:
        4D tensor `(batch, rows, cols, channels + 2)`.

    Example:

    >>> x = np.zeros((2, 3, 5, 1), "float32")
    >>> coordinates = CoordinateChannels()(x)
    >>> tuple(coordinates.shape)
    (2, 3, 5, 3)
    >>> keras.ops.convert_to_numpy(coordinates[0, :, 0, 1]).tolist()
    [-1.0, 0.0, 1.0]
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        rows, cols = input_shape[1], input_shape[2]
        if rows is None or cols is None:
            raise ValueError(
                "CoordinateChannels needs static rows and cols, since its channels hold them. "
                f"Received input_shape={input_shape}."
            )
        ys, xs = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
        self._coordinates = np.stack([ys, xs], axis=-1).astype("float32")

    def call(self, inputs):
        coordinates = ops.cast(ops.convert_to_tensor(self._coordinates), inputs.dtype)
        batch = ops.shape(inputs)[0]
        coordinates = ops.broadcast_to(coordinates[None], (batch, *self._coordinates.shape))
        return ops.concatenate([inputs, coordinates], axis=-1)

    def compute_output_shape(self, input_shape):
        channels = None if input_shape[3] is None else input_shape[3] + 2
        return (*input_shape[:3], channels)
