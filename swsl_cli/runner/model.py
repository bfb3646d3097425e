"""The two-layer convnet of the original demo, with soft or hard weight sharing."""

from __future__ import annotations

import math

import keras

from swsl_cli.layers import (
    LocallyConnected2D,
    LocalResponseNormalization,
    SoftWeightSharingConv2D,
)
from swsl_cli.runner.config import Config

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
SWS_LAYER_NAMES = ("sws1", "sws2")
# The original's tflearn dropout(0.8) keeps 80 % of the units.
DROPOUT_RATE = 0.2


def _conv(config: Config, index: int, filters: int, kernel_size: int, seed: int):
    name = SWS_LAYER_NAMES[index] if config.layer == "sws" else f"conv{index + 1}"
    if config.layer == "conv":
        return keras.layers.Conv2D(
            filters, kernel_size, padding="same", activation="relu", name=name
        )
    if config.layer == "local":
        return LocallyConnected2D(
            filters, kernel_size, padding="same", activation="relu", name=f"local{index + 1}"
        )
    return SoftWeightSharingConv2D(
        filters,
        kernel_size,
        centroids=config.centroids,
        padding="same",
        activation="relu",
        centroids_trainable=config.centroids_trainable,
        per_feature=True,
        kcp_init=config.kcp_init,
        seed=seed + index,
        name=name,
    )


def build_model(
    config: Config,
    seed: int = 0,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> keras.Model:
    """The seed network: conv 7x7 -> LRN -> pool -> conv 3x3 -> pool -> LRN -> 128 -> 256 -> classes.

    The same layer stack for any `input_shape` `(height, width, channels)` and
    `num_classes` (defaults: MNIST's). The model takes images as stored, 0-255
    (uint8 or float), and scales them itself. The training augmentation is
    not part of it: the input pipeline does it (`swsl_cli.runner.augment`).

    Both convolutions are `SoftWeightSharingConv2D` (`per_feature=True`, the
    flags' centroids) for `--layer sws`, or plain `Conv2D` for `--layer conv`.
    """
    first, second = config.n_filters
    inputs = keras.Input(tuple(input_shape), name="image")
    # Pixels arrive as stored (0-255): the saved model takes raw images.
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = _conv(config, 0, first, 7, seed)(x)
    x = LocalResponseNormalization(name="lrn1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = _conv(config, 1, second, 3, seed)(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = LocalResponseNormalization(name="lrn2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="dense1")(x)
    x = keras.layers.Dropout(DROPOUT_RATE, seed=seed + 2, name="dropout1")(x)
    x = keras.layers.Dense(256, activation="relu", name="dense2")(x)
    x = keras.layers.Dropout(DROPOUT_RATE, seed=seed + 3, name="dropout2")(x)
    # float32 softmax keeps the loss stable under mixed precision.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(
        x
    )
    return keras.Model(inputs, outputs, name=f"{config.layer}_mnist")


def augments_itself(model: keras.Model) -> bool:
    """Whether `model` has augmentation layers of its own: runs saved by 0.2.x and
    earlier rotated, zoomed and shifted inside the model, and resume that way."""
    own = (keras.layers.RandomRotation, keras.layers.RandomZoom, keras.layers.RandomTranslation)
    return any(isinstance(layer, own) for layer in model.layers)


def sws_layers(model: keras.Model) -> list[SoftWeightSharingConv2D]:
    """The model's soft weight sharing layers, in order."""
    return [layer for layer in model.layers if isinstance(layer, SoftWeightSharingConv2D)]


def parameter_counts(model: keras.Model) -> dict[str, int]:
    """Parameters of every layer that has weights, and the model's `total`."""
    counts = {
        layer.name: sum(math.prod(w.shape) for w in layer.weights)
        for layer in model.layers
        if layer.weights
    }
    counts["total"] = sum(counts.values())
    return counts
