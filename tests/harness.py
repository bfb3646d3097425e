"""Keras's own layer test harness, callable from plain pytest functions.

`keras.src.testing.TestCase.run_layer_test` is the harness Keras tests its
own layers with (Keras 3 has no public alias for it): it checks the config
round trip, weight counts after `build` and after a symbolic call, an eager
call, one compiled training step (`fit`, jitted on TF and JAX) and the
dtypes under `mixed_float16` (skipped by Keras on torch without CUDA).
"""

import warnings

from keras.src.testing import TestCase


def run_layer_test(layer_cls, **kwargs) -> None:
    """Runs the harness on `layer_cls`; no layer of this package draws random numbers in `call`."""
    kwargs.setdefault("expected_num_seed_generators", 0)
    with warnings.catch_warnings():
        # The harness fits on a generator with fit's default shuffle=True, and
        # fits weightless layers (LRN) too.
        warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
        warnings.filterwarnings("ignore", message="The model does not have any trainable weights")
        TestCase("run_layer_test").run_layer_test(layer_cls, **kwargs)
