"""FusedAdam against Keras's Adam; its fused kernel; two replicas; saving and loading it."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from swsl_cli.layers.optimizers import FusedAdam

BACKEND = keras.backend.backend()


def trained(optimizer, steps=5):
    """A small model after `steps` steps of `optimizer` on fixed data, same start every time."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, "relu"), keras.layers.Dense(3)]
    )
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4 * steps, 6)), rng.normal(size=(4 * steps, 3))
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return model


def arguments():
    # A schedule, EMA and non-default betas: every argument the kernel takes is exercised.
    schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=5)
    return dict(learning_rate=schedule, beta_1=0.8, beta_2=0.95, epsilon=1e-3, use_ema=True)


def test_updates_equal_keras_adam():
    fused, plain = trained(FusedAdam(**arguments())), trained(keras.optimizers.Adam(**arguments()))
    pairs = zip(
        fused.weights + fused.optimizer.variables, plain.weights + plain.optimizer.variables
    )
    for got, expected in pairs:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected), rtol=1e-5,
            atol=1e-6, err_msg=got.path,
        )  # fmt: skip


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused kernel is TensorFlow's")
def test_tensorflow_takes_the_fused_kernel():
    import tensorflow as tf

    variable = keras.Variable(np.ones(3, "float32"))
    optimizer = FusedAdam()
    optimizer.build([variable])
    step = tf.function(lambda: optimizer.apply([tf.ones(3)], [variable]))
    kinds = {op.type for op in step.get_concrete_function().graph.get_operations()}
    assert "ResourceApplyAdam" in kinds
    step()
    # Adam's first step moves every weight by the learning rate against the gradient's sign.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), 1 - 0.001, rtol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_each_replica_of_a_mirrored_model_updates_as_keras_adam():
    """Under `MirroredStrategy` the fused kernel must update each replica's own copy of the
    weights and slots; two logical CPUs stand in for two devices (a fresh process, as they
    must be configured before TensorFlow starts)."""
    script = textwrap.dedent("""
        import numpy as np
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from swsl_cli.layers.optimizers import FusedAdam

        def replicas(optimizer_class):
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            with strategy.scope():
                keras.utils.set_random_seed(0)
                model = keras.Sequential(
                    [keras.Input((6,)), keras.layers.Dense(8, "relu"), keras.layers.Dense(3)]
                )
                model.compile(optimizer=optimizer_class(0.05, use_ema=True), loss="mse")
            rng = np.random.default_rng(1)
            x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 3))
            model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
            return [
                [np.asarray(copy) for copy in variable.value.values]
                for variable in model.weights + model.optimizer.variables
            ]

        for fused, plain in zip(replicas(FusedAdam), replicas(keras.optimizers.Adam)):
            assert len(fused) == 2
            for got, expected in zip(fused, plain):
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_saved_model_reloads_with_its_optimizer_state(tmp_path):
    model = trained(FusedAdam(**arguments()))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded.optimizer) is FusedAdam
    assert loaded.optimizer.beta_1 == 0.8 and loaded.optimizer.use_ema
    for got, expected in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected)
        )


def test_the_weight_average_warms_up_as_tensorflows_moving_average():
    """With `ema_warmup`, step t averages with momentum min(m, (1 + t) / (20 + t)), the
    first step copying the weights; checked against the same average kept in numpy."""
    variable = keras.Variable(np.zeros(2, "float32"))
    optimizer = FusedAdam(learning_rate=0.1, use_ema=True, ema_momentum=0.9, ema_warmup=True)
    optimizer.build([variable])
    average, momenta = None, []
    for step in range(180):
        optimizer.apply([np.array([1.0, -2.0], "float32")], [variable])
        weights = keras.ops.convert_to_numpy(variable)
        momentum = 0.0 if step == 0 else min(0.9, (1 + step) / (20 + step))
        average = weights if average is None else momentum * average + (1 - momentum) * weights
        momenta.append(momentum)
        got = keras.ops.convert_to_numpy(optimizer._model_variables_moving_average[0])
        np.testing.assert_allclose(got, average, rtol=1e-5, atol=1e-6)
    assert momenta[1] == pytest.approx(2 / 21) and momenta[169] < 0.9 == momenta[170]  # the cap
    assert float(keras.ops.convert_to_numpy(optimizer.ema_momentum_at(1000))) == pytest.approx(0.9)


def test_without_warmup_the_average_is_keras_own():
    plain = trained(keras.optimizers.Adam(use_ema=True, ema_momentum=0.9))
    fused = trained(FusedAdam(use_ema=True, ema_momentum=0.9))
    for got, expected in zip(fused.optimizer.variables, plain.optimizer.variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected), rtol=1e-5,
            atol=1e-6,
        )  # fmt: skip


def test_the_warmup_is_saved_and_a_model_saved_without_it_keeps_keras_average(tmp_path):
    model = trained(FusedAdam(use_ema=True, ema_warmup=True))
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").optimizer.ema_warmup is True
    config = FusedAdam(use_ema=True).get_config()
    del config["ema_warmup"]  # as 0.3.1 saved it
    assert FusedAdam.from_config(config).ema_warmup is False
