"""The two-layer convnet of the original demo, with any layer of the spectrum and either head."""

from __future__ import annotations

import math

import keras

from swsl_cli.layers import (
    CoordinateChannels,
    LocallyConnected2D,
    LocalResponseNormalization,
    LowRankLocallyConnected2D,
    SoftWeightSharingConv2D,
)
from swsl_cli.runner.config import Config

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
SWS_LAYER_NAMES = ("sws1", "sws2")
# The original's tflearn dropout(0.8) keeps 80 % of the units.
DROPOUT_RATE = 0.2


def _convolution(config: Config, x, index: int, filters: int, kernel_size: int, seed: int):
    """Conv layer `index` (0 or 1) of `config.layer`'s kind on `x`, named `<kind><index + 1>`
    (`sws1`, `conv2`, `local1`, `lrlc2`, `coordconv1`)."""
    number = index + 1
    common = dict(padding="same", activation="relu")
    if config.layer == "conv":
        return keras.layers.Conv2D(filters, kernel_size, name=f"conv{number}", **common)(x)
    if config.layer == "coordconv":
        x = CoordinateChannels(name=f"coords{number}")(x)
        return keras.layers.Conv2D(filters, kernel_size, name=f"coordconv{number}", **common)(x)
    if config.layer == "local":
        return LocallyConnected2D(filters, kernel_size, name=f"local{number}", **common)(x)
    if config.layer == "lrlc":
        return LowRankLocallyConnected2D(
            filters,
            kernel_size,
            rank=config.rank,
            combining=config.combining,
            name=f"lrlc{number}",
            **common,
        )(x)
    return SoftWeightSharingConv2D(
        filters,
        kernel_size,
        centroids=config.centroids,
        centroids_trainable=config.centroids_trainable,
        per_feature=True,
        scaling=config.scaling,
        kcp_init=config.kcp_init,
        seed=seed + index,
        name=SWS_LAYER_NAMES[index],
        **common,
    )(x)


def _head(config: Config, x, num_classes: int, seed: int):
    """The classifier on the conv layers' features: the original's dense layers, or global
    average pooling straight into the classes."""
    if config.head == "gap":
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(128, activation="relu", name="dense1")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, seed=seed + 2, name="dropout1")(x)
        x = keras.layers.Dense(256, activation="relu", name="dense2")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, seed=seed + 3, name="dropout2")(x)
    # float32 softmax keeps the loss stable under mixed precision.
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)


def build_model(
    config: Config,
    seed: int = 0,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> keras.Model:
    """The seed network: conv 7x7 -> LRN -> pool -> conv 3x3 -> pool -> LRN -> head.

    The head is the original's Flatten -> 128 -> 256 -> classes (`--head
    dense`) or global average pooling -> classes (`--head gap`). The same
    layer stack for any `input_shape` `(height, width, channels)` and
    `num_classes` (defaults: MNIST's). The model takes images as stored, 0-255
    (uint8 or float), and scales them itself. The training augmentation is
    not part of it: the input pipeline does it (`swsl_cli.runner.augment`).

    Both convolutions are of `config.layer`'s kind: `SoftWeightSharingConv2D`
    (`per_feature=True`, the flags' centroids and sharpness), `Conv2D`,
    `LocallyConnected2D`, `LowRankLocallyConnected2D` (`--rank`,
    `--combining`), or `Conv2D` after `CoordinateChannels` (CoordConv).
    """
    first, second = config.n_filters
    inputs = keras.Input(tuple(input_shape), name="image")
    # Pixels arrive as stored (0-255): the saved model takes raw images.
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = _convolution(config, x, 0, first, 7, seed)
    x = LocalResponseNormalization(name="lrn1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = _convolution(config, x, 1, second, 3, seed)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = LocalResponseNormalization(name="lrn2")(x)
    outputs = _head(config, x, num_classes, seed)
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


def activation_values(model: keras.Model) -> int:
    """Values per example a training step keeps for its backward pass, at least.

    Every layer's output and, in a per-cell layer, its gathered patches
    (`kh * kw * in_channels` values for each output cell).
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        total += math.prod(layer.output.shape[1:])
        patches = getattr(layer, "_cell_patches", None)
        if patches is not None:
            total += patches.cells * math.prod(layer.kernel_size) * layer.input.shape[-1]
    return total
