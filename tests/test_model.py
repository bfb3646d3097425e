"""The seed network with every layer kind and both heads."""

import keras
import pytest

from swsl_cli import (
    CoordinateChannels,
    LocalResponseNormalization,
    LowRankLocallyConnected2D,
    SoftWeightSharingConv2D,
)
from swsl_cli.runner.config import Config
from swsl_cli.runner.model import augments_itself, build_model, parameter_counts, sws_layers


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


def test_gap_head_pools_the_features_straight_into_the_classes():
    model = build_model(Config(head="gap", n_filters=(4, 6)), num_classes=7)
    assert layer_types(model)[-3:] == [
        "LocalResponseNormalization",
        "GlobalAveragePooling2D",
        "Dense",
    ]
    assert [layer.name for layer in model.layers[-2:]] == ["gap", "probs"]
    assert model.output_shape == (None, 7)
    assert parameter_counts(model)["probs"] == 6 * 7 + 7


@pytest.mark.parametrize(
    "flags, names, kind",
    [
        (
            dict(layer="lrlc", rank=3, combining="free"),
            ("lrlc1", "lrlc2"),
            LowRankLocallyConnected2D,
        ),
        (dict(layer="coordconv"), ("coordconv1", "coordconv2"), keras.layers.Conv2D),
        (dict(scaling=2.5), ("sws1", "sws2"), SoftWeightSharingConv2D),
    ],
)
def test_every_layer_kind_is_built_in_both_places_with_its_flags(flags, names, kind):
    model = build_model(Config(n_filters=(4, 6), **flags))
    layers = [model.get_layer(name) for name in names]
    assert all(type(layer) is kind for layer in layers)
    assert [(layer.filters, layer.kernel_size) for layer in layers] == [(4, (7, 7)), (6, (3, 3))]
    if kind is LowRankLocallyConnected2D:
        assert all(layer.rank == 3 and layer.combining == "free" for layer in layers)
    if kind is SoftWeightSharingConv2D:
        assert all(layer.scaling == 2.5 for layer in layers)


def test_coordconv_layers_see_two_coordinate_channels_more():
    model = build_model(Config(layer="coordconv", n_filters=(4, 6)))
    assert [type(model.get_layer(f"coords{i}")) for i in (1, 2)] == [CoordinateChannels] * 2
    first, second = (model.get_layer(f"coordconv{i}") for i in (1, 2))
    assert tuple(first.kernel.shape) == (7, 7, 1 + 2, 4)
    assert tuple(second.kernel.shape) == (3, 3, 4 + 2, 6)
