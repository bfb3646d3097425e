"""CoordinateChannels: the coordinate channels of CoordConv, on every backend."""

import doctest

import keras
import numpy as np
import pytest
from keras import ops

from swsl_cli import CoordinateChannels
from tests.harness import run_layer_test


def test_appends_row_and_column_coordinates_after_the_channels():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 5, 2)).astype("float32")
    out = ops.convert_to_numpy(CoordinateChannels()(x))
    assert out.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(out[..., :2], x)
    for image in out:
        np.testing.assert_allclose(image[..., 2], np.repeat([[-1], [0], [1]], 5, axis=1))
        np.testing.assert_allclose(image[..., 3], np.tile([-1, -0.5, 0, 0.5, 1], (3, 1)))


def test_a_conv_after_it_sees_the_position():
    # A 1x1 kernel reading only the column channel: a shared kernel, an output that
    # changes along the row, which no Conv2D on the image alone can give on a blank input.
    inputs = keras.Input((4, 6, 1))
    conv = keras.layers.Conv2D(1, 1, use_bias=False)
    model = keras.Model(inputs, conv(CoordinateChannels()(inputs)))
    conv.set_weights([np.array([0.0, 0.0, 1.0], "float32").reshape(1, 1, 3, 1)])
    out = ops.convert_to_numpy(model(np.zeros((1, 4, 6, 1), "float32")))[0, ..., 0]
    np.testing.assert_allclose(out, np.tile(np.linspace(-1, 1, 6), (4, 1)), atol=1e-6)


def test_model_survives_save_and_load(tmp_path):
    inputs = keras.Input((5, 5, 1))
    hidden = keras.layers.Conv2D(2, 3)(CoordinateChannels(name="coords")(inputs))
    model = keras.Model(inputs, hidden)
    x = np.random.default_rng(1).random((2, 5, 5, 1)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("coords"), CoordinateChannels)
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), ops.convert_to_numpy(loaded(x)))


def test_mixed_precision_keeps_the_compute_dtype():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        out = CoordinateChannels()(np.zeros((1, 3, 3, 1), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_input_without_static_size_is_refused():
    with pytest.raises(ValueError, match="static rows and cols"):
        CoordinateChannels().build((None, None, 4, 1))


def test_keras_layer_harness():
    run_layer_test(
        CoordinateChannels,
        init_kwargs={},
        input_shape=(2, 4, 3, 2),
        expected_output_shape=(2, 4, 3, 4),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        supports_masking=False,
    )


def test_docstring_example_runs():
    globs = {"np": np, "keras": keras, "CoordinateChannels": CoordinateChannels}
    (test,) = [
        t for t in doctest.DocTestFinder().find(CoordinateChannels, globs=globs) if t.examples
    ]
    assert doctest.DocTestRunner().run(test).failed == 0
