"""A centred square crop and a resize of every image, as `--center_crop` and `--image_size` ask."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from swsl_cli.runner.data.arrays import ImageArrays

# Images resized per chunk: bounds the float copy tf.image.resize makes.
CHUNK = 4096


@dataclass(frozen=True)
class CropResize:
    """A centred square crop of each image, then a bicubic resize to `size` x `size`.

    Attributes:
        size: the side of the images after the resize; None keeps the crop's size.
        crop: the side of the centred square as a fraction of the shorter image
            side; None: the largest centred square when `size` is given (so the
            resize keeps the aspect ratio), no crop otherwise.
    """

    size: int | None = None
    crop: float | None = None

    @property
    def active(self) -> bool:
        return self.size is not None or self.crop is not None

    def crop_box(self, height: int, width: int) -> tuple[int, int, int]:
        """`(top, left, side)` of the crop in an image of `height` x `width`."""
        side = max(1, round((1.0 if self.crop is None else self.crop) * min(height, width)))
        return (height - side) // 2, (width - side) // 2, side

    def output_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The `(height, width, channels)` of an image of `shape` after the crop and resize."""
        if not self.active:
            return tuple(shape)
        side = self.size if self.size is not None else self.crop_box(*shape[:2])[2]
        return side, side, shape[2]

    def describe(self) -> str:
        """`, centre crop 0.775 resized to 32x32` and the like; empty when inactive."""
        parts = []
        if self.active:
            parts.append(f"centre crop {'square' if self.crop is None else f'{self.crop:g}'}")
        if self.size is not None:
            parts.append(f"resized to {self.size}x{self.size} (bicubic)")
        return "".join(f", {part}" for part in parts)

    def tensor(self, images):
        """The crop and resize of uint8 `images`, `(H, W, C)` or `(N, H, W, C)` tensors, as uint8."""
        import tensorflow as tf

        height, width = images.shape[-3], images.shape[-2]
        top, left, side = self.crop_box(height, width)
        images = tf.image.crop_to_bounding_box(images, top, left, side, side)
        if self.size is None or self.size == side:
            return images
        # Antialiased: LRLC's CelebA task shrinks 138 pixels to 32.
        resized = tf.image.resize(images, (self.size, self.size), "bicubic", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    def arrays(self, images: np.ndarray) -> np.ndarray:
        """`tensor` on uint8 numpy images `(N, H, W, C)`, chunk by chunk."""
        if not self.active:
            return images
        starts = range(0, len(images), CHUNK) or [0]  # an empty split keeps its new shape
        return np.concatenate([self.tensor(images[i : i + CHUNK]).numpy() for i in starts])

    def on(self, arrays: ImageArrays) -> ImageArrays:
        """`arrays` with every split's images cropped and resized, the source saying so."""
        if not self.active:
            return arrays
        return dataclasses.replace(
            arrays,
            x_train=self.arrays(arrays.x_train),
            x_test=self.arrays(arrays.x_test),
            x_val=None if arrays.x_val is None else self.arrays(arrays.x_val),
            source=arrays.source + self.describe(),
        )


NO_CROP = CropResize()  # every image as stored
