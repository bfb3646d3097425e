"""End to end on real MNIST (small subsets): outputs, TensorBoard events, resume, signals, NaN, tf.distribute."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from swsl_cli import data, train
from swsl_cli.config import Config

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
    assert metrics["device"] == "no GPU: training on CPU"
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


def test_scalars_in_tensorboard(full_run):
    _, run_dir, _ = full_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for run, prefix in (("train", ""), ("validation", "val_")):
        accumulator = events(run_dir, run)
        for name in ("loss", "accuracy"):
            values = [
                float(tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(f"epoch_{name}")
            ]
            expected = [e[prefix + name] for e in metrics["epochs"]]
            np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_kernel_images_every_epoch(full_run):
    _, run_dir, _ = full_run
    accumulator = events(run_dir, "layers")
    tags = accumulator.Tags()["tensors"]
    for layer, filters in (("sws1", 24), ("sws2", 48)):
        for tag in ("weighted_kernels", "weighted_kernels_color", "centroids", "legend"):
            assert f"{layer}/{tag}" in tags
        steps = accumulator.Tensors(f"{layer}/weighted_kernels")
        assert [e.step for e in steps] == [0, 1]
        encoded = tf.make_ndarray(steps[-1].tensor_proto)
        width, height = int(encoded[0]), int(encoded[1])
        assert len(encoded) - 2 == filters  # one image per filter (input channel 0)
        image = tf.io.decode_png(encoded[2]).numpy()
        assert image.shape == (height, width, 1)
        colour = tf.io.decode_png(
            tf.make_ndarray(
                accumulator.Tensors(f"{layer}/weighted_kernels_color")[-1].tensor_proto
            )[2]
        )
        assert colour.shape[-1] == 3
    # verbosity >= 1: gradients; 3: activations
    assert any(t.startswith("gradients/") for t in tags)
    assert "activations/sws1" in tags and "sws1/centroid_y" in tags


def test_kernel_pngs_and_reloadable_model(full_run, mnist_dir):
    _, run_dir, _ = full_run
    names = sorted(p.name for p in (run_dir / "kernel_images").iterdir())
    assert names == sorted(
        f"{layer}_{kind}.png"
        for layer in ("sws1", "sws2")
        for kind in ("weighted", "kcp", "centroids", "weighted_color")
    )
    kcp = tf.io.decode_png((run_dir / "kernel_images" / "sws1_kcp.png").read_bytes()).numpy()
    assert kcp.shape == (4 * 8, 24 * 8, 1)  # 4 KCPs x 1 input channel x (7+1) px, 24 filters
    model = keras.models.load_model(run_dir / "model.keras")
    images = data.load_mnist(str(mnist_dir)).x_test[:8] / 255.0
    checkpoint = keras.models.load_model(run_dir / "checkpoint" / "model.keras")
    np.testing.assert_allclose(
        model.predict(images, verbose=0), checkpoint.predict(images, verbose=0), rtol=1e-6
    )
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["epoch"] == 2


def test_same_seed_same_metrics_and_resume_matches_uninterrupted(tmp_path, mnist_dir):
    base = config_for(tmp_path, mnist_dir, n_epochs=2, seed=7)
    assert train.run(dataclasses.replace(base, run_name="a")) == 0
    assert train.run(dataclasses.replace(base, run_name="b")) == 0
    assert train.run(dataclasses.replace(base, run_name="c", n_epochs=1)) == 0
    assert train.run(dataclasses.replace(base, run_name="c", resume=True, seed=None)) == 0
    a, b, c = (metrics_of(tmp_path, name) for name in "abc")
    assert a["epochs"] == [
        dict(e, seconds=x["seconds"], images_per_second=x["images_per_second"])
        for e, x in zip(b["epochs"], a["epochs"])
    ]
    assert (a["test_loss"], a["test_accuracy"]) == (b["test_loss"], b["test_accuracy"])
    assert c["test_loss"] == a["test_loss"] and c["test_accuracy"] == a["test_accuracy"]
    assert [e["epoch"] for e in c["epochs"]] == [1, 2]


def test_nonfinite_loss_stops_with_exit_1(tmp_path, mnist_dir, capsys):
    config = config_for(tmp_path, mnist_dir, n_epochs=2, seed=1, learning_rate=1e30, run_name="nan")
    assert train.main(config) == 1
    err = capsys.readouterr().err
    assert "NaN/inf" in err and "--learning_rate" in err
    assert metrics_of(tmp_path, "nan")["status"] == "nonfinite_loss"


def test_data_errors_are_one_line_exit_1_and_create_no_run(tmp_path, capsys):
    config = Config(logdir=str(tmp_path / "tb"), data_dir=str(tmp_path / "missing"), seed=1)
    assert train.main(config) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"swsl-train: error: --data_dir {tmp_path / 'missing'} does not exist"
    assert not any((tmp_path / "tb").iterdir()) if (tmp_path / "tb").exists() else True


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


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_and_resume_finishes(tmp_path, mnist_dir, sig, code):
    args = small_run_args(tmp_path, mnist_dir, "s", 3000, "--n_epochs", "3", "--seed", "2")
    process = _cli(args)
    for line in process.stdout:
        if line.startswith("epoch 1/3"):
            process.send_signal(sig)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == code, err
    assert "Resume with:" in out and "--resume" in out
    assert "Traceback" not in err
    metrics = metrics_of(tmp_path, "s")
    assert metrics["status"] == "interrupted" and len(metrics["epochs"]) == 1
    assert (
        json.loads((tmp_path / "tb" / "s" / "checkpoint" / "state.json").read_text())["epoch"] == 1
    )
    if sig == signal.SIGINT:
        resumed = _cli(args + ["--resume", "--n_epochs", "2", "--max_train_examples", "3000"])
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        assert "resuming after epoch 1" in out
        assert [e["epoch"] for e in metrics_of(tmp_path, "s")["epochs"]] == [1, 2]


def test_mirrored_on_two_logical_cpus_matches_single_device(tmp_path, mnist_dir):
    script = textwrap.dedent(f"""
        import json, sys, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from swsl_cli import train
        from swsl_cli.config import Config
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


def test_disk_error_while_writing_is_one_line_exit_1_and_spares_earlier_runs(
    tmp_path, mnist_dir, capsys, monkeypatch
):
    from swsl_cli import runs

    earlier = config_for(tmp_path, mnist_dir, n_epochs=1, seed=1, run_name="earlier")
    assert train.run(earlier) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "tb" / "earlier").glob("*.json")}
    real_write = runs.write_json

    def failing_write(path, data):
        if path.name == "state.json":
            raise OSError(28, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(runs, "write_json", failing_write)
    assert train.main(dataclasses.replace(earlier, run_name="later")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("swsl-train: error: No space left on device: ") and "\n" not in err
    after = {p.name: p.read_bytes() for p in (tmp_path / "tb" / "earlier").glob("*.json")}
    assert after == before


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
    state = train.RunState(started=0.0)
    exits = []
    monkeypatch.setattr(train.os, "_exit", exits.append)
    previous = train._install_signal_handlers(state)
    try:
        signal.raise_signal(signal.SIGINT)
        assert state.signal_name == "SIGINT" and exits == []
        signal.raise_signal(signal.SIGINT)
        assert exits == [130]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
