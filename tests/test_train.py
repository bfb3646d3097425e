"""End to end on real MNIST (small subsets): outputs, TensorBoard events, resume, signals, NaN, tf.distribute."""

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from swsl_cli.layers import cell_ops
from swsl_cli.layers.optimizers import FusedAdam
from swsl_cli.runner import data, runs, train
from swsl_cli.runner.augment import Augmentation
from swsl_cli.runner.config import Config
from swsl_cli.runner.model import build_model

SMALL = dict(max_train_examples=384, max_test_examples=128, batch_size=64, quiet=True)


def config_for(tmp_path, mnist_dir, **flags):
    return Config(logdir=str(tmp_path / "tb"), data_dir=str(mnist_dir), **{**SMALL, **flags})


def metrics_of(tmp_path, run_name):
    return json.loads((tmp_path / "tb" / run_name / "metrics.json").read_text())


def events(run_dir, run):
    accumulator = EventAccumulator(str(run_dir / run), size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, mnist_dir):
    tmp_path = tmp_path_factory.mktemp("e2e")
    config = config_for(
        tmp_path,
        mnist_dir,
        n_epochs=2,
        seed=1,
        color_coding=True,
        log_verbosity=3,
        centroids_trainable=True,
        run_name="e2e",
    )
    status = train.run(config)
    return status, tmp_path / "tb" / "e2e", tmp_path


def test_run_completes_with_metrics(full_run):
    status, run_dir, tmp_path = full_run
    assert status == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["device"] == f"no GPU: training on CPU; {cell_ops.status()}"
    assert metrics["flags"]["seed"] == 1 and metrics["flags"]["centroids_trainable"] is True
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for epoch in metrics["epochs"]:
        assert set(epoch) >= {
            "loss",
            "accuracy",
            "val_loss",
            "val_accuracy",
            "seconds",
            "images_per_second",
        }
        assert epoch["images_per_second"] > 0
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    assert metrics["test_loss"] == pytest.approx(metrics["epochs"][-1]["val_loss"], rel=1e-5)
    assert metrics["epochs"][1]["loss"] < metrics["epochs"][0]["loss"]
    assert metrics["wall_time_s"] > 0 and metrics["replicas"] == 1


def scalars(accumulator, tag):
    return [float(tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]


def test_every_event_of_a_run_is_in_its_folder(full_run):
    _, run_dir, _ = full_run
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == [
        "checkpoints",
        "kernel_images",
    ]
    assert len([p for p in run_dir.iterdir() if p.name.startswith("events.out")]) == 1


def test_scalars_in_tensorboard(full_run):
    _, run_dir, _ = full_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    accumulator = events(run_dir, ".")
    for split, prefix in (("train", ""), ("test", "val_")):
        for name in ("loss", "accuracy"):
            expected = [e[prefix + name] for e in metrics["epochs"]]
            np.testing.assert_allclose(scalars(accumulator, f"{name}/{split}"), expected, rtol=1e-5)
    assert [e.step for e in accumulator.Tensors("loss/train")] == [1, 2]  # the epoch numbers
    speeds = [e["images_per_second"] for e in metrics["epochs"]]
    np.testing.assert_allclose(scalars(accumulator, "speed/images_per_second"), speeds, rtol=1e-5)
    rates = scalars(accumulator, "optimizer/learning_rate")
    assert len(rates) == 2 and rates[1] == pytest.approx(0.0, abs=1e-9)  # cosine to 0 at the end
    # The last test point is the test evaluation: the final figures need no chart of their own.
    assert scalars(accumulator, "accuracy/test")[-1] == pytest.approx(metrics["test_accuracy"])
    assert not {"test_accuracy", "best_val_accuracy", "parameters"} & set(
        accumulator.Tags()["tensors"]
    )


def test_hparams_of_the_run_in_its_folder(full_run):
    _, run_dir, _ = full_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    content = events(run_dir, ".").PluginTagToContent("hparams")
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    assert start.group_name == "e2e"
    assert start.hparams["parameters"].number_value == metrics["parameters"]["total"]
    assert start.hparams["centroids_trainable"].bool_value is True


def test_kernel_images_every_epoch(full_run):
    _, run_dir, _ = full_run
    accumulator = events(run_dir, ".")
    tags = accumulator.Tags()["tensors"]
    for layer in ("sws1", "sws2"):
        for tag in ("kernels", "kernels_color", "centroids", "specialisation"):
            steps = accumulator.Tensors(f"pictures/{layer}/{tag}")
            assert [e.step for e in steps] == [1, 2]
            encoded = tf.make_ndarray(steps[-1].tensor_proto)
            width, height = int(encoded[0]), int(encoded[1])
            assert len(encoded) == 3  # one picture per layer and kind
            assert tf.io.decode_png(encoded[2]).numpy().shape == (height, width, 3)
        assert len(scalars(accumulator, f"specialisation/{layer}")) == 2
    # verbosity >= 1: gradients; 2: weights; 3: activations
    assert any(t.startswith("weights/") and t.endswith(".gradient") for t in tags)
    assert any(t.startswith("weights/") and t.endswith(".kernel") for t in tags)
    assert "outputs/sws1" in tags and "weights/sws1.centroid_y" in tags


def test_kernel_pngs_and_reloadable_model(full_run, mnist_dir):
    _, run_dir, _ = full_run
    names = sorted(p.name for p in (run_dir / "kernel_images").iterdir())
    kinds = ("kernels", "kernels_full", "specialisation", "kcp", "centroids", "kernels_color",
             "kernels_color_full")  # fmt: skip
    assert names == sorted(f"{layer}_{kind}.png" for layer in ("sws1", "sws2") for kind in kinds)
    kcp = tf.io.decode_png((run_dir / "kernel_images" / "sws1_kcp.png").read_bytes()).numpy()
    assert kcp.shape == (4 * 8 * 3, 24 * 8 * 3, 1)  # 4 KCPs x 1 input x (7+1) px, 24 filters
    model = keras.models.load_model(run_dir / "model.keras")
    raw = data.load_mnist(str(mnist_dir)).x_test[:128]  # uint8 pixels (N, 28, 28, 1), as stored
    checkpoint = keras.models.load_model(run_dir / "checkpoints" / "epoch-2" / "model.keras")
    # The final model is the last checkpoint's weight average (--ema).
    checkpoint.optimizer.finalize_variable_values(checkpoint.trainable_variables)
    predictions = model.predict(raw, verbose=0)
    np.testing.assert_allclose(predictions, checkpoint.predict(raw, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(
        predictions, model.predict(raw.astype("float32"), verbose=0), rtol=1e-6
    )
    # The saved model scales raw pixels itself: its accuracy on them is the run's test accuracy.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    labels = data.load_mnist(str(mnist_dir)).y_test[:128]
    assert np.mean(predictions.argmax(-1) == labels) == pytest.approx(metrics["test_accuracy"])
    state = json.loads((run_dir / "checkpoints" / "epoch-2" / "state.json").read_text())
    assert state["epoch"] == 2 and state["data_fingerprint"] == metrics["data_fingerprint"]


def test_the_documented_reload_snippet_runs_as_written(full_run):
    _, run_dir, _ = full_run
    text = (Path(__file__).resolve().parent.parent / "docs" / "outputs.md").read_text()
    (snippet,) = [
        block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "load_model" in block
    ]
    # Its two paths point at this run and, relative to the repository, the bundled MNIST.
    snippet = snippet.replace("tensorboard/<run_name>/model.keras", str(run_dir / "model.keras"))
    snippet = snippet.replace(
        "model.predict(images[:5])", "print(model.predict(images[:5], verbose=0)"
    )
    snippet = snippet.replace(".argmax(-1)  ", ".argmax(-1))  ", 1)
    result = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("[") and len(result.stdout.split()) == 5


def test_same_seed_same_metrics_and_resume_matches_uninterrupted(tmp_path, mnist_dir, monkeypatch):
    base = config_for(tmp_path, mnist_dir, n_epochs=2, seed=7)
    assert train.run(dataclasses.replace(base, run_name="a")) == 0
    assert train.run(dataclasses.replace(base, run_name="b")) == 0
    # Run c is interrupted by SIGINT once epoch 1 is saved, then resumed: the learning
    # rate schedule, the weight average and the dropout masks continue where they were.
    commit_epoch = train.EpochRecorder.on_epoch_end

    def interrupted_after_epoch_1(self, epoch, logs=None):
        commit_epoch(self, epoch, logs)
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train.EpochRecorder, "on_epoch_end", interrupted_after_epoch_1)
    assert train.run(dataclasses.replace(base, run_name="c")) == 130
    monkeypatch.setattr(train.EpochRecorder, "on_epoch_end", commit_epoch)
    assert [e["epoch"] for e in metrics_of(tmp_path, "c")["epochs"]] == [1]
    resumed = dataclasses.replace(base, run_name="c", resume=True, seed=None)
    assert train.run(resumed, frozenset({"resume", "run_name"})) == 0
    a, b, c = (metrics_of(tmp_path, name) for name in "abc")
    assert a["epochs"] == [
        dict(e, seconds=x["seconds"], images_per_second=x["images_per_second"])
        for e, x in zip(b["epochs"], a["epochs"])
    ]
    assert (a["test_loss"], a["test_accuracy"]) == (b["test_loss"], b["test_accuracy"])
    assert c["test_loss"] == a["test_loss"] and c["test_accuracy"] == a["test_accuracy"]
    assert [e["epoch"] for e in c["epochs"]] == [1, 2]


def test_a_gap_head_run_resumes_with_its_head_and_refuses_another(tmp_path, mnist_dir, monkeypatch):
    base = config_for(tmp_path, mnist_dir, n_epochs=2, seed=5, head="gap", run_name="gap")
    commit_epoch = train.EpochRecorder.on_epoch_end

    def interrupted_after_epoch_1(self, epoch, logs=None):
        commit_epoch(self, epoch, logs)
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train.EpochRecorder, "on_epoch_end", interrupted_after_epoch_1)
    assert train.run(base) == 130
    monkeypatch.setattr(train.EpochRecorder, "on_epoch_end", commit_epoch)
    saved = json.loads((tmp_path / "tb" / "gap" / "config.json").read_text())
    assert saved["head"] == "gap"
    dense = dataclasses.replace(base, resume=True, head="dense")
    with pytest.raises(train.runs.RunError, match="--head dense contradicts the saved run's gap"):
        train.run(dense, frozenset({"resume", "run_name", "head"}))
    resumed = Config(logdir=base.logdir, run_name="gap", resume=True, quiet=True)
    assert train.run(resumed, frozenset({"logdir", "run_name", "resume", "quiet"})) == 0
    metrics = metrics_of(tmp_path, "gap")
    assert metrics["status"] == "completed" and metrics["flags"]["head"] == "gap"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    model = keras.models.load_model(tmp_path / "tb" / "gap" / "model.keras")
    assert model.get_layer("gap") and "dense1" not in [layer.name for layer in model.layers]


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    config = Config(learning_rate=0.004, warmup_epochs=0.5, n_epochs=4)
    schedule = train.learning_rate_schedule(config, steps=100)
    rates = [float(schedule(step)) for step in range(401)]
    assert rates[0] == 0 and rates[25] == pytest.approx(0.002) and rates[50] == pytest.approx(0.004)
    assert rates[50 + 175] == pytest.approx(0.002)  # half-way through the cosine
    assert rates[400] == pytest.approx(0, abs=1e-9)
    assert all(a < b for a, b in zip(rates[:50], rates[1:51]))
    assert all(a > b for a, b in zip(rates[50:400], rates[51:401]))
    no_warmup = train.learning_rate_schedule(dataclasses.replace(config, warmup_epochs=0), 100)
    assert float(no_warmup(0)) == pytest.approx(0.004)


def test_the_original_flags_give_its_constant_rate_and_no_weight_average():
    from swsl_cli.runner.cli import parse_args

    config = parse_args(
        "--lr_schedule exponential --learning_rate 0.01 --lr_decay 1 --max_shift 0 --ema 0 "
        "--max_rotation 0 --max_zoom 0 --kcp_init independent".split()
    )
    model = build_model(dataclasses.replace(config, n_filters=(2, 2)))
    assert {layer.kcp_init for layer in model.layers if hasattr(layer, "kcp_init")} == {
        "independent"
    }
    train.compile_model(model, config, steps=100, jit=False)
    optimizer = model.optimizer
    # Adam's update (FusedAdam: Keras's Adam through TensorFlow's fused kernel), no average.
    assert isinstance(optimizer, FusedAdam) and not optimizer.use_ema
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.amsgrad) == (0.9, 0.999, False)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    rates = [float(optimizer._learning_rate(step)) for step in (0, 99, 100, 5000)]
    assert rates == pytest.approx([0.01] * 4)
    decayed = train.learning_rate_schedule(dataclasses.replace(config, lr_decay=0.75), 100)
    assert float(decayed(250)) == pytest.approx(0.01 * 0.75**2)


def test_the_pipeline_augments_unless_the_model_does_it_itself(tmp_path, mnist_dir, monkeypatch):
    """New models get the augmentation in the pipeline; a run saved by 0.2.x has
    Keras's augmentation layers in its model, and resumes without a second one."""
    asked = []
    pipeline = data.train_dataset
    monkeypatch.setattr(
        data, "train_dataset", lambda *args: asked.append(args[4]) or pipeline(*args)
    )
    tiny = dict(n_epochs=1, max_train_examples=128, n_filters=(2, 2))
    assert train.run(config_for(tmp_path, mnist_dir, run_name="new", **tiny)) == 0

    def model_of_0_2(config, *args):  # its shifts were a layer of the model
        model = build_model(config, *args)
        inputs = keras.Input(model.input_shape[1:])
        moved = keras.layers.RandomTranslation(0.07, 0.07, fill_mode="constant")(inputs)
        return keras.Model(inputs, model(moved))

    with monkeypatch.context() as patch:
        patch.setattr(train, "build_model", model_of_0_2)
        assert train.run(config_for(tmp_path, mnist_dir, run_name="old", **tiny)) == 0
    # Resumed from its checkpoint, the model still holds its RandomTranslation.
    resumed = config_for(tmp_path, mnist_dir, run_name="old", resume=True, n_epochs=2)
    assert train.run(resumed, frozenset({"resume", "run_name", "n_epochs"})) == 0
    assert asked == [Augmentation(10.0, 0.1, 2), None, None]
    assert [e["epoch"] for e in metrics_of(tmp_path, "old")["epochs"]] == [1, 2]


def test_xla_compiles_the_step_with_the_augmentation_on(tmp_path, mnist_dir):
    # The image transform has no XLA kernel; it runs in the pipeline, outside the step.
    # With deterministic ops Keras keeps XLA off, so this run asks for none, even after
    # a seeded run in the same process.
    tf.config.experimental.enable_op_determinism()
    config = config_for(
        tmp_path, mnist_dir, run_name="xla", n_epochs=1, max_train_examples=128,
        n_filters=(2, 2), seed=1, deterministic=False, jit_compile="on",
    )  # fmt: skip
    assert train.run(config) == 0
    metrics = metrics_of(tmp_path, "xla")
    assert metrics["jit_compile"] is True and metrics["status"] == "completed"
    assert metrics["flags"]["max_rotation"] == 10


def test_the_runner_trains_with_tensorflow_whatever_keras_backend_says(tmp_path, mnist_dir):
    args = small_run_args(tmp_path, mnist_dir, "jax", 64, "--n_epochs", "1", "--seed", "1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "KERAS_BACKEND": "jax"}
    command = subprocess.run(
        [sys.executable, "-m", "swsl_cli", *args], capture_output=True, text=True, env=env
    )
    assert command.returncode == 0, command.stderr[-2000:]
    assert metrics_of(tmp_path, "jax")["status"] == "completed"
    # In a process that already imported Keras with another backend: one line, exit 1.
    script = "import keras; from swsl_cli.runner import train; from swsl_cli.runner.config import Config; "
    script += "raise SystemExit(train.main(Config(logdir='unused')))"
    api = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert api.returncode == 1 and api.stdout == ""
    assert api.stderr.strip() == (
        "swsl-train: error: training needs Keras's TensorFlow backend, and this process "
        "imported Keras with jax: set KERAS_BACKEND=tensorflow before importing keras"
    )


def test_the_weight_average_is_validated_and_saved_and_checkpoints_keep_both(tmp_path, mnist_dir):
    config = config_for(tmp_path, mnist_dir, n_epochs=1, seed=5, ema=0.9, run_name="ema")
    assert train.run(config) == 0
    run_dir = tmp_path / "tb" / "ema"
    final = keras.models.load_model(run_dir / "model.keras")
    checkpoint = keras.models.load_model(run_dir / "checkpoints" / "epoch-1" / "model.keras")
    averages = checkpoint.optimizer._model_variables_moving_average
    assert len(averages) == len(final.trainable_variables) > 0
    for saved, average in zip(final.trainable_variables, averages):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), average.numpy())
    # The checkpoint's own weights are the raw ones, which training continues from.
    raw = [keras.ops.convert_to_numpy(v) for v in checkpoint.trainable_variables]
    assert any(not np.array_equal(r, a.numpy()) for r, a in zip(raw, averages))
    # Validation (the test split here) saw the averaged weights, as the final test did.
    metrics = metrics_of(tmp_path, "ema")
    assert metrics["epochs"][-1]["val_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    arrays = data.load_mnist(str(mnist_dir)).limited(None, SMALL["max_test_examples"])
    raw_loss = checkpoint.evaluate(arrays.x_test.astype("float32"), arrays.y_test, verbose=0)[0]
    assert raw_loss != pytest.approx(metrics["test_loss"], rel=1e-3)


def test_extending_a_cosine_run_spreads_the_schedule_over_the_new_length(tmp_path, mnist_dir):
    config = config_for(tmp_path, mnist_dir, n_epochs=1, seed=6, run_name="ext")
    assert train.run(config) == 0
    extended = dataclasses.replace(config, n_epochs=2, resume=True)
    assert train.run(extended, frozenset({"resume", "run_name", "n_epochs"})) == 0
    model = keras.models.load_model(
        tmp_path / "tb" / "ext" / "checkpoints" / "epoch-2" / "model.keras"
    )
    steps = 384 // 64
    # Restored from the checkpoint with the run's first length, rebuilt over the new one:
    # at the end of epoch 1 the rate is half the peak (a cosine over 2 epochs), not 0.
    expected = train.learning_rate_schedule(dataclasses.replace(config, n_epochs=2), steps)
    assert int(model.optimizer.iterations) == 2 * steps
    assert model.optimizer._learning_rate.get_config() == expected.get_config()
    first = train.learning_rate_schedule(config, steps)
    assert float(first(steps)) == pytest.approx(0, abs=1e-9)
    assert float(expected(steps)) > config.learning_rate / 2
    assert [e["epoch"] for e in metrics_of(tmp_path, "ext")["epochs"]] == [1, 2]


def test_resume_on_another_number_of_replicas_is_refused(tmp_path, mnist_dir, capsys):
    config = config_for(tmp_path, mnist_dir, n_epochs=1, seed=6, run_name="two")
    assert train.run(config) == 0
    # As if the run had started on two replicas: its steps counted 128 images each.
    state_file = tmp_path / "tb" / "two" / "checkpoints" / "epoch-1" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["global_batch"] == 64
    state_file.write_text(json.dumps(dict(state, global_batch=128)))
    extended = dataclasses.replace(config, n_epochs=2, resume=True)
    assert train.main(extended, frozenset({"resume", "run_name", "n_epochs"})) == 1
    err = capsys.readouterr().err
    assert "was trained with a global batch of 128 (64 per replica)" in err
    assert "on 1 replica(s) it would be 64" in err and err.count("\n") == 1
    assert [e["epoch"] for e in metrics_of(tmp_path, "two")["epochs"]] == [1]


def test_nonfinite_loss_stops_with_exit_1(tmp_path, mnist_dir, capsys):
    config = config_for(tmp_path, mnist_dir, n_epochs=2, seed=1, learning_rate=1e30, run_name="nan")
    assert train.main(config) == 1
    err = capsys.readouterr().err
    assert "NaN/inf" in err and "--learning_rate" in err and "(no epoch was saved)" in err
    assert metrics_of(tmp_path, "nan")["status"] == "nonfinite_loss"


def test_a_model_too_large_for_the_free_memory_is_warned_of_before_training(
    tmp_path, mnist_dir, capsys, monkeypatch
):
    monkeypatch.setattr(train.memory, "available_bytes", lambda: 1 << 20)  # 1 MiB free
    assert train.run(config_for(tmp_path, mnist_dir, run_name="tight")) == 0
    err = capsys.readouterr().err
    if tf.config.list_physical_devices("GPU"):
        assert err == ""  # the weights live on the GPU: no host-memory estimate there
    else:
        assert err.count("\n") == 1 and err.startswith("swsl-train: warning: training ")
        assert "MiB more memory" in err and ", and 1 MiB is free" in err
    assert metrics_of(tmp_path, "tight")["status"] == "completed"  # a warning, not a refusal


def test_data_errors_are_one_line_exit_1_and_create_no_run(tmp_path, capsys):
    config = Config(logdir=str(tmp_path / "tb"), data_dir=str(tmp_path / "missing"), seed=1)
    assert train.main(config) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"swsl-train: error: --data_dir {tmp_path / 'missing'} does not exist"
    assert not (tmp_path / "tb").exists()


def small_run_args(tmp_path, mnist_dir, run_name, train_examples, *extra):
    """`swsl-train` arguments for a quiet run on a small MNIST subset."""
    return [
        "--data_dir", str(mnist_dir), "--logdir", str(tmp_path / "tb"), "--run_name", run_name,
        "--max_train_examples", str(train_examples), "--max_test_examples", "64", "--quiet",
        *extra,
    ]  # fmt: skip


def _cli(args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "swsl_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
        **kwargs,
    )


def _installed_command_env():
    """PATH with this interpreter's scripts first, so `swsl-train` is the installed command,
    and the tests' import path, so that it runs the code under test (as `_cli` does)."""
    return {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_signal_stops_cleanly_and_the_printed_resume_command_finishes(
    tmp_path, mnist_dir, sig, code
):
    logdir = tmp_path / "my runs"  # a space: the printed command must be quoted
    args = [
        "--data_dir", str(mnist_dir), "--logdir", str(logdir), "--run_name", "s",
        "--max_train_examples", "3000", "--max_test_examples", "64", "--quiet",
        "--n_epochs", "3", "--seed", "2", "--color_coding", "--log_verbosity", "1",
    ]  # fmt: skip
    process = _cli(args)
    for line in process.stdout:
        if line.startswith("epoch 1/3"):
            process.send_signal(sig)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"swsl-train: interrupted by {sig.name}")
    metrics = json.loads((logdir / "s" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and len(metrics["epochs"]) == 1
    assert [p.name for p in (logdir / "s" / "checkpoints").iterdir()] == ["epoch-1"]
    command = out.split("Resume with:\n", 1)[1].strip()
    # Pasted as is into a shell, from another folder: every setting comes back.
    resumed = subprocess.run(
        command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=_installed_command_env(),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch 1" in resumed.stdout
    assert resumed.stdout.count("epoch 2/3") == 1 and "epoch 3/3" in resumed.stdout
    final = json.loads((logdir / "s" / "metrics.json").read_text())
    assert final["status"] == "completed" and [e["epoch"] for e in final["epochs"]] == [1, 2, 3]
    assert final["flags"]["color_coding"] is True and final["flags"]["log_verbosity"] == 1
    assert (logdir / "s" / "kernel_images" / "sws1_kernels_color.png").is_file()


def test_a_second_process_on_the_same_run_is_refused(tmp_path, mnist_dir):
    args = small_run_args(tmp_path, mnist_dir, "busy", 3000, "--n_epochs", "100", "--seed", "2")
    first = _cli(args)
    try:
        for line in first.stdout:
            if line.startswith("epoch 1/100"):
                break
        second = _cli(["--resume", "--logdir", str(tmp_path / "tb"), "--run_name", "busy"])
        out, err = second.communicate(timeout=300)
        assert second.returncode == 1
        assert err.strip() == (
            f"swsl-train: error: run {tmp_path / 'tb' / 'busy'} is being trained by process "
            f"{first.pid} on {os.uname().nodename}; wait for it to end or stop it"
        )
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=300)
    assert first.returncode == 130


def test_a_signal_while_tensorflow_loads_is_one_line_and_leaves_no_run(tmp_path, mnist_dir):
    process = _cli(small_run_args(tmp_path, mnist_dir, "early", 64))
    # Wait (bounded) until the process maps TensorFlow's library: it is importing it.
    maps = f"/proc/{process.pid}/maps"
    for _ in range(200000):
        if process.poll() is not None or "tensorflow" in open(maps).read():
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert err.strip() == "swsl-train: interrupted by SIGINT while starting"
    assert not (tmp_path / "tb" / "early").exists()


def test_a_signal_that_keras_swallows_while_saving_or_loading_still_stops_the_run(
    tmp_path, mnist_dir, monkeypatch, capsys
):
    """Keras's saving catches everything around its weights store, and its loading catches
    `Exception` around each layer: a signal there still ends the run as interrupted."""
    from keras.src.saving import saving_lib

    from swsl_cli.runner import runs
    from swsl_cli.runner.interrupts import RaiseInterrupted, handled_by

    config = config_for(
        tmp_path, mnist_dir, n_epochs=1, seed=3, run_name="swallowed",
        max_train_examples=128, n_filters=(2, 2),
    )  # fmt: skip
    armed = []

    def signalled(real):
        def call(*args, **kwargs):
            if armed:
                armed.clear()
                os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)

        return call

    real_save_model = runs.RunDir.save_model

    def save_final_model(run, save):
        armed.append(True)  # the final model's save only, not the checkpoints'
        return real_save_model(run, save)

    monkeypatch.setattr(saving_lib.H5IOStore, "__init__", signalled(saving_lib.H5IOStore.__init__))
    monkeypatch.setattr(runs.RunDir, "save_model", save_final_model)
    with handled_by(RaiseInterrupted()):
        assert train.main(config) == 130
    assert "interrupted by SIGINT while finishing" in capsys.readouterr().err
    assert metrics_of(tmp_path, "swallowed")["status"] == "interrupted"
    assert not (tmp_path / "tb" / "swallowed" / "model.keras").exists()
    monkeypatch.undo()

    dense = keras.layers.Dense
    monkeypatch.setattr(dense, "load_own_variables", signalled(dense.load_own_variables))
    armed.append(True)
    resumed = dataclasses.replace(config, resume=True)
    with handled_by(RaiseInterrupted()):
        assert train.main(resumed, frozenset({"resume", "run_name"})) == 130
    err = capsys.readouterr().err
    assert "interrupted by SIGINT while building the model" in err and "Traceback" not in err
    assert metrics_of(tmp_path, "swallowed")["status"] == "interrupted"
    monkeypatch.undo()
    assert train.main(resumed, frozenset({"resume", "run_name"})) == 0
    assert metrics_of(tmp_path, "swallowed")["status"] == "completed"


def test_a_checkpoint_copied_from_a_run_of_other_settings_is_refused(tmp_path, mnist_dir, capsys):
    tiny = dict(n_epochs=1, seed=1, max_train_examples=128)
    assert train.run(config_for(tmp_path, mnist_dir, run_name="a", n_filters=(2, 2), **tiny)) == 0
    assert train.run(config_for(tmp_path, mnist_dir, run_name="b", n_filters=(4, 4), **tiny)) == 0
    a, b = tmp_path / "tb" / "a", tmp_path / "tb" / "b"
    shutil.rmtree(a / "checkpoints" / "epoch-1")
    shutil.copytree(b / "checkpoints" / "epoch-1", a / "checkpoints" / "epoch-1")
    before = (a / "metrics.json").read_text()
    resumed = config_for(tmp_path, mnist_dir, run_name="a", resume=True, n_epochs=2)
    given = frozenset({"resume", "run_name", "n_epochs"})
    assert train.main(resumed, given) == 1
    err = capsys.readouterr().err
    assert (
        f"checkpoint {a / 'checkpoints' / 'epoch-1'} was saved by a run with other network" in err
    )
    # A checkpoint from before the architecture record: the loaded network is counted.
    state_file = a / "checkpoints" / "epoch-1" / "state.json"
    state = json.loads(state_file.read_text())
    del state["architecture"]
    state_file.write_text(json.dumps(state))
    assert train.main(resumed, given) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a network of" in err and "it was copied" in err
    assert (a / "metrics.json").read_text() == before  # nothing was trained or recorded


def test_interrupted_while_finishing_then_resume_finishes(tmp_path, mnist_dir, monkeypatch, capsys):
    from swsl_cli.runner.interrupts import Interrupted

    config = config_for(tmp_path, mnist_dir, n_epochs=1, seed=3, run_name="fin")
    real_export = train.export_kernel_pngs

    def interrupted_export(*args):
        raise Interrupted("SIGTERM")

    monkeypatch.setattr(train, "export_kernel_pngs", interrupted_export)
    assert train.main(config) == 143
    run_dir = tmp_path / "tb" / "fin"
    assert metrics_of(tmp_path, "fin")["status"] == "interrupted"
    assert "while finishing" in capsys.readouterr().err
    assert not list(run_dir.rglob("partial-*"))
    monkeypatch.setattr(train, "export_kernel_pngs", real_export)
    resumed = dataclasses.replace(config, resume=True)
    assert train.main(resumed, frozenset({"resume", "run_name"})) == 0
    metrics = metrics_of(tmp_path, "fin")
    assert metrics["status"] == "completed" and "test_accuracy" in metrics
    assert len(metrics["epochs"]) == 1 and (run_dir / "model.keras").is_file()
    assert (run_dir / "kernel_images" / "sws2_kcp.png").is_file()
    # Completed now: a further --resume is refused in one line.
    assert train.main(resumed, frozenset({"resume", "run_name"})) == 1
    assert "is complete (1 epochs" in capsys.readouterr().err


def test_output_to_a_pipe_that_closes_stops_printing_not_training(tmp_path, mnist_dir):
    args = small_run_args(tmp_path, mnist_dir, "piped", 256, "--n_epochs", "3", "--seed", "1")
    process = subprocess.Popen(
        f"{shlex.join([sys.executable, '-m', 'swsl_cli', *args])} | head -2",
        shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    out, err = process.communicate(timeout=300)
    assert len(out.splitlines()) == 2 and err == ""
    metrics = metrics_of(tmp_path, "piped")
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 3


def test_closed_stdout_still_trains_and_a_normal_run_prints_no_noise(tmp_path, mnist_dir):
    # Verbosity 3 runs every summary path (gradients, activations), each of which once
    # printed a warning here.
    args = small_run_args(
        tmp_path, mnist_dir, "closed", 128, "--n_epochs", "1", "--seed", "1",
        "--max_test_examples", "1000", "--log_verbosity", "3",
    )  # fmt: skip
    result = subprocess.run(
        f"{shlex.join([sys.executable, '-m', 'swsl_cli', *args])} >&-",
        shell=True, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == ""
    assert metrics_of(tmp_path, "closed")["status"] == "completed"


def test_mirrored_on_two_logical_cpus_matches_single_device(tmp_path, mnist_dir):
    script = textwrap.dedent(f"""
        import json, sys, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from swsl_cli.runner import train
        from swsl_cli.runner.config import Config
        common = dict(logdir={str(tmp_path / "tb")!r}, data_dir={str(mnist_dir)!r}, n_epochs=1, seed=3,
                      max_train_examples=256, max_test_examples=128, quiet=True)
        assert train.run(Config(run_name="single", batch_size=64, **common)) == 0
        assert train.run(Config(run_name="mirrored", batch_size=32, distribute="mirrored", **common)) == 0
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    single, mirrored = metrics_of(tmp_path, "single"), metrics_of(tmp_path, "mirrored")
    assert (
        mirrored["replicas"] == 2 and mirrored["strategy"] == "mirrored" and single["replicas"] == 1
    )
    assert "2 replica(s)" in result.stdout
    assert mirrored["epochs"][0]["loss"] == pytest.approx(single["epochs"][0]["loss"], rel=0.02)
    assert mirrored["test_loss"] == pytest.approx(single["test_loss"], rel=0.02)


def test_mirrored_from_the_cli_on_one_cpu(tmp_path, mnist_dir):
    process = _cli(
        small_run_args(
            tmp_path,
            mnist_dir,
            "m",
            128,
            "--n_epochs",
            "1",
            "--distribute",
            "mirrored",
            "--layer",
            "conv",
        )
    )
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "strategy mirrored with 1 replica(s)" in out
    assert metrics_of(tmp_path, "m")["replicas"] == 1


def test_disk_full_while_checkpointing_is_one_line_and_spares_earlier_runs(
    tmp_path, mnist_dir, capsys, monkeypatch
):
    earlier = config_for(tmp_path, mnist_dir, n_epochs=1, seed=1, run_name="earlier")
    assert train.run(earlier) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "tb" / "earlier").rglob("*") if p.is_file()}
    real_save = keras.Model.save

    def disk_full(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(keras.Model, "save", disk_full)
    assert train.main(dataclasses.replace(earlier, run_name="later")) == 1
    err = capsys.readouterr().err.strip()
    later = tmp_path / "tb" / "later"
    assert err == (
        f"swsl-train: error: cannot write {later / 'checkpoints' / 'epoch-1'}: "
        "No space left on device"
    )
    # Nothing was saved, so the new run's folder is gone; the earlier run is untouched.
    assert not later.exists()
    after = {p: p.read_bytes() for p in (tmp_path / "tb" / "earlier").rglob("*") if p.is_file()}
    assert after == before


def test_disk_full_at_a_later_checkpoint_keeps_the_saved_epochs_only(
    tmp_path, mnist_dir, capsys, monkeypatch
):
    real_save = keras.Model.save
    calls = []

    def full_at_the_second_epoch(model, path, *args, **kwargs):
        calls.append(path)
        real_save(model, path, *args, **kwargs)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(keras.Model, "save", full_at_the_second_epoch)
    config = config_for(tmp_path, mnist_dir, n_epochs=3, seed=1, run_name="full")
    assert train.main(config) == 1
    assert "epoch-2: No space left on device" in capsys.readouterr().err
    metrics = metrics_of(tmp_path, "full")
    # metrics.json lists the epochs that --resume keeps, not the one whose save failed.
    assert metrics["status"] == "failed" and [e["epoch"] for e in metrics["epochs"]] == [1]
    assert [p.name for p in (tmp_path / "tb" / "full" / "checkpoints").iterdir()] == ["epoch-1"]


def test_multi_worker_from_tf_config_on_one_local_worker(tmp_path, mnist_dir):
    import socket

    with socket.socket() as probe:  # a free port on loopback for the worker's server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tf_config = {
        "cluster": {"worker": [f"127.0.0.1:{port}"]},
        "task": {"type": "worker", "index": 0},
    }
    process = _cli(
        small_run_args(
            tmp_path,
            mnist_dir,
            "w",
            128,
            "--n_epochs",
            "1",
            "--distribute",
            "multi_worker",
            "--layer",
            "conv",
        ),
        env={"TF_CONFIG": json.dumps(tf_config)},
    )
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    assert "strategy multi_worker with 1 replica(s)" in out
    assert metrics_of(tmp_path, "w")["strategy"] == "multi_worker"


def test_second_signal_exits_at_once(monkeypatch):
    from swsl_cli.runner.console import Console
    from swsl_cli.runner.interrupts import handled_by

    session = type("Session", (), {"console": Console(None)})()
    record = train.RunRecord(session)
    exits = []
    monkeypatch.setattr(train.os, "_exit", exits.append)
    with handled_by(train.stop_after_step(record)):
        signal.raise_signal(signal.SIGINT)
        assert record.signal_name == "SIGINT" and exits == []
        signal.raise_signal(signal.SIGINT)
        assert exits == [130]


def test_disk_full_in_a_tensorboard_write_and_out_of_memory_are_one_line(
    tmp_path, mnist_dir, capsys, monkeypatch
):
    from swsl_cli.runner import summaries

    events_file = tmp_path / "tb" / "full" / "events.out.tfevents.1.vm.2.v2"
    message = (
        "{{function_node __wrapped__WriteSummary_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
        f"{events_file}; No space left on device\n\tFailed to flush 11 events to {events_file}"
    )

    def full_disk(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, message)

    monkeypatch.setattr(summaries.LayerSummaries, "on_epoch_end", full_disk)
    config = config_for(tmp_path, mnist_dir, n_epochs=1, seed=1, run_name="full")
    assert train.main(config) == 1
    assert capsys.readouterr().err == (
        f"swsl-train: error: cannot write {events_file}: No space left on device\n"
    )

    def no_memory(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(train, "build_model", no_memory)
    assert train.main(dataclasses.replace(config, run_name="huge")) == 1
    err = capsys.readouterr().err
    assert err.startswith("swsl-train: error: out of memory:") and err.count("\n") == 1
    assert not (tmp_path / "tb" / "huge").exists()


def test_killed_mid_training_resumes_from_the_last_complete_epoch(tmp_path, mnist_dir):
    args = small_run_args(tmp_path, mnist_dir, "killed", 3000, "--n_epochs", "3", "--seed", "4")
    process = _cli(args)
    for line in process.stdout:
        if line.startswith("epoch 1/3"):
            process.kill()  # SIGKILL: no handler runs, nothing is tidied up
            break
    process.communicate(timeout=300)
    assert metrics_of(tmp_path, "killed")["status"] == "running"
    resumed = _cli(["--resume", "--logdir", str(tmp_path / "tb"), "--run_name", "killed"])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming after epoch" in out and err == ""
    metrics = metrics_of(tmp_path, "killed")
    assert metrics["status"] == "completed"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    checkpoints = tmp_path / "tb" / "killed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-2", "epoch-3"]


@pytest.mark.parametrize(
    "flags, layers, pngs",
    [
        (
            dict(layer="local"),
            ("local1", "local2"),
            ("local1_kernels.png", "local1_specialisation.png"),
        ),
        (dict(layer="conv"), ("conv1", "conv2"), ("conv1_kernels.png", "conv1_kernels_full.png")),
        (dict(kcp_init="shared", n_centroids=13), ("sws1", "sws2"), ("sws1_centroids.png",)),
        (
            dict(layer="lrlc", head="gap"),
            ("lrlc1", "lrlc2"),
            ("lrlc2_kernels.png", "lrlc2_specialisation.png"),
        ),
        (dict(layer="coordconv"), ("coordconv1", "coordconv2"), ("coordconv1_kernels_full.png",)),
    ],
)
def test_every_layer_kind_trains_and_reports_its_parameters(
    tmp_path, mnist_dir, flags, layers, pngs
):
    config = config_for(tmp_path, mnist_dir, n_epochs=1, seed=2, run_name="kind", **flags)
    assert train.run(config) == 0
    metrics = metrics_of(tmp_path, "kind")
    counts = metrics["parameters"]
    assert set(layers) <= set(counts) and counts["total"] == sum(
        v for k, v in counts.items() if k != "total"
    )
    model = keras.models.load_model(tmp_path / "tb" / "kind" / "model.keras")
    assert counts["total"] == model.count_params()
    for png in pngs:
        assert (tmp_path / "tb" / "kind" / "kernel_images" / png).is_file()


def test_a_bad_cell_kernels_choice_is_one_line_before_any_run_folder(
    tmp_path, mnist_dir, cell_kernels_choice, capsys
):
    cell_kernels_choice.setenv(cell_ops.ENVIRONMENT, "fastest")
    config = config_for(tmp_path, mnist_dir, n_epochs=1, run_name="k")
    with contextlib.ExitStack() as stack:
        status = train.main_opened(runs.open_run(config, frozenset(), stack), stack)
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "swsl-train: error: the per-cell kernels: SWSL_CELL_KERNELS='fastest': "
        "expected one of auto, compiled, tensorflow"
    ]
    assert not (tmp_path / "tb" / "k").exists()


def one_tiny_epoch(tmp_path, mnist_dir, layer: str) -> dict:
    """One epoch of 128 images of `--layer layer`; its metrics.json."""
    config = config_for(
        tmp_path,
        mnist_dir,
        n_epochs=1,
        layer=layer,
        run_name=layer,
        max_train_examples=128,
        max_test_examples=64,
    )
    assert train.run(config) == 0
    return metrics_of(tmp_path, layer)


def test_tensorflows_own_cell_kernels_on_request_train_and_say_so(
    tmp_path, mnist_dir, cell_kernels_choice
):
    cell_kernels_choice.setenv(cell_ops.ENVIRONMENT, "tensorflow")
    metrics = one_tiny_epoch(tmp_path, mnist_dir, "local")
    assert metrics["status"] == "completed"
    assert metrics["device"] == (
        "no GPU: training on CPU; TensorFlow's per-cell kernels (SWSL_CELL_KERNELS=tensorflow)"
    )


def test_the_conv_net_does_not_report_or_compile_cell_kernels(
    tmp_path, mnist_dir, cell_kernels_choice
):
    cell_kernels_choice.setenv("SWSL_CACHE_DIR", str(tmp_path / "cache"))
    metrics = one_tiny_epoch(tmp_path, mnist_dir, "conv")
    assert metrics["device"] == "no GPU: training on CPU"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "precision, jit, deterministic, expected",
    [
        ("mixed_bfloat16", False, False, "; TensorFlow's per-cell kernels (mixed_bfloat16)"),
        ("float32", True, False, "; TensorFlow's per-cell kernels (XLA)"),
        ("float32", True, True, None),  # Keras keeps XLA off with op determinism
        ("float32", False, False, None),
    ],
)
def test_the_device_line_names_the_kernels_the_layers_will_use(
    tmp_path, precision, jit, deterministic, expected
):
    settings = train.Settings(precision, jit, deterministic)
    console = train.Console(None)
    report = train.cell_kernels_report(Config(layer="lrlc"), settings, console)
    assert report == (expected or f"; {cell_ops.status()}")
    assert train.cell_kernels_report(Config(layer="conv"), settings, console) == ""
