"""The seed network in its soft and hard weight sharing variants."""

import keras

from swsl_cli import LocalResponseNormalization, SoftWeightSharingConv2D
from swsl_cli.runner.config import Config
from swsl_cli.runner.model import augments_itself, build_model, sws_layers


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_sws_network_follows_the_seed():
    model = build_model(
        Config(
            centroid_grid=(3, 3), centroids_trainable=True, max_shift=0, max_rotation=0, max_zoom=0
        )
    )
    assert layer_types(model) == [
        "InputLayer",
        "Rescaling",
        "SoftWeightSharingConv2D",
        "LocalResponseNormalization",
        "MaxPooling2D",
        "SoftWeightSharingConv2D",
        "MaxPooling2D",
        "LocalResponseNormalization",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
        "Dropout",
        "Dense",
    ]
    first, second = sws_layers(model)
    assert (first.filters, first.kernel_size, second.filters, second.kernel_size) == (
        24,
        (7, 7),
        48,
        (3, 3),
    )
    assert first.centroids == (3, 3) and first.per_feature and first.centroids_trainable
    assert tuple(first.centroid_positions.shape) == (24, 9, 2)
    assert model.output_shape == (None, 10)
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [
        128,
        256,
        10,
    ]
    assert all(
        layer.rate == 0.2 for layer in model.layers if isinstance(layer, keras.layers.Dropout)
    )
    lrn = [layer for layer in model.layers if isinstance(layer, LocalResponseNormalization)][0]
    assert (lrn.depth_radius, lrn.bias, lrn.alpha, lrn.beta) == (5, 1.0, 1e-4, 0.75)


def test_random_centroids_and_fixed_grid():
    random_model = build_model(Config(n_centroids=5, n_filters=(4, 6)))
    assert [layer.centroids for layer in sws_layers(random_model)] == [5, 5]
    assert sws_layers(random_model)[0].groups == 4  # random centroids stay per feature
    grid_model = build_model(Config(n_filters=(4, 6)))
    assert sws_layers(grid_model)[0].groups == 1  # a fixed grid is shared


def test_conv_baseline_has_the_same_widths():
    model = build_model(Config(layer="conv", n_filters=(8, 16)))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convs] == [(8, (7, 7)), (16, (3, 3))]
    assert not any(isinstance(layer, SoftWeightSharingConv2D) for layer in model.layers)


def test_the_model_holds_no_augmentation_the_pipeline_does():
    model = build_model(Config(max_shift=2, max_rotation=10, max_zoom=0.1, n_filters=(4, 4)))
    assert not augments_itself(model)
    # A run saved by 0.2.x rotated, zoomed and shifted in the model: it keeps doing so.
    inputs = keras.Input((28, 28, 1))
    shifted = keras.layers.RandomTranslation(0.1, 0.1, name="shift")(inputs)
    legacy = keras.Model(inputs, model(shifted))
    assert augments_itself(legacy)
