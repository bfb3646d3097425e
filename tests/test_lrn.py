"""LocalResponseNormalization against the formula, and Keras's layer harness.

Runs on every backend: `make test` runs it under TensorFlow, torch and JAX.
"""

import doctest

import keras
import numpy as np
import pytest
from keras import ops

from swsl_cli.layers import lrn
from swsl_cli.layers.lrn import LocalResponseNormalization
from tests import reference
from tests.harness import run_layer_test


@pytest.mark.parametrize("radius, alpha, beta", [(5, 1e-4, 0.75), (2, 0.5, 0.75), (0, 1.0, 1.5)])
def test_matches_formula(radius, alpha, beta):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 9)).astype("float32") * 3
    layer = LocalResponseNormalization(depth_radius=radius, alpha=alpha, beta=beta)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x)),
        reference.local_response_normalization(x, radius, 1.0, alpha, beta),
        rtol=1e-5,
    )


def test_config_round_trip():
    layer = LocalResponseNormalization(depth_radius=2, bias=2.0, alpha=0.5, beta=0.6, name="n")
    config = layer.get_config()
    assert LocalResponseNormalization.from_config(config).get_config() == config
    assert {k: config[k] for k in ("depth_radius", "bias", "alpha", "beta")} == {
        "depth_radius": 2,
        "bias": 2.0,
        "alpha": 0.5,
        "beta": 0.6,
    }


def test_docstring_example_runs():
    finder = doctest.DocTestFinder()
    globs = {"np": np, "keras": keras, "LocalResponseNormalization": LocalResponseNormalization}
    (test,) = finder.find(LocalResponseNormalization, globs=globs)
    assert test.examples
    result = doctest.DocTestRunner().run(test)
    assert result.failed == 0


def test_still_importable_from_layers_module():
    from swsl_cli.layers import LocalResponseNormalization as from_layers

    assert from_layers is lrn.LocalResponseNormalization


@pytest.mark.parametrize("bad", [-1, 2.5, "5"])
def test_bad_depth_radius_is_refused(bad):
    with pytest.raises(ValueError, match=f"depth_radius={bad!r}"):
        LocalResponseNormalization(depth_radius=bad)


def test_keras_layer_harness():
    run_layer_test(
        LocalResponseNormalization,
        init_kwargs={"depth_radius": 2, "alpha": 0.1},
        input_shape=(2, 3, 3, 6),
        expected_output_shape=(2, 3, 3, 6),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
    )
