"""LowRankLocallyConnected2D against a numpy reference, Conv2D at step 0, and Keras's harness.

Uses only keras and numpy, so it runs on every backend: `make test` runs it
under TensorFlow, torch and JAX.
"""

import doctest
import json

import keras
import numpy as np
import pytest
from keras import ops

from swsl_cli import LowRankLocallyConnected2D
from tests import reference
from tests.harness import run_layer_test
from tests.test_locally_connected import gradients

COMBININGS = ("row_col", "free")
IMPLEMENTATIONS = ("conv", "local")
GEOMETRIES = [
    ("same", (1, 1), 3),
    ("valid", (1, 1), 3),
    ("same", (2, 1), (2, 4)),
    ("valid", (2, 2), 2),
]


def built_layer(input_shape, **kwargs):
    layer = LowRankLocallyConnected2D(bias_initializer="random_normal", **kwargs)
    layer.build(input_shape)
    return layer


def numpy_weights(layer) -> dict:
    return {w.name: ops.convert_to_numpy(w) for w in layer.weights}


def randomized(layer, rng) -> dict:
    """Gives every weight of `layer` random values (the logits and spatial biases start at
    zero); returns them by name."""
    values = {}
    for weight in layer.weights:
        values[weight.name] = rng.normal(size=weight.shape).astype("float32")
        weight.assign(values[weight.name])
    return values


def reference_output(x, layer, weights):
    return reference.low_rank_locally_connected(
        x,
        weights["kernel"],
        layer.strides,
        layer.padding,
        bias=weights.get("bias"),
        row_logits=weights.get("row_logits"),
        col_logits=weights.get("col_logits"),
        logits=weights.get("logits"),
        row_bias=weights.get("row_bias"),
        col_bias=weights.get("col_bias"),
        cell_bias=weights.get("cell_bias"),
    )


@pytest.mark.parametrize("padding, strides, kernel_size", GEOMETRIES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("combining", COMBININGS)
def test_matches_numpy_reference(combining, implementation, padding, strides, kernel_size):
    rng = np.random.default_rng(1)
    x = rng.random((2, 9, 8, 3)).astype("float32")
    layer = built_layer(
        x.shape,
        filters=4,
        kernel_size=kernel_size,
        rank=3,
        strides=strides,
        padding=padding,
        combining=combining,
        implementation=implementation,
    )
    weights = randomized(layer, rng)
    expected = reference_output(x, layer, weights)
    got = ops.convert_to_numpy(layer(x))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding, strides, kernel_size", GEOMETRIES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("combining", COMBININGS)
def test_step_zero_equals_conv2d_with_the_mean_basis(
    combining, implementation, padding, strides, kernel_size
):
    rng = np.random.default_rng(2)
    x = rng.random((2, 9, 8, 3)).astype("float32")
    layer = built_layer(
        x.shape,
        filters=5,
        kernel_size=kernel_size,
        rank=4,
        strides=strides,
        padding=padding,
        combining=combining,
        implementation=implementation,
    )
    mean = layer.basis_kernels().mean(axis=-1)
    conv = keras.layers.Conv2D(5, kernel_size, strides=strides, padding=padding)
    conv.build(x.shape)
    conv.set_weights([mean, ops.convert_to_numpy(layer.bias)])
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(conv(x)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(ops.convert_to_numpy(layer.combining_weights()), 0.25)
    kernels = layer.local_kernels()
    np.testing.assert_allclose(kernels, np.broadcast_to(mean, kernels.shape), atol=1e-6)
    # The bases differ: the layer can depart from the convolution.
    assert not np.allclose(layer.basis_kernels()[..., 0], layer.basis_kernels()[..., 1])


@pytest.mark.parametrize("combining", COMBININGS)
def test_both_implementations_give_the_same_outputs_and_gradients(combining):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 6, 2)).astype("float32")
    layers = {
        implementation: built_layer(
            x.shape,
            filters=3,
            kernel_size=(3, 2),
            rank=3,
            strides=(2, 1),
            padding="same",
            combining=combining,
            implementation=implementation,
        )
        for implementation in IMPLEMENTATIONS
    }
    values = randomized(layers["conv"], rng)
    for weight in layers["local"].weights:
        weight.assign(values[weight.name])
    upstream = rng.normal(size=layers["conv"].compute_output_shape(x.shape)).astype("float32")
    results = {}
    for implementation, layer in layers.items():

        def loss(inputs, *weights, layer=layer):
            outputs = layer.stateless_call(list(weights), [], inputs)[0]
            return ops.sum(ops.multiply(outputs, ops.convert_to_tensor(upstream)))

        results[implementation] = gradients(loss, [x, *numpy_weights(layer).values()])
    names = ["inputs", *numpy_weights(layers["conv"])]
    for name, conv, local in zip(names, results["conv"], results["local"]):
        np.testing.assert_allclose(conv, local, rtol=1e-4, atol=1e-4, err_msg=name)
    # The logits get a gradient: the layer can learn where to use which basis.
    assert (
        np.abs(
            results["local"][names.index("row_logits" if combining == "row_col" else "logits")]
        ).max()
        > 0
    )


def test_weight_layout_and_parameter_count():
    row_col = built_layer((1, 10, 9, 3), filters=5, kernel_size=(3, 2), rank=4, strides=(2, 1))
    shapes = {w.name: tuple(w.shape) for w in row_col.weights}
    assert shapes == {
        "kernel": (3, 2, 3, 5, 4),
        "bias": (5,),
        "row_logits": (4, 4),
        "col_logits": (8, 4),
        "row_bias": (4,),
        "col_bias": (8,),
    }
    assert row_col.count_params() == 3 * 2 * 3 * 5 * 4 + 5 + (4 + 8) * 4 + 4 + 8
    free = built_layer(
        (1, 10, 9, 3), filters=5, kernel_size=3, rank=2, combining="free", use_bias=False
    )
    assert {w.name: tuple(w.shape) for w in free.weights} == {
        "kernel": (3, 3, 3, 5, 2),
        "logits": (8, 7, 2),
        "cell_bias": (8, 7),
    }
    plain = built_layer((1, 10, 9, 3), filters=5, kernel_size=3, spatial_bias=False)
    assert [w.name for w in plain.weights] == ["kernel", "bias", "row_logits", "col_logits"]


def test_local_kernels_mix_the_bases_by_the_combining_weights():
    rng = np.random.default_rng(4)
    layer = built_layer((1, 6, 5, 2), filters=3, kernel_size=3, rank=3, combining="free")
    values = randomized(layer, rng)
    logits = values["logits"].astype(np.float64)
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.combining_weights()), weights, rtol=1e-5)
    expected = np.einsum("ijk,abcfk->ijabcf", weights, values["kernel"])
    np.testing.assert_allclose(layer.local_kernels(), expected, rtol=1e-5, atol=1e-6)


def test_config_round_trip_through_json():
    layer = LowRankLocallyConnected2D(
        4,
        (3, 2),
        rank=6,
        strides=(2, 1),
        padding="SAME",
        combining="free",
        spatial_bias=False,
        implementation="conv",
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(0.01),
        bias_constraint="non_neg",
        name="lrlc",
    )
    config = layer.get_config()
    clone = LowRankLocallyConnected2D.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    assert (clone.rank, clone.combining, clone.spatial_bias, clone.implementation) == (
        6,
        "free",
        False,
        "conv",
    )
    assert clone.kernel_size == (3, 2) and clone.strides == (2, 1) and clone.padding == "same"
    assert isinstance(clone.kernel_regularizer, keras.regularizers.L2)
    assert isinstance(clone.bias_constraint, keras.constraints.NonNeg)


@pytest.mark.parametrize("combining", COMBININGS)
def test_model_survives_save_and_load(tmp_path, combining):
    rng = np.random.default_rng(5)
    x = rng.random((3, 12, 12, 1)).astype("float32")
    inputs = keras.Input((12, 12, 1))
    lrlc = LowRankLocallyConnected2D(
        4, 3, rank=3, padding="same", combining=combining, activation="relu"
    )
    model = keras.Model(inputs, keras.layers.Flatten()(lrlc(inputs)))
    randomized(lrlc, rng)  # logits away from zero: the saved weights matter
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), ops.convert_to_numpy(loaded(x)))
    assert isinstance(loaded.get_layer(index=1), LowRankLocallyConnected2D)
    np.testing.assert_array_equal(loaded.get_layer(index=1).local_kernels(), lrlc.local_kernels())


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    rng = np.random.default_rng(6)
    x = rng.random((2, 8, 8, 2)).astype("float32")
    reference_layer = built_layer(x.shape, filters=3, kernel_size=3, rank=3, padding="same")
    randomized(reference_layer, rng)
    expected = ops.convert_to_numpy(reference_layer(x))
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = LowRankLocallyConnected2D(3, 3, rank=3, padding="same")
        layer.build(x.shape)
        layer.set_weights(reference_layer.get_weights())
        out = layer(x)
        assert all(w.dtype == "float32" for w in layer.weights)
        assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
        assert keras.backend.standardize_dtype(layer.combining_weights().dtype) == "float32"
        np.testing.assert_allclose(
            ops.convert_to_numpy(ops.cast(out, "float32")), expected, atol=0.1, rtol=0.05
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(filters=2, kernel_size=3, rank=0), "rank=0"),
        (dict(filters=2, kernel_size=3, rank=2.5), "rank=2.5"),
        (dict(filters=2, kernel_size=3, rank=True), "rank=True"),
        (dict(filters=2, kernel_size=3, combining="rows"), "combining='rows'"),
        (dict(filters=2, kernel_size=3, implementation="fast"), "implementation='fast'"),
        (dict(filters=0, kernel_size=3), "filters=0"),
        (dict(filters=2, kernel_size=3, padding="causal"), "padding='causal'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LowRankLocallyConnected2D(**kwargs)


def test_input_without_static_size_or_too_small_is_refused():
    with pytest.raises(ValueError, match="static rows"):
        LowRankLocallyConnected2D(2, 3).build((None, None, 5, 1))
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        LowRankLocallyConnected2D(2, 5).build((1, 3, 3, 1))


@pytest.mark.parametrize(
    "kwargs, output_shape, trainable",
    [
        (dict(), (2, 6, 5, 3), 6),
        (dict(combining="free", padding="same", strides=(2, 1)), (2, 4, 7, 3), 4),
        (dict(use_bias=False, spatial_bias=False, implementation="conv"), (2, 6, 5, 3), 3),
        (dict(kernel_regularizer="l2", activation="relu"), (2, 6, 5, 3), 6),
    ],
    ids=["row-col", "free-same-strided", "conv-no-bias", "regularized"],
)
def test_keras_layer_harness(kwargs, output_shape, trainable):
    run_layer_test(
        LowRankLocallyConnected2D,
        init_kwargs={"filters": 3, "kernel_size": 3, "rank": 2, **kwargs},
        input_shape=(2, 8, 7, 2),
        expected_output_shape=output_shape,
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=0,
        expected_num_losses=1 if "kernel_regularizer" in kwargs else 0,
    )


def test_docstring_example_runs():
    globs = {"np": np, "keras": keras, "LowRankLocallyConnected2D": LowRankLocallyConnected2D}
    (test,) = [
        t
        for t in doctest.DocTestFinder().find(LowRankLocallyConnected2D, globs=globs)
        if t.examples
    ]
    assert doctest.DocTestRunner().run(test).failed == 0


def test_fan_based_initializer_draws_each_basis_as_conv2d():
    layer = built_layer((1, 12, 12, 2), filters=6, kernel_size=3, rank=8)
    bases = layer.basis_kernels()
    limit = np.sqrt(6 / (3 * 3 * 2 + 3 * 3 * 6))  # Glorot for a (3, 3, 2, 6) Conv2D kernel
    assert np.abs(bases).max() <= limit + 1e-6
    assert np.abs(bases).max() > 0.95 * limit
    assert layer.get_config()["kernel_initializer"]["config"].get("input_axes") is None
