"""Multi-worker training: TF_CONFIG checks, and real worker processes on loopback ports."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from swsl_cli.runner import cli, distribute
from swsl_cli.runner.distribute import ClusterError, read_cluster

WAIT_S = 240  # bound on every worker process; one of these runs takes ~20 s on 2 cores
TINY = ["--max_train_examples", "256", "--max_test_examples", "128", "--seed", "0"]
TINY += ["--layer", "conv", "--quiet", "--n_epochs", "2", "--batch_size", "64"]
# A worker that sends itself a signal as an epoch begins (epoch 2: after committing epoch 1).
SIGNAL_AT_EPOCH = """
import os, signal, sys
from swsl_cli.runner import cli, train
keep = train.EpochSeededRandomness.on_epoch_begin
def on_epoch_begin(self, epoch, logs=None):
    if epoch == {epoch}:
        os.kill(os.getpid(), signal.{signal})
    keep(self, epoch, logs)
train.EpochSeededRandomness.on_epoch_begin = on_epoch_begin
sys.exit(cli.main(sys.argv[1:]))
"""
KILLED_AT_EPOCH_1 = SIGNAL_AT_EPOCH.format(epoch=0, signal="SIGKILL")
KILLED_AT_EPOCH_2 = SIGNAL_AT_EPOCH.format(epoch=1, signal="SIGKILL")
TERMINATED_AT_EPOCH_2 = SIGNAL_AT_EPOCH.format(epoch=1, signal="SIGTERM")


def tf_config(workers, index, task_type="worker", **jobs):
    return json.dumps(
        {"cluster": {"worker": workers, **jobs}, "task": {"type": task_type, "index": index}}
    )


TWO = ["127.0.0.1:2222", "127.0.0.1:2223"]


def test_cluster_names_tasks_and_the_chief():
    worker1 = read_cluster(tf_config(TWO, 1))
    assert worker1.size == 2 and worker1.name == "worker 1" and not worker1.is_chief
    assert worker1.peers() == [("worker 0", "127.0.0.1:2222")]
    assert read_cluster(tf_config(TWO, 0)).is_chief
    with_chief = read_cluster(tf_config(TWO, 0, chief=["127.0.0.1:2221"]))
    assert with_chief.size == 3 and not with_chief.is_chief
    assert read_cluster(tf_config(TWO, 0, "chief", chief=["127.0.0.1:2221"])).is_chief
    assert distribute.is_chief(None)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "lacks its 'cluster' or 'task'"),
        (tf_config(TWO, 2), "task index 2 is not a worker of the cluster (it has 2: index 0 to 1)"),
        (tf_config(TWO, -1), "task index -1"),
        (tf_config(TWO, "0"), 'task index "0"'),
        (tf_config(TWO, True), "task index true"),
        (tf_config(TWO, 0, "chief"), 'task type "chief" is not a job of its cluster'),
        (tf_config(TWO, 0, ps=["127.0.0.1:3"]), "job 'ps' is not supported"),
        (tf_config([], 0), "'worker' must be a non-empty list"),
        (tf_config(["127.0.0.1"], 0), "worker[0] must be 'host:port', got \"127.0.0.1\""),
        (tf_config(["127.0.0.1:99999"], 0), "must be 'host:port'"),
        (tf_config([TWO[0], TWO[0]], 0), "names 127.0.0.1:2222 twice"),
        (tf_config(TWO, 0, chief=TWO), "may have one 'chief', got 2"),
    ],
)
def test_bad_tf_config_is_one_clear_line(text, message):
    with pytest.raises(ClusterError) as caught:
        read_cluster(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_several_workers_need_one_seed_unless_resuming():
    with pytest.raises(ClusterError, match="with 2 workers needs --seed"):
        distribute.check_command(tf_config(TWO, 0), seed=None, resume=False)
    assert distribute.check_command(tf_config(TWO, 0), seed=None, resume=True).size == 2
    assert distribute.check_command(tf_config(TWO[:1], 0), seed=None, resume=False).size == 1


def test_scratch_logdir_only_off_the_chief_and_removed_at_the_end():
    with distribute.scratch_logdir(read_cluster(tf_config(TWO, 0))) as chief_scratch:
        assert chief_scratch is None
    with pytest.raises(RuntimeError):
        with distribute.scratch_logdir(read_cluster(tf_config(TWO, 1))) as scratch:
            (scratch / "run").mkdir()
            raise RuntimeError("stops mid-run")
    assert scratch.name.startswith("swsl-worker1-") and not scratch.exists()


def test_cli_refuses_bad_tf_config_with_exit_2_before_tensorflow(monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", tf_config(TWO, 5))
    assert cli.main(["--distribute", "multi_worker", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TF_CONFIG task index 5 is not a worker" in err
    monkeypatch.setenv("TF_CONFIG", "not json")
    assert cli.main(["--distribute", "multi_worker", "--seed", "0"]) == 2
    assert "TF_CONFIG is not valid JSON" in capsys.readouterr().err
    monkeypatch.setenv("TF_CONFIG", tf_config(TWO, 0))
    assert cli.main(["--distribute", "multi_worker"]) == 2
    assert "needs --seed" in capsys.readouterr().err


def two_workers_that_hold(monkeypatch, own, other):
    """`check_same_run` as worker 0 of a cluster whose worker 1 holds `other` values (and,
    with another version, another list of names): the all-reduce is stood in for."""
    import numpy as np

    monkeypatch.setattr(distribute, "in_multi_worker_mode", lambda strategy: True)
    rows = iter(
        [
            [[distribute._digest(f"{distribute.__version__} {list(own)}")],
             [distribute._digest(f"{other.pop('version', distribute.__version__)} {list(own)}")]],
            [[distribute._digest(own[name]) for name in own],
             [distribute._digest(other.get(name, own[name])) for name in own]],
        ]
    )  # fmt: skip
    monkeypatch.setattr(
        distribute,
        "_gathered",
        lambda strategy, row: (["worker 0", "worker 1"], np.array(next(rows)), 0),
    )


@pytest.mark.parametrize(
    "other, message",
    [
        (
            {"--layer": "sws"},
            "worker 1 was started with another --layer than worker 0 (worker 0: --layer conv)",
        ),
        ({"data": "0123"}, "worker 1 loaded other data than worker 0 (fingerprint fea8 here)"),
        (
            {"checkpoint": "none"},
            "worker 1 resumes another checkpoint than worker 0 (epoch 1 (ab12) here)",
        ),
        (
            {"version": "0.1.0"},
            f"worker 1 runs another version of swsl-cli than worker 0 ({distribute.__version__})",
        ),
    ],
)
def test_workers_that_differ_are_refused_naming_the_difference(monkeypatch, other, message):
    own = {"--layer": "conv", "--n_epochs": "2", "data": "fea8", "checkpoint": "epoch 1 (ab12)"}
    two_workers_that_hold(monkeypatch, own, dict(other))
    with pytest.raises(distribute.PeerError) as error:
        distribute.check_same_run(None, own)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    two_workers_that_hold(monkeypatch, own, {})
    distribute.check_same_run(None, own)  # the same everywhere: no refusal


# Real workers: `swsl-train` processes on free loopback ports.


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def start_worker(index, ports, args, script=None, scratch_parent=None, extra=()):
    workers = [f"127.0.0.1:{port}" for port in ports]
    command = ["-c", script] if script else ["-m", "swsl_cli"]
    # What a user's shell has: the CLI picks TensorFlow's log level for multi-worker runs.
    quiet_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    # A killed worker cannot remove its temporary folder: keep those under pytest's.
    scratch = {"TMPDIR": str(scratch_parent)} if scratch_parent else {}
    return subprocess.Popen(
        [sys.executable, *command, "--distribute", "multi_worker", *args, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**quiet_env, "TF_CONFIG": tf_config(workers, index), **scratch},
    )


def finished(processes) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process; none outlives `WAIT_S`."""
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=WAIT_S)
            results.append((process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def cluster_run(
    logdir, mnist_dir, *extra, script_for_worker_1=None, script_for_worker_0=None, worker_1=()
):
    """Two workers with the same flags (`worker_1`: flags only worker 1 gets)."""
    ports = free_ports(2)
    args = ["--logdir", str(logdir), "--data_dir", str(mnist_dir), *TINY, *extra]
    scratch = logdir.parent / "worker-tmp"
    scratch.mkdir(exist_ok=True)
    return finished(
        [
            start_worker(0, ports, args, script_for_worker_0, scratch),
            start_worker(1, ports, args, script_for_worker_1, scratch, extra=worker_1),
        ]
    )


def digest(out: str) -> str:
    return re.search(r"final weights: sha256 ([0-9a-f]{64})", out).group(1)


def scratch_folder(out: str) -> Path:
    return Path(re.search(r"^run: (.+)$", out, re.MULTILINE).group(1))


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, mnist_dir):
    logdir = tmp_path_factory.mktemp("cluster") / "tb"
    return logdir, cluster_run(logdir, mnist_dir, "--run_name", "r")


def test_two_workers_train_one_model_and_only_the_chief_writes(two_workers):
    logdir, ((status0, out0, err0), (status1, out1, err1)) = two_workers
    assert status0 == 0, err0[-3000:]
    assert status1 == 0, err1[-3000:]
    assert "strategy multi_worker with 2 replica(s)" in out0
    assert "batch 128 (64 x 2), 2 steps per epoch" in out0
    metrics = json.loads((logdir / "r" / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["status"] == "completed"
    assert [epoch["epoch"] for epoch in metrics["epochs"]] == [1, 2]
    # Both workers hold the same weights at the end, and report the same figures.
    assert digest(out0) == digest(out1)
    assert out0.splitlines()[-3] == out1.splitlines()[-3]  # the epoch 2 line
    # Only the chief wrote the run; worker 1's folder was temporary and is gone.
    assert sorted(p.name for p in logdir.iterdir()) == ["r"]
    assert (logdir / "r" / "model.keras").is_file()
    assert scratch_folder(out1).name == "r" and not scratch_folder(out1).parent.exists()
    assert list((logdir.parent / "worker-tmp").iterdir()) == []


def test_killed_worker_stops_the_other_and_resume_matches_uninterrupted(
    two_workers, tmp_path, mnist_dir
):
    logdir = tmp_path / "tb"
    (status0, _, err0), (status1, _, _) = cluster_run(
        logdir, mnist_dir, "--run_name", "k", script_for_worker_1=KILLED_AT_EPOCH_2
    )
    assert status1 == -9
    assert status0 == 1
    assert err0 == (
        "swsl-train: error: worker 1 stopped or became unreachable during the run; epoch 1 is "
        "the last one saved: start every worker again with --resume\n"
    )
    metrics = json.loads((logdir / "k" / "metrics.json").read_text())
    assert [epoch["epoch"] for epoch in metrics["epochs"]] == [1]

    resumed = cluster_run(logdir, mnist_dir, "--resume", "--run_name", "k")
    for status, out, err in resumed:
        assert status == 0, err[-3000:]
        assert "resuming after epoch 1" in out
    metrics = json.loads((logdir / "k" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["epochs"]) == 2
    # Every worker restored the chief's checkpoint: same weights as the uninterrupted run.
    uninterrupted = two_workers[1][0][1]
    assert digest(resumed[0][1]) == digest(resumed[1][1]) == digest(uninterrupted)
    assert sorted(p.name for p in logdir.iterdir()) == ["k"]


def test_a_worker_lost_before_any_epoch_was_saved_is_said_so(tmp_path, mnist_dir):
    logdir = tmp_path / "tb"
    (status0, _, err0), (status1, _, _) = cluster_run(
        logdir, mnist_dir, "--run_name", "k", script_for_worker_1=KILLED_AT_EPOCH_1
    )
    assert (status0, status1) == (1, -9)
    assert err0 == (
        "swsl-train: error: worker 1 stopped or became unreachable during the run; no epoch was "
        "saved: start every worker again with the same command\n"
    )
    assert not (logdir / "k").exists()


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--n_filters", "8", "8"], "--n_filters than worker 0 (worker 0: --n_filters 24 48)"),
        (["--n_epochs", "3"], "--n_epochs than worker 0 (worker 0: --n_epochs 2)"),
    ],
)
def test_workers_started_with_other_flags_are_refused_naming_the_flag(
    tmp_path, mnist_dir, flags, named
):
    logdir = tmp_path / "tb"
    results = cluster_run(logdir, mnist_dir, "--run_name", "d", worker_1=flags)
    [(status0, _, err0), (status1, _, err1)] = results
    assert (status0, status1) == (1, 1), err0[-2000:] + err1[-2000:]
    assert err0 == (
        f"swsl-train: error: worker 1 was started with another {named}: start every worker "
        "with the same flags\n"
    )
    assert err1.startswith("swsl-train: error: worker 0 was started with another ")
    assert err1.count("\n") == 1 and not (logdir / "d").exists()


def test_peer_that_never_comes_up_is_named_after_a_bounded_wait(tmp_path, mnist_dir):
    ports = free_ports(2)
    args = ["--logdir", str(tmp_path / "tb"), "--data_dir", str(mnist_dir), *TINY]
    [(status, _, err)] = finished([start_worker(0, ports, [*args, "--peer_timeout", "2"])])
    assert status == 1
    assert err == (
        f"swsl-train: error: worker 0: worker 1 at 127.0.0.1:{ports[1]} did not come up "
        "within 2 s; start every worker with the same TF_CONFIG cluster, or raise "
        "--peer_timeout\n"
    )
    assert not (tmp_path / "tb").exists()


def test_a_signal_to_one_worker_stops_every_worker_at_the_same_step(tmp_path, mnist_dir):
    logdir = tmp_path / "tb"
    (status0, out0, err0), (status1, out1, err1) = cluster_run(
        logdir, mnist_dir, "--run_name", "t", script_for_worker_0=TERMINATED_AT_EPOCH_2
    )
    assert (status0, status1) == (143, 143), err0[-2000:] + err1[-2000:]
    assert err0.endswith(
        "swsl-train: interrupted by SIGTERM while training; 1 complete epoch(s) saved\n"
    )
    # Every worker prints the chief's command, not its own temporary folder.
    command = f"swsl-train --resume --logdir {logdir} --run_name t"
    assert out0.endswith(f"Resume with:\n  {command}\n") and out1.endswith(f"  {command}\n")
    metrics = json.loads((logdir / "t" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and len(metrics["epochs"]) == 1


def test_a_peer_that_answers_but_never_starts_is_a_bounded_wait(tmp_path, mnist_dir):
    ports = free_ports(2)
    args = ["--logdir", str(tmp_path / "tb"), "--data_dir", str(mnist_dir), *TINY]
    with socket.create_server(("127.0.0.1", ports[1])):  # answers, but is no TensorFlow
        [(status, _, err)] = finished([start_worker(0, ports, [*args, "--peer_timeout", "3"])])
    assert status == -9
    assert err.endswith(
        "swsl-train: error: worker 0: the cluster did not start within 3 s although every "
        "peer had answered (did one stop?); start every worker again\n"
    )
