"""SoftWeightSharingConv2D against a numpy reference, Conv2D, and Keras's layer harness.

Uses only keras and numpy, so it runs on every backend: `make test` runs it
under TensorFlow, and again under `KERAS_BACKEND=torch` and `KERAS_BACKEND=jax`.
"""

import doctest
import json

import keras
import numpy as np
import pytest
from keras import ops

from swsl_cli import LocalResponseNormalization, SoftWeightSharingConv2D, visualize
from swsl_cli.layers import grid_centroids
from tests import reference
from tests.harness import run_layer_test


def built_layer(input_shape, randomize_sigma=True, **kwargs):
    rng = np.random.default_rng(1)
    layer = SoftWeightSharingConv2D(bias_initializer="random_normal", **kwargs)
    layer.build(input_shape)
    if randomize_sigma:
        # A non-identity Sigma checks the order of Sigma @ (c - p).
        sigma = np.eye(2) * 1.5 + rng.normal(0, 0.5, layer.sigma.shape)
        layer.sigma.assign(sigma.astype("float32"))
    return layer


def reference_output(layer, x, activation=lambda v: v):
    return reference.sisws(
        x,
        ops.convert_to_numpy(layer.kernel),
        ops.convert_to_numpy(layer.bias),
        ops.convert_to_numpy(layer.centroid_positions).astype(np.float64),
        ops.convert_to_numpy(layer.sigma).astype(np.float64),
        layer.filters,
        layer.strides[0],
        layer.padding,
        scaling=layer.scaling,
        kind=layer.similarity,
        normalize=layer.local_normalization,
        activation=activation,
    )


CASES = {
    "grid-shared": dict(centroids=(2, 2)),
    "grid-3x2-trainable-per-feature": dict(
        centroids=(3, 2), centroids_trainable=True, per_feature=True
    ),
    "random-shared": dict(centroids=5, seed=7),
    "random-per-feature": dict(centroids=3, per_feature=True, seed=1),
    "inv-euclidean": dict(centroids=(2, 3), similarity="inv_euclidean"),
    "inv-euclidean-unnormalized": dict(
        centroids=(2, 2), similarity="inv_euclidean", local_normalization=False
    ),
    "exp-unnormalized-scaled": dict(centroids=(2, 2), local_normalization=False, scaling=2.0),
    "stride-2-valid": dict(centroids=(2, 2), strides=2, padding="valid"),
    "stride-2-same": dict(
        centroids=(2, 2), strides=2, padding="same", per_feature=True, centroids_trainable=True
    ),
}


@pytest.mark.parametrize("implementation", ["conv", "local", "auto"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_numpy_reference(case, implementation):
    rng = np.random.default_rng(2)
    x = rng.random((2, 9, 8, 3)).astype("float32")
    layer = built_layer(
        x.shape, filters=4, kernel_size=3, implementation=implementation, **CASES[case]
    )
    expected = reference_output(layer, x)
    got = ops.convert_to_numpy(layer(x))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_activation_is_applied_after_mixing():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 6, 2)).astype("float32")
    layer = built_layer(x.shape, filters=3, kernel_size=3, activation="relu")
    expected = reference_output(layer, x, activation=lambda v: np.maximum(v, 0))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-4)
    assert (ops.convert_to_numpy(layer(x)) >= 0).all()


def test_grid_positions_are_row_major_linspace():
    grid = grid_centroids(2, 3, scaling=1.0)
    np.testing.assert_allclose(grid[:, 0], [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(grid[:, 1], [0.25, 0.5, 0.75] * 2, atol=1e-6)
    layer = built_layer(
        (1, 8, 8, 1), randomize_sigma=False, filters=2, kernel_size=3, centroids=(2, 3)
    )
    np.testing.assert_allclose(ops.convert_to_numpy(layer.centroid_positions)[0], grid, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(layer.sigma)[0, 0], np.eye(2))


def test_random_centroids_are_seeded_and_in_range():
    def centroids(seed):
        layer = built_layer(
            (1, 8, 8, 1), filters=2, kernel_size=3, centroids=6, seed=seed, scaling=2.0
        )
        return ops.convert_to_numpy(layer.centroid_positions)

    first, again, other = centroids(3), centroids(3), centroids(4)
    assert first.shape == (1, 6, 2)
    assert ((first >= 0) & (first < 2.0)).all()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_shapes_of_weights_and_similarity_map():
    layer = built_layer(
        (2, 10, 10, 3),
        filters=5,
        kernel_size=(3, 2),
        centroids=(2, 2),
        per_feature=True,
        centroids_trainable=True,
    )
    assert tuple(layer.kernel.shape) == (3, 2, 3, 20)
    assert tuple(layer.bias.shape) == (20,)
    assert tuple(layer.centroid_positions.shape) == (5, 4, 2)
    assert tuple(layer.sigma.shape) == (5, 4, 2, 2)
    similarity = ops.convert_to_numpy(layer.similarity_map())
    assert similarity.shape == (10, 10, 5, 4)
    np.testing.assert_allclose(similarity.sum(-1), 1.0, rtol=1e-5)


def test_fixed_grid_collapses_per_feature_to_shared():
    layer = SoftWeightSharingConv2D(6, 3, centroids=(2, 2), per_feature=True)
    assert layer.per_feature is False and layer.groups == 1
    random_layer = SoftWeightSharingConv2D(6, 3, centroids=4, per_feature=True)
    assert random_layer.per_feature is True and random_layer.groups == 6


@pytest.mark.parametrize(
    "kwargs",
    [dict(sigma_trainable=True), dict(centroids_trainable=True, sigma_trainable=False)],
)
def test_grid_with_a_trainable_part_keeps_per_feature(kwargs):
    # Trainable Sigmas (or centroids) can differ per filter, so the grid must not collapse.
    layer = SoftWeightSharingConv2D(6, 3, centroids=(2, 2), per_feature=True, **kwargs)
    layer.build((1, 8, 8, 1))
    assert layer.per_feature is True and layer.groups == 6
    assert tuple(layer.sigma.shape) == (6, 4, 2, 2)
    assert tuple(layer.centroid_positions.shape) == (6, 4, 2)


def test_one_by_one_grid_equals_plain_convolution():
    rng = np.random.default_rng(4)
    x = rng.random((2, 7, 7, 2)).astype("float32")
    layer = built_layer(x.shape, filters=3, kernel_size=3, centroids=(1, 1), randomize_sigma=False)
    conv = keras.layers.Conv2D(3, 3, padding="same")
    conv.build(x.shape)
    conv.set_weights([ops.convert_to_numpy(layer.kernel), ops.convert_to_numpy(layer.bias)])
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(conv(x)), rtol=1e-5, atol=1e-5
    )


def _one_sgd_step(layer, x):
    rng = np.random.default_rng(5)
    model = keras.Sequential(
        [keras.Input(x.shape[1:]), layer, keras.layers.GlobalAveragePooling2D()]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    before = {w.name: ops.convert_to_numpy(w).copy() for w in layer.weights}
    model.train_on_batch(x, rng.normal(size=(len(x), layer.filters)).astype("float32") * 10)
    return {w.name: not np.allclose(before[w.name], ops.convert_to_numpy(w)) for w in layer.weights}


@pytest.mark.parametrize("similarity", ["exp", "inv_euclidean"])
def test_gradients_reach_centroids_and_sigma_when_trainable(similarity):
    rng = np.random.default_rng(6)
    x = rng.random((4, 8, 8, 2)).astype("float32")
    layer = SoftWeightSharingConv2D(
        3, 3, centroids=(2, 2), centroids_trainable=True, similarity=similarity
    )
    changed = _one_sgd_step(layer, x)
    assert changed == {"kernel": True, "bias": True, "centroids": True, "sigma": True}
    trainable = {w.name for w in layer.trainable_weights}
    assert trainable == {"kernel", "bias", "centroids", "sigma"}


def test_no_gradient_step_for_fixed_centroids_and_sigma():
    rng = np.random.default_rng(7)
    x = rng.random((4, 8, 8, 2)).astype("float32")
    layer = SoftWeightSharingConv2D(3, 3, centroids=(2, 2))
    changed = _one_sgd_step(layer, x)
    assert changed == {"kernel": True, "bias": True, "centroids": False, "sigma": False}
    assert {w.name for w in layer.non_trainable_weights} == {"centroids", "sigma"}


def test_sigma_trainable_alone():
    layer = SoftWeightSharingConv2D(3, 3, centroids=3, sigma_trainable=True)
    layer.build((1, 8, 8, 1))
    assert {w.name for w in layer.trainable_weights} == {"kernel", "bias", "sigma"}


def test_inv_euclidean_gradient_is_finite_when_a_centroid_sits_on_a_cell():
    rng = np.random.default_rng(8)
    # A 2x2 grid on a 7x7 output puts centroids at 1/3 and 2/3, exactly on cells 2 and 4.
    x = rng.random((2, 7, 7, 1)).astype("float32")
    layer = SoftWeightSharingConv2D(
        2, 3, centroids=(2, 2), centroids_trainable=True, similarity="inv_euclidean"
    )
    _one_sgd_step(layer, x)
    assert all(np.isfinite(ops.convert_to_numpy(w)).all() for w in layer.weights)


def test_config_round_trip():
    layer = SoftWeightSharingConv2D(
        4,
        (3, 5),
        centroids=(3, 2),
        strides=2,
        padding="valid",
        activation="relu",
        centroids_trainable=True,
        sigma_trainable=False,
        per_feature=True,
        local_normalization=False,
        similarity="inv_euclidean",
        scaling=2.0,
        seed=3,
        implementation="local",
        kcp_init="shared",
        name="sws",
    )
    config = layer.get_config()
    assert SoftWeightSharingConv2D.from_config(config).get_config() == config
    # Through JSON, as a .keras file stores it: the pairs come back as lists.
    from_json = json.loads(json.dumps(config))
    assert from_json["centroids"] == [3, 2]
    clone = SoftWeightSharingConv2D.from_config(from_json)
    assert clone.get_config() == config
    assert clone.centroids == (3, 2) and clone.n_centroids == 6
    for key, value in {
        "filters": 4,
        "kernel_size": (3, 5),
        "centroids": (3, 2),
        "strides": (2, 2),
        "padding": "valid",
        "centroids_trainable": True,
        "sigma_trainable": False,
        "per_feature": True,
        "local_normalization": False,
        "similarity": "inv_euclidean",
        "scaling": 2.0,
        "seed": 3,
        "implementation": "local",
        "kcp_init": "shared",
    }.items():
        assert config[key] == value, key


def test_regularizers_add_losses_and_constraints_apply():
    rng = np.random.default_rng(4)
    x = rng.random((4, 6, 6, 1)).astype("float32")
    layer = SoftWeightSharingConv2D(
        2,
        3,
        kernel_regularizer=keras.regularizers.L2(0.5),
        bias_regularizer=keras.regularizers.L1(0.25),
        bias_initializer="ones",
        kernel_constraint=keras.constraints.NonNeg(),
        bias_constraint=keras.constraints.MaxNorm(0.1),
    )
    model = keras.Sequential([keras.Input(x.shape[1:]), layer, keras.layers.Flatten()])
    model(x)
    kernel = ops.convert_to_numpy(layer.kernel)
    losses = sorted(float(ops.convert_to_numpy(loss)) for loss in model.losses)
    np.testing.assert_allclose(losses, sorted([0.5 * np.square(kernel).sum(), 0.25 * 8]), rtol=1e-5)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    model.train_on_batch(x, np.full((4, 72), 5.0, "float32"))
    assert ops.convert_to_numpy(layer.kernel).min() >= 0
    assert np.linalg.norm(ops.convert_to_numpy(layer.bias)) <= 0.1 + 1e-6
    config = layer.get_config()
    assert config["kernel_regularizer"]["config"] == {"l2": 0.5}
    assert SoftWeightSharingConv2D.from_config(config).get_config() == config


def test_model_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(9)
    x = rng.random((3, 12, 12, 1)).astype("float32")
    inputs = keras.Input((12, 12, 1))
    hidden = SoftWeightSharingConv2D(
        4, 3, centroids=5, per_feature=True, centroids_trainable=True, activation="relu"
    )(inputs)
    hidden = LocalResponseNormalization()(hidden)
    model = keras.Model(inputs, keras.layers.Flatten()(hidden))
    model.get_layer(index=1).sigma.assign(np.full((4, 5, 2, 2), 0.3, "float32"))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), ops.convert_to_numpy(loaded(x)))
    assert isinstance(loaded.get_layer(index=1), SoftWeightSharingConv2D)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(filters=0, kernel_size=3), "filters=0"),
        (dict(filters=2, kernel_size=3, centroids=(2,)), "centroids=(2,)"),
        (dict(filters=2, kernel_size=3, centroids=(2, 0)), "centroids=(2, 0)"),
        (dict(filters=2, kernel_size=3, centroids=0), "centroids=0"),
        (dict(filters=2, kernel_size=3, centroids=(2.5, 2)), "centroids=(2.5, 2)"),
        (dict(filters=2, kernel_size=3, centroids="2x2"), "centroids='2x2'"),
        (dict(filters=2, kernel_size=3, similarity="gauss"), "similarity='gauss'"),
        (dict(filters=2, kernel_size=3, padding="causal"), "padding='causal'"),
        (dict(filters=2, kernel_size=0), "kernel_size=0"),
        (dict(filters=2, kernel_size=3, scaling=0), "scaling=0"),
        (dict(filters=2, kernel_size=3, kcp_init="same"), "kcp_init='same'"),
        (dict(filters=2, kernel_size=3, implementation="fast"), "implementation='fast'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SoftWeightSharingConv2D(**kwargs)


def test_input_without_static_size_is_refused():
    layer = SoftWeightSharingConv2D(2, 3)
    with pytest.raises(ValueError, match="static rows"):
        layer.build((None, None, None, 1))


def test_input_smaller_than_kernel_with_valid_padding_is_refused():
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        SoftWeightSharingConv2D(2, 5, padding="valid").build((1, 3, 3, 1))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_similarities_float32(policy):
    rng = np.random.default_rng(10)
    x = rng.random((2, 8, 8, 2)).astype("float32")
    reference_layer = built_layer(x.shape, filters=3, kernel_size=3, centroids=(2, 2))
    expected = ops.convert_to_numpy(reference_layer(x))
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = SoftWeightSharingConv2D(3, 3, centroids=(2, 2))
        layer.build(x.shape)
        layer.set_weights(reference_layer.get_weights())
        out = layer(x)
        assert layer.centroid_positions.dtype == "float32" and layer.sigma.dtype == "float32"
        assert ops.convert_to_numpy(layer.similarity_map()).dtype == np.float32
        assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
        np.testing.assert_allclose(
            ops.convert_to_numpy(ops.cast(out, "float32")), expected, atol=0.05
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_auto_implementation_picks_local_unless_patches_are_large():
    first = SoftWeightSharingConv2D(24, 7, centroids=(2, 2))
    first.build((1, 28, 28, 1))  # a 49-value patch vs 96 stacked outputs
    second = SoftWeightSharingConv2D(48, 3, centroids=(2, 2))
    second.build((1, 14, 14, 24))  # a 216-value patch vs 192 stacked outputs
    wide = SoftWeightSharingConv2D(128, 3, centroids=(2, 2))
    wide.build((1, 8, 8, 128))  # a 1152-value patch vs 512 stacked outputs
    assert first.uses_local and second.uses_local and not wide.uses_local


@pytest.mark.parametrize(
    "kernel_size, strides, padding",
    [((3, 5), (2, 1), "same"), ((3, 5), (2, 1), "valid"), (4, 3, "same"), (1, 1, "same")],
)
def test_implementations_agree_in_outputs_and_gradients(kernel_size, strides, padding):
    rng = np.random.default_rng(11)
    # A 1x1 convolution in front makes the SWS layer's input gradient count:
    # one SGD step must move every weight of both models the same way.
    x = rng.random((3, 9, 8, 2)).astype("float32")
    y = rng.normal(size=(3, 4)).astype("float32")
    models = []
    for implementation in ("conv", "local"):
        keras.utils.set_random_seed(5)
        model = keras.Sequential(
            [
                keras.Input(x.shape[1:]),
                keras.layers.Conv2D(3, 1),
                SoftWeightSharingConv2D(
                    4,
                    kernel_size,
                    centroids=(2, 2),
                    strides=strides,
                    padding=padding,
                    per_feature=True,
                    centroids_trainable=True,
                    bias_initializer="random_normal",
                    implementation=implementation,
                ),
                keras.layers.GlobalAveragePooling2D(),
            ]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        models.append(model)
    conv, local = models
    np.testing.assert_allclose(conv.predict(x, verbose=0), local.predict(x, verbose=0), atol=1e-5)
    for model in models:
        model.train_on_batch(x, y)
    for before, after in zip(conv.weights, local.weights):
        np.testing.assert_allclose(
            ops.convert_to_numpy(before),
            ops.convert_to_numpy(after),
            atol=1e-5,
            err_msg=before.name,
        )


@pytest.mark.parametrize("implementation", ["conv", "local"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(centroids=(2, 2)),
        dict(centroids=(3, 2), per_feature=True, centroids_trainable=True),
        dict(centroids=5, seed=2, strides=2, padding="valid"),
    ],
)
def test_shared_kcp_init_starts_as_plain_convolution(implementation, kwargs):
    rng = np.random.default_rng(12)
    x = rng.random((2, 9, 8, 3)).astype("float32")
    layer = built_layer(
        x.shape,
        filters=4,
        kernel_size=3,
        kcp_init="shared",
        implementation=implementation,
        **kwargs,
    )
    kcp_kernels = layer.kcp_kernels()  # (kh, kw, C, F, S)
    bias = ops.convert_to_numpy(layer.bias).reshape(4, layer.n_centroids)
    assert np.ptp(kcp_kernels, axis=-1).max() == 0 and np.ptp(bias, axis=-1).max() == 0
    assert np.abs(bias).max() > 0  # a random bias, so the comparison covers it
    conv = keras.layers.Conv2D(4, 3, strides=layer.strides, padding=layer.padding)
    conv.build(x.shape)
    conv.set_weights([kcp_kernels[..., 0], bias[:, 0]])
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(conv(x)), rtol=1e-5, atol=1e-6
    )


def test_independent_kcp_init_draws_different_kernels():
    layer = built_layer((1, 8, 8, 2), filters=3, kernel_size=3, centroids=(2, 2))
    assert np.ptp(layer.kcp_kernels(), axis=-1).min() > 0


@pytest.mark.parametrize("implementation", ["conv", "local"])
def test_local_kernels_are_the_mixed_kernels_the_visualizer_draws(implementation):
    layer = built_layer(
        (1, 9, 7, 2),
        filters=3,
        kernel_size=(3, 2),
        centroids=(2, 2),
        strides=(2, 1),
        per_feature=True,
        centroids_trainable=True,
        implementation=implementation,
    )
    expected = visualize.weighted_kernels(
        layer.kcp_kernels(), ops.convert_to_numpy(layer.similarity_map())
    )
    got = layer.local_kernels()
    assert got.shape == (5, 7, 3, 2, 2, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, trainable, non_trainable",
    [
        (dict(centroids=(2, 2)), 2, 2),
        (dict(centroids=(2, 2), per_feature=True, sigma_trainable=True), 3, 1),
        (dict(centroids=3, centroids_trainable=True, seed=1, implementation="conv"), 4, 0),
        (dict(centroids=(2, 1), strides=(2, 1), padding="valid", use_bias=False), 1, 2),
        (dict(centroids=(2, 2), kcp_init="shared", implementation="local"), 2, 2),
    ],
    ids=[
        "fixed-grid",
        "trainable-sigma-per-feature",
        "random-conv",
        "valid-strided-no-bias",
        "shared-init",
    ],
)
def test_keras_layer_harness(kwargs, trainable, non_trainable):
    run_layer_test(
        SoftWeightSharingConv2D,
        init_kwargs=dict(filters=3, kernel_size=3, activation="relu", **kwargs),
        input_shape=(2, 8, 7, 2),
        expected_output_shape=(2, 8, 7, 3) if kwargs.get("padding") != "valid" else (2, 3, 5, 3),
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
    )


def test_docstring_example_runs():
    globs = {"np": np, "keras": keras, "SoftWeightSharingConv2D": SoftWeightSharingConv2D}
    # The class docstring's example; the methods' docstrings have none.
    (test,) = [
        t for t in doctest.DocTestFinder().find(SoftWeightSharingConv2D, globs=globs) if t.examples
    ]
    assert doctest.DocTestRunner().run(test).failed == 0
