"""spatial_mnist: MNIST with a fixed distortion per quadrant."""

from __future__ import annotations

import dataclasses

import numpy as np

from swsl_cli.runner.data.arrays import DataError, ImageArrays

SPATIAL_MNIST = "spatial_mnist"


def spatial_mnist(mnist: ImageArrays) -> ImageArrays:
    """MNIST with a fixed distortion per quadrant: a benchmark for location-specific kernels.

    Each 14x14 quadrant of every image is rotated in place by its own multiple
    of 90 degrees (top-left 0, top-right 90, bottom-right 180, bottom-left
    270), and the top-right and bottom-left quadrants are inverted (255 - x).
    Labels stay the digits. The distortion is the same for every image, so the
    data stay spatially consistent: at any one position, strokes always have
    the same orientation and polarity. A location-specific kernel (the soft
    weight sharing or locally connected layer) only has to learn the one
    version that occurs where it sits; a shared convolution kernel sees four
    orientations and two polarities of every stroke and must spend filters on
    each, and strokes no longer continue across quadrant borders.
    """
    if mnist.image_shape != (28, 28, 1):
        raise DataError(f"{SPATIAL_MNIST} needs 28x28 MNIST images, got {mnist.image_shape}")
    arrays = {
        key: spatial_distortion(value) if key.startswith("x") else value
        for key, value in mnist.splits().items()
    }
    return dataclasses.replace(
        mnist,
        x_train=arrays["x_train"],
        x_test=arrays["x_test"],
        x_val=None if mnist.x_val is None else arrays[f"x_{mnist.val_split}"],
        name=SPATIAL_MNIST,
        source=f"{SPATIAL_MNIST} (quadrants rotated and inverted) from {mnist.source}",
    )


def spatial_distortion(images: np.ndarray) -> np.ndarray:
    """The fixed per-quadrant rotation and inversion of `spatial_mnist`, on `(N, H, W, C)`."""
    half_h, half_w = images.shape[1] // 2, images.shape[2] // 2
    out = images.copy()
    quadrants = (
        (slice(0, half_h), slice(0, half_w), 0, False),
        (slice(0, half_h), slice(half_w, None), 1, True),
        (slice(half_h, None), slice(half_w, None), 2, False),
        (slice(half_h, None), slice(0, half_w), 3, True),
    )
    for rows, cols, turns, invert in quadrants:
        block = np.rot90(images[:, rows, cols], k=turns, axes=(1, 2))
        out[:, rows, cols] = 255 - block if invert else block
    return out
