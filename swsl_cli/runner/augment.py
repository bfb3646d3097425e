"""Training augmentation: random rotation, zoom and shift in one resampling.

It runs in the `tf.data` input pipeline, not in the model: Keras's advice for
training on CPU, where the pipeline's threads prepare the next batches while
the model trains on this one. On the 2-core CPU this takes the augmentation
off the training step (`benchmarks/bench.py`, README "Training recipe"). The
saved model holds no augmentation.

Each image's draws come from `(seed, epoch, batch)` with stateless random ops:
epoch `e` sees the same augmented batches whether training started at epoch 0
or resumed at `e`.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random rotation, zoom and shift of each image, as one affine map.

    Every image gets its own draws:

    - an angle uniform in `[-max_rotation, max_rotation]` degrees,
    - a scale uniform in `[1 - max_zoom, 1 + max_zoom]`, the same on both axes
      (above 1 zooms out, as in `keras.layers.RandomZoom`),
    - a shift per axis uniform in `[-max_shift, max_shift]` pixels,

    about the image's centre, with bilinear interpolation and a black (0)
    border. Shifts alone (no rotation or zoom) use nearest interpolation, so
    they move whole pixels: the drawn shift rounded, as Keras's
    `RandomTranslation(interpolation="nearest")` does. Keras's
    `RandomRotation`, `RandomZoom` and `RandomTranslation` would resample the
    batch three times for the same map.
    """

    max_rotation: float = 0.0
    max_zoom: float = 0.0
    max_shift: int = 0

    @classmethod
    def from_config(cls, config) -> Augmentation:
        return cls(config.max_rotation, config.max_zoom, config.max_shift)

    def __bool__(self) -> bool:
        return bool(self.max_rotation or self.max_zoom or self.max_shift)

    def transforms(self, draws, height: int, width: int):
        """`(batch, 8)` output-to-input maps for `keras.ops.image.affine_transform`.

        `draws` is `(batch, 4)` uniform in [0, 1): angle, scale, x and y shift.
        """
        from keras import ops

        angle = (2 * draws[:, 0] - 1) * math.radians(self.max_rotation)
        scale = 1 + (2 * draws[:, 1] - 1) * self.max_zoom
        shift_x = (2 * draws[:, 2] - 1) * self.max_shift
        shift_y = (2 * draws[:, 3] - 1) * self.max_shift
        cos, sin = scale * ops.cos(angle), scale * ops.sin(angle)
        # Output pixel (x, y) samples the input at
        #   centre + scale * rotation(angle) @ ((x, y) - centre) - shift.
        centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
        zeros = ops.zeros_like(cos)
        return ops.stack(
            [
                cos,
                -sin,
                centre_x - cos * centre_x + sin * centre_y - shift_x,
                sin,
                cos,
                centre_y - sin * centre_x - cos * centre_y - shift_y,
                zeros,
                zeros,
            ],
            axis=1,
        )

    def __call__(self, images, seed):
        """`images` (batch, height, width, channels) float, moved by draws from `seed`.

        `seed` is a stateless seed: two integers, as `tf.random.stateless_uniform` takes.
        """
        import tensorflow as tf
        from keras import ops

        if not self:
            return images
        draws = tf.random.stateless_uniform((tf.shape(images)[0], 4), seed=seed)
        transforms = self.transforms(draws, images.shape[1], images.shape[2])
        return ops.image.affine_transform(
            images,
            transforms,
            interpolation="bilinear" if self.max_rotation or self.max_zoom else "nearest",
            fill_mode="constant",
            fill_value=0,
            data_format="channels_last",
        )
