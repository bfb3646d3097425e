"""LocallyConnected2D against a numpy reference, Conv2D, Keras 2's layer, and Keras's harness.

Uses only keras and numpy (tf_keras where installed), so it runs on every
backend: `make test` runs it under TensorFlow, torch and JAX.
"""

import doctest
import json

import keras
import numpy as np
import pytest
from keras import ops

from swsl_cli import LocallyConnected2D
from swsl_cli.layers.cells import gather_rows
from tests import reference
from tests.harness import run_layer_test

PADDINGS = ("same", "valid")
STRIDES = ((1, 1), (2, 2), (2, 1))
KERNEL_SIZES = (3, 2, (2, 4))  # odd, even, and a mixed non-square one


def built_layer(input_shape, **kwargs):
    layer = LocallyConnected2D(bias_initializer="random_normal", **kwargs)
    layer.build(input_shape)
    return layer


def gradients(loss, tensors):
    """`d loss(*tensors) / d tensors` as numpy, with the running backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(t) for t in tensors]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = loss(*tensors)
        return [g.numpy() for g in tape.gradient(value, tensors)]
    if backend == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(loss, range(len(tensors)))(*tensors)]
    import torch

    tensors = [torch.tensor(t, requires_grad=True) for t in tensors]
    loss(*tensors).backward()
    return [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("kernel_size", KERNEL_SIZES)
@pytest.mark.parametrize("strides", STRIDES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_matches_numpy_reference(padding, strides, kernel_size):
    rng = np.random.default_rng(1)
    x = rng.random((2, 9, 8, 3)).astype("float32")
    layer = built_layer(
        x.shape, filters=4, kernel_size=kernel_size, strides=strides, padding=padding
    )
    expected = reference.locally_connected(
        x, layer.local_kernels(), ops.convert_to_numpy(layer.bias), strides, padding
    )
    got = ops.convert_to_numpy(layer(x))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", (3, (2, 4)))
@pytest.mark.parametrize("strides", STRIDES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_one_kernel_everywhere_equals_conv2d(padding, strides, kernel_size):
    # Checks the padding convention against Keras's own Conv2D, not our reading of it.
    rng = np.random.default_rng(2)
    x = rng.random((2, 9, 8, 3)).astype("float32")
    conv = keras.layers.Conv2D(
        4, kernel_size, strides=strides, padding=padding, bias_initializer="random_normal"
    )
    conv.build(x.shape)
    kernel, bias = (ops.convert_to_numpy(w) for w in conv.weights)
    layer = built_layer(
        x.shape, filters=4, kernel_size=kernel_size, strides=strides, padding=padding
    )
    rows, cols = layer.compute_output_shape(x.shape)[1:3]
    layer.set_weights(
        [
            np.broadcast_to(kernel, (rows, cols, *kernel.shape)),
            np.broadcast_to(bias, (rows, cols, 4)),
        ]
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(conv(x)), rtol=1e-5, atol=1e-5
    )


# (3, 3) strides with a (3, 2) kernel leave input columns and a row that no cell reads.
@pytest.mark.parametrize(
    "padding, strides", [("same", (2, 1)), ("valid", (1, 2)), ("same", (1, 1)), ("valid", (3, 3))]
)
def test_gradients_match_numpy(padding, strides):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 6, 2)).astype("float32")
    layer = built_layer(x.shape, filters=3, kernel_size=(3, 2), strides=strides, padding=padding)
    kernel = layer.local_kernels()
    upstream = rng.normal(size=layer.compute_output_shape(x.shape)).astype("float32")

    def loss(inputs, kernel, bias):
        # The layer's own computation with the weights as arguments, so autodiff sees them.
        stateless = layer.stateless_call([kernel, bias], [], inputs)[0]
        return ops.sum(ops.multiply(stateless, ops.convert_to_tensor(upstream)))

    got = gradients(loss, [x, kernel, ops.convert_to_numpy(layer.bias)])
    expected = reference.locally_connected_gradients(x, kernel, upstream, strides, padding)
    for name, g, e in zip(("inputs", "kernel", "bias"), got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)


def test_patch_gather_gradient_is_the_scatter_add_of_autodiff():
    rng = np.random.default_rng(5)
    rows = 6
    # Row 6 reads the appended zeros; rows 2 and 5 are never read, row 0 three times.
    indices = np.array([0, 3, 6, 1, 0, 4, 6, 3, 0])
    values = rng.normal(size=(rows, 4)).astype("float32")
    upstream = rng.normal(size=(indices.size, 4)).astype("float32")
    gather = gather_rows(indices, rows)

    def loss(values):
        return ops.sum(ops.multiply(gather(values), ops.convert_to_tensor(upstream)))

    padded = np.concatenate([values, np.zeros((1, 4), "float32")])
    np.testing.assert_array_equal(ops.convert_to_numpy(gather(values)), padded[indices])
    expected = np.zeros((rows + 1, 4), "float32")
    np.add.at(expected, indices, upstream)
    (got,) = gradients(loss, [values])
    np.testing.assert_allclose(got, expected[:rows], rtol=1e-6, atol=1e-6)


def test_weight_layout_gives_each_cell_a_conv2d_kernel():
    layer = built_layer((1, 10, 9, 3), filters=5, kernel_size=(3, 2), strides=(2, 1))
    assert tuple(layer.kernel.shape) == (4, 8, 3, 2, 3, 5)
    assert tuple(layer.bias.shape) == (4, 8, 5)
    np.testing.assert_array_equal(layer.local_kernels(), ops.convert_to_numpy(layer.kernel))
    assert layer.count_params() == 4 * 8 * (3 * 2 * 3 * 5 + 5)


def test_config_round_trip_through_json():
    layer = LocallyConnected2D(
        4,
        (3, 2),
        strides=(2, 1),
        padding="SAME",
        activation="relu",
        use_bias=False,
        kernel_initializer="he_normal",
        bias_initializer="ones",
        kernel_regularizer=keras.regularizers.L2(0.01),
        bias_regularizer="l1",
        activity_regularizer="l2",
        kernel_constraint=keras.constraints.MaxNorm(2.0),
        bias_constraint="non_neg",
        name="local",
    )
    config = layer.get_config()
    clone = LocallyConnected2D.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    assert clone.kernel_size == (3, 2) and clone.strides == (2, 1) and clone.padding == "same"
    assert isinstance(clone.kernel_regularizer, keras.regularizers.L2)
    assert clone.kernel_regularizer.l2 == pytest.approx(0.01)
    assert isinstance(clone.kernel_constraint, keras.constraints.MaxNorm)
    assert isinstance(clone.bias_constraint, keras.constraints.NonNeg)
    assert isinstance(clone.activity_regularizer, keras.regularizers.L2)
    assert config["activation"] == "relu" and config["use_bias"] is False


def test_regularizers_add_losses_and_constraints_apply():
    rng = np.random.default_rng(4)
    x = rng.random((4, 6, 6, 1)).astype("float32")
    layer = LocallyConnected2D(
        2,
        3,
        kernel_regularizer=keras.regularizers.L2(0.5),
        kernel_constraint=keras.constraints.NonNeg(),
    )
    model = keras.Sequential([keras.Input(x.shape[1:]), layer, keras.layers.Flatten()])
    model(x)
    kernel = ops.convert_to_numpy(layer.kernel)
    assert len(model.losses) == 1
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.losses[0]), 0.5 * np.square(kernel).sum(), rtol=1e-5
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    model.train_on_batch(x, np.full((4, 32), 5.0, "float32"))
    assert ops.convert_to_numpy(layer.kernel).min() >= 0


def test_model_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.random((3, 12, 12, 1)).astype("float32")
    inputs = keras.Input((12, 12, 1))
    hidden = LocallyConnected2D(
        4, 3, strides=(2, 1), padding="same", activation="relu", bias_initializer="random_normal"
    )(inputs)
    model = keras.Model(inputs, keras.layers.Flatten()(hidden))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), ops.convert_to_numpy(loaded(x)))
    assert isinstance(loaded.get_layer(index=1), LocallyConnected2D)
    np.testing.assert_array_equal(
        loaded.get_layer(index=1).local_kernels(), model.get_layer(index=1).local_kernels()
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    rng = np.random.default_rng(6)
    x = rng.random((2, 8, 8, 2)).astype("float32")
    reference_layer = built_layer(x.shape, filters=3, kernel_size=3, padding="same")
    expected = ops.convert_to_numpy(reference_layer(x))
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = LocallyConnected2D(3, 3, padding="same")
        layer.build(x.shape)
        layer.set_weights(reference_layer.get_weights())
        out = layer(x)
        assert layer.kernel.dtype == "float32" and layer.bias.dtype == "float32"
        assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
        np.testing.assert_allclose(
            ops.convert_to_numpy(ops.cast(out, "float32")), expected, atol=0.05
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(filters=0, kernel_size=3), "filters=0"),
        (dict(filters=2, kernel_size=(3,)), r"kernel_size=\(3,\)"),
        (dict(filters=2, kernel_size=3, strides=0), "strides=0"),
        (dict(filters=2, kernel_size=3, padding="causal"), "padding='causal'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LocallyConnected2D(**kwargs)


def test_input_without_static_size_or_too_small_is_refused():
    with pytest.raises(ValueError, match="static rows"):
        LocallyConnected2D(2, 3).build((None, None, 5, 1))
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        LocallyConnected2D(2, 5).build((1, 3, 3, 1))


@pytest.mark.parametrize(
    "kwargs, output_shape",
    [
        (dict(), (2, 6, 5, 3)),
        (dict(padding="same", strides=(2, 1), activation="relu"), (2, 4, 7, 3)),
        (dict(kernel_size=2, use_bias=False, kernel_regularizer="l2"), (2, 7, 6, 3)),
    ],
    ids=["valid", "same-strided", "even-kernel-no-bias"],
)
def test_keras_layer_harness(kwargs, output_shape):
    run_layer_test(
        LocallyConnected2D,
        init_kwargs={"filters": 3, "kernel_size": 3, **kwargs},
        input_shape=(2, 8, 7, 2),
        expected_output_shape=output_shape,
        expected_num_trainable_weights=1 if kwargs.get("use_bias") is False else 2,
        expected_num_non_trainable_weights=0,
        expected_num_losses=1 if "kernel_regularizer" in kwargs else 0,
    )


def keras2_kernel(kernel, implementation, input_size, strides, offset=(0, 0)):
    """Our `(H', W', kh, kw, C, F)` kernel in Keras 2's layout for `implementation`.

    `offset` is the `(top, left)` padding: window `(i, j)` starts at input pixel
    `(i * sh - top, j * sw - left)`; taps on the padding have no weight there.
    """
    out_rows, out_cols, kh, kw, channels, filters = kernel.shape
    if implementation == 1:
        return kernel.reshape(out_rows * out_cols, kh * kw * channels, filters)
    # 2 and 3 hold a dense (rows, cols, C, H', W', F) matrix (3 only its nonzero entries).
    rows, cols = input_size
    dense = np.zeros((rows, cols, channels, out_rows, out_cols, filters), kernel.dtype)
    for i, j, ti, tj in np.ndindex(out_rows, out_cols, kh, kw):
        r, c = i * strides[0] + ti - offset[0], j * strides[1] + tj - offset[1]
        if 0 <= r < rows and 0 <= c < cols:
            dense[r, c, :, i, j, :] = kernel[i, j, ti, tj]
    return dense


KERAS2_CASES = [
    (implementation, "valid", strides, kernel_size)
    for implementation in (1, 2, 3)
    for strides, kernel_size in [((1, 1), 3), ((2, 2), (2, 4)), ((2, 1), 2)]
] + [
    # Keras 2 pads "same" by kernel // 2 before; Conv2D (and this layer) by half
    # of what the stride and size leave over, the odd pixel after: the two
    # always agree only for odd kernels at stride 1.
    (implementation, "same", (1, 1), kernel_size)
    for implementation in (2, 3)
    for kernel_size in (3, (3, 5))
]


@pytest.mark.parametrize("implementation, padding, strides, kernel_size", KERAS2_CASES)
def test_same_weights_give_keras2_locally_connected2d_outputs(
    implementation, padding, strides, kernel_size
):
    tf_keras = pytest.importorskip(
        "tf_keras", reason="tf_keras (Keras 2) is not installed: `pip install tf_keras`"
    )
    rng = np.random.default_rng(7)
    x = rng.random((2, 9, 8, 3)).astype("float32")
    ours = built_layer(
        x.shape, filters=4, kernel_size=kernel_size, strides=strides, padding=padding
    )
    kernel, bias = ours.local_kernels(), ops.convert_to_numpy(ours.bias)
    theirs = tf_keras.layers.LocallyConnected2D(
        4, kernel_size, strides=strides, padding=padding, implementation=implementation
    )
    theirs.build(x.shape)
    offset = (0, 0) if padding == "valid" else tuple(k // 2 for k in kernel.shape[2:4])
    dense = keras2_kernel(kernel, implementation, x.shape[1:3], strides, offset)
    if implementation == 3:
        rows, cols = kernel.shape[:2]
        matrix = dense.transpose(3, 4, 5, 0, 1, 2).reshape(rows * cols * 4, -1)
        dense = matrix[tuple(np.array(theirs.kernel_idxs).T)]
    theirs.set_weights([dense, bias])
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)), theirs(x).numpy(), rtol=1e-5, atol=1e-5
    )


def test_docstring_example_runs():
    globs = {"np": np, "keras": keras, "LocallyConnected2D": LocallyConnected2D}
    # The class docstring's example; the methods' docstrings have none.
    (test,) = [
        t for t in doctest.DocTestFinder().find(LocallyConnected2D, globs=globs) if t.examples
    ]
    assert doctest.DocTestRunner().run(test).failed == 0


@pytest.mark.parametrize("initializer", ["glorot_uniform", "he_uniform"])
def test_fan_based_initializers_count_one_cells_fans_as_conv2d(initializer):
    layer = built_layer((1, 12, 12, 2), filters=6, kernel_size=3, kernel_initializer=initializer)
    kernel = layer.local_kernels()
    fan_in, fan_out = 3 * 3 * 2, 3 * 3 * 6  # Conv2D's fans for a (3, 3, 2, 6) kernel
    limit = np.sqrt(6 / (fan_in + fan_out) if initializer == "glorot_uniform" else 6 / fan_in)
    # Uniform in [-limit, limit]: 6000 draws reach close to both ends.
    assert np.abs(kernel).max() <= limit + 1e-6
    assert np.abs(kernel).max() > 0.95 * limit
    assert not np.allclose(kernel[0, 0], kernel[9, 9])
    assert layer.get_config()["kernel_initializer"]["config"].get("input_axes") is None


def test_initializer_with_its_own_axes_is_left_alone():
    initializer = keras.initializers.VarianceScaling(
        1.0, "fan_in", "uniform", input_axes=[0, 1, 2, 3, 4], output_axes=[5]
    )
    layer = built_layer((1, 6, 6, 1), filters=2, kernel_size=3, kernel_initializer=initializer)
    limit = np.sqrt(3 / (4 * 4 * 3 * 3))  # fan_in over the whole kernel: 144
    assert np.abs(layer.local_kernels()).max() <= limit + 1e-6
