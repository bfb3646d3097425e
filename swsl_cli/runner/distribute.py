"""Training on several workers: `TF_CONFIG`, the strategy, and what each worker writes.

`--distribute multi_worker` runs one `swsl-train` process per worker, each
with the same flags and a `TF_CONFIG` naming the whole cluster and its own
place in it; TensorFlow's `MultiWorkerMirroredStrategy` keeps one replica of
the model per device and all-reduces the gradients of every step.

- `read_cluster` checks `TF_CONFIG` in pure Python (no TensorFlow), so the
  CLI refuses a bad one at parse time.
- `make_strategy` waits a bounded time for every peer, and names the ones
  that never came up; a watchdog process bounds TensorFlow's own start.
- Only the chief (worker 0, or the `chief` task) writes the run folder; every
  other worker writes into a temporary folder (`scratch_logdir`, used by
  `runs.open_run`) removed at the end (TF's pattern: all workers run the same
  callbacks, so their collective steps stay in step).
- `prepare_model_for_fit` works around Keras 3's `fit` with this strategy
  (keras-team/keras#20585).
- `check_same_run` refuses, on every worker, workers started with other
  settings, other data or another checkpoint, naming the first difference.
- `signal_on_any_worker` makes a signal to one worker stop all of them after
  the same step; `peer_failures` turns a lost peer into one line that says
  what was saved.
- Each worker reads the whole data set and keeps its part of every global
  batch (`AutoShardPolicy.DATA`): the seeded epoch order stays the same as
  on one machine, so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from swsl_cli import __version__
from swsl_cli.runner.config import PROG

TF_CONFIG = "TF_CONFIG"
JOBS = ("chief", "worker")  # the jobs that train; TF's `ps` and `evaluator` are not used here
PROBE_SECONDS = 1.0
POLL_SECONDS = 0.25
STOP_SIGNALS = ("SIGHUP", "SIGINT", "SIGTERM")  # in order of precedence when workers differ


class ClusterError(Exception):
    """`TF_CONFIG` is unusable; the message says what is wrong (a usage error, exit 2)."""


class PeerError(Exception):
    """A peer worker never joined or stopped mid-training (a runtime error, exit 1)."""


@dataclass(frozen=True)
class Cluster:
    """The workers of `TF_CONFIG` and this process's place among them."""

    jobs: dict[str, tuple[str, ...]]  # job name -> "host:port" of each task
    task_type: str
    task_index: int

    @property
    def tasks(self) -> list[tuple[str, int, str]]:
        """Every training task as (job, index, address), the chief first."""
        return [
            (job, index, address)
            for job in JOBS
            for index, address in enumerate(self.jobs.get(job, ()))
        ]

    @property
    def size(self) -> int:
        return len(self.tasks)

    @property
    def is_chief(self) -> bool:
        """TF's rule: the `chief` task if there is one, else worker 0."""
        chief = ("chief", 0) if "chief" in self.jobs else ("worker", 0)
        return (self.task_type, self.task_index) == chief

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.task_index}"

    def peers_and_self(self) -> list[tuple[str, str]]:
        """(name, address) of every task."""
        return [(f"{job} {index}", address) for job, index, address in self.tasks]

    def peers(self) -> list[tuple[str, str]]:
        """(name, address) of every other task."""
        return [
            (f"{job} {index}", address)
            for job, index, address in self.tasks
            if (job, index) != (self.task_type, self.task_index)
        ]


def _address(text, job: str, index: int) -> str:
    host, _, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(
            f"TF_CONFIG cluster {job}[{index}] must be 'host:port', got {json.dumps(text)}"
        )
    return text


def read_cluster(text: str | None) -> Cluster:
    """The cluster of a `TF_CONFIG` value; raises `ClusterError` with a one-line reason.

    Expected: {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
    "index": N}}, optionally with one `chief` task in the cluster.
    """
    shape = (
        'expected {"cluster": {"worker": ["host:port", ...]}, '
        '"task": {"type": "worker", "index": N}}'
    )
    if not text or not text.strip():
        raise ClusterError(
            "--distribute multi_worker needs the TF_CONFIG environment variable "
            f"(cluster and task of this worker): {shape}; see the README"
        )
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({error}); {shape}") from None
    if not isinstance(value, dict):
        raise ClusterError(f"TF_CONFIG must be a JSON object; {shape}")
    cluster, task = value.get("cluster"), value.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ClusterError(f"TF_CONFIG lacks its 'cluster' or 'task' object; {shape}")
    unused = sorted(set(cluster) - set(JOBS))
    if unused:
        raise ClusterError(
            f"TF_CONFIG cluster job {unused[0]!r} is not supported: multi_worker trains with "
            "'worker' tasks (and optionally one 'chief')"
        )
    jobs = {}
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ClusterError(
                f"TF_CONFIG cluster {job!r} must be a non-empty list of 'host:port', "
                f"got {json.dumps(addresses)}"
            )
        jobs[job] = tuple(_address(text, job, index) for index, text in enumerate(addresses))
    if "worker" not in jobs and "chief" not in jobs:
        raise ClusterError(f"TF_CONFIG cluster names no 'worker'; {shape}")
    if len(jobs.get("chief", ())) > 1:
        raise ClusterError(f"TF_CONFIG cluster may have one 'chief', got {len(jobs['chief'])}")
    addresses = [address for job in jobs.values() for address in job]
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise ClusterError(
            f"TF_CONFIG cluster names {repeated[0]} twice; give each task its own port"
        )
    task_type, index = task.get("type"), task.get("index")
    if task_type not in jobs:
        raise ClusterError(
            f"TF_CONFIG task type {json.dumps(task_type)} is not a job of its cluster "
            f"({', '.join(jobs)}); this worker must be one of them"
        )
    count = len(jobs[task_type])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ClusterError(
            f"TF_CONFIG task index {json.dumps(index)} is not a {task_type} of the cluster "
            f"(it has {count}: index 0 to {count - 1})"
        )
    return Cluster(jobs, task_type, index)


def check_command(text: str | None, seed: int | None, resume: bool) -> Cluster:
    """What the CLI checks for `--distribute multi_worker`, before TensorFlow loads.

    Several workers must draw the same epoch order, so they need one `--seed`
    (a resumed run has its seed saved).
    """
    cluster = read_cluster(text)
    if cluster.size > 1 and seed is None and not resume:
        raise ClusterError(
            f"--distribute multi_worker with {cluster.size} workers needs --seed "
            "(the same on every worker, so they shuffle alike)"
        )
    return cluster


def cluster_of(distribute: str, environ: dict) -> Cluster | None:
    """The cluster of a multi-worker run; None for the other strategies."""
    if distribute != "multi_worker":
        return None
    return read_cluster(environ.get(TF_CONFIG))


def is_chief(cluster: Cluster | None) -> bool:
    """Whether this process writes the run folder (always, without a cluster)."""
    return cluster is None or cluster.is_chief


@contextlib.contextmanager
def scratch_logdir(cluster: Cluster | None) -> Iterator[Path | None]:
    """None on the chief; on any other worker a temporary `--logdir` for its own copy of
    the run's outputs, removed when the block ends (however it ends)."""
    if is_chief(cluster):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix=f"swsl-{cluster.task_type}{cluster.task_index}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _listening(address: str) -> bool:
    try:
        with socket.create_connection(_split(address), timeout=PROBE_SECONDS):
            return True
    except OSError:
        return False


def wait_for_peers(cluster: Cluster, timeout_s: float) -> None:
    """Returns once something listens at every peer's address; `PeerError` after `timeout_s`.

    TensorFlow itself waits for a missing peer forever, inside a call that
    holds the interpreter, so the wait happens here, before it starts: this
    task listens on its own address meanwhile (the kernel answers the peers'
    probes; nothing is read), then frees the port for TensorFlow's server.
    """
    own = dict(cluster.peers_and_self())[cluster.name]
    try:
        listener = socket.create_server(_split(own), backlog=64)
    except OSError as error:
        raise PeerError(
            f"{cluster.name} cannot listen on its TF_CONFIG address {own}: "
            f"{error.strerror or error}; is another process using that port?"
        ) from None
    deadline = time.monotonic() + timeout_s
    waiting = cluster.peers()
    with listener:
        while True:
            waiting = [(name, address) for name, address in waiting if not _listening(address)]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(f"{name} at {address}" for name, address in waiting)
                raise PeerError(
                    f"{cluster.name}: {names} did not come up within {timeout_s:g} s; start "
                    "every worker with the same TF_CONFIG cluster, or raise --peer_timeout"
                )
            time.sleep(POLL_SECONDS)


WATCHDOG = """
import os, sys, time
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(seconds)
if os.getppid() == parent:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(parent, 9)
"""


@contextlib.contextmanager
def _deadline(seconds: float, message: str) -> Iterator[None]:
    """Kills this process (exit 137) with `message` if the block outlasts `seconds`.

    TensorFlow starts a cluster inside calls that hold the interpreter and wait
    for a peer that stopped after answering forever; only another process can
    end that wait, so a small watchdog process sleeps beside the block.
    """
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(seconds), message],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait()


def make_strategy(kind: str, peer_timeout_s: float = 300.0, environ: dict | None = None):
    """`none`: the default strategy; `mirrored`: every local GPU (or the logical CPU
    devices when there is none); `multi_worker`: the workers of `TF_CONFIG`, once all
    of them are up (waiting at most `peer_timeout_s` seconds for the peers to answer,
    else `PeerError`, and as long again for TensorFlow to start the cluster)."""
    import tensorflow as tf

    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if kind == "multi_worker":
        cluster = cluster_of(kind, os.environ if environ is None else environ)
        if cluster.size > 1:
            wait_for_peers(cluster, peer_timeout_s)
        # TensorFlow's preemption watcher takes over SIGTERM; the runner keeps its own.
        sigterm = signal.getsignal(signal.SIGTERM)
        stalled = (
            f"{PROG}: error: {cluster.name}: the cluster did not start within "
            f"{peer_timeout_s:g} s although every peer had answered (did one stop?); start "
            "every worker again"
        )
        with _deadline(peer_timeout_s, stalled):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            strategy.reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0), axis=None)  # all joined
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
        return strategy
    return tf.distribute.get_strategy()


def in_multi_worker_mode(strategy) -> bool:
    """Whether `strategy` spans more than one worker process."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, ())) for job in JOBS) > 1


def prepare_model_for_fit(model, strategy) -> None:
    """Lets Keras 3's `fit`/`evaluate` run under a multi-worker strategy.

    Two steps of Keras's TensorFlow trainer fail with several workers
    (keras-team/keras#20585, Keras 3.0 to at least 3.15):

    - `_maybe_symbolic_build` reduces the first distributed batch with
      `strategy.reduce("MEAN", ...)` only to learn its shapes, which
      multi-worker collectives reject ("unsupported type PerReplica"). The
      model is built already (its layers from `keras.Input`, or loaded), so
      this build is skipped for this model; metrics and optimizer state are
      then built when the train step is traced, as Keras does without a
      strategy.
    - every step's logs are reduced with `strategy.reduce("MEAN", v, axis=0)`,
      which fails on scalar logs; the train and test steps of this model
      return each log as a one-element vector instead, whose reduction is the
      mean over all replicas, a scalar again.

    Both changes touch this model object only. Nothing happens for the other
    strategies or a one-worker cluster, where Keras works as is.
    """
    if not in_multi_worker_mode(strategy):
        return
    if not callable(getattr(model, "_maybe_symbolic_build", None)):
        return  # a Keras without this step has no such bug to avoid
    model._maybe_symbolic_build = _skip_symbolic_build
    model.train_step = _logs_as_vectors(model.train_step)
    model.test_step = _logs_as_vectors(model.test_step)


def _skip_symbolic_build(iterator=None, data_batch=None):
    """Stands in for Keras's `_maybe_symbolic_build` on a built multi-worker model."""


def _logs_as_vectors(step):
    import keras

    def step_with_vector_logs(data):
        return {name: keras.ops.reshape(value, (1,)) for name, value in step(data).items()}

    return step_with_vector_logs


def _digest(text: str) -> float:
    """48 bits of `text`'s SHA-256 as a float64, which a sum of one such value and zeros
    keeps exactly."""
    return float(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))


def _gathered(strategy, row: list[float]):
    """Every worker's `row`, one line per task (the chief first): each worker fills its own
    line of a zero matrix, and one all-reduce (a sum) hands every worker all of them."""
    import numpy as np
    import tensorflow as tf

    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    tasks = [(job, index) for job in JOBS for index in range(len(spec.get(job, ())))]
    matrix = np.zeros((len(tasks), len(row)))
    matrix[tasks.index((resolver.task_type, resolver.task_id))] = row
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, tf.constant(matrix), axis=None)
    own = tasks.index((resolver.task_type, resolver.task_id))
    return [f"{job} {index}" for job, index in tasks], total.numpy(), own


def check_same_run(strategy, identity: dict[str, str]) -> None:
    """Refuses (`PeerError`, on every worker alike) workers that differ in any value of
    `identity` (`runs.run_identity`: each setting, the data's fingerprint, the checkpoint
    resumed), naming the first value that differs.

    Two small all-reduces after the cluster started, before any model exists: the
    first compares the swsl-cli version and the names compared, the second their
    values. A worker that stops meanwhile is reported as a lost peer.
    """
    if not in_multi_worker_mode(strategy):
        return
    names = list(identity)
    with peer_failures(strategy):
        workers, header, own = _gathered(strategy, [_digest(f"{__version__} {names}")])
        if len(set(header[:, 0])) > 1:
            other = next(
                workers[i] for i, value in enumerate(header[:, 0]) if value != header[own, 0]
            )
            raise PeerError(
                f"{other} runs another version of swsl-cli than {workers[own]} ({__version__}): "
                "install the same version on every worker"
            )
        _, values, _ = _gathered(strategy, [_digest(identity[name]) for name in names])
    for column, name in enumerate(names):
        others = [
            workers[i] for i in range(len(workers)) if values[i, column] != values[own, column]
        ]
        if not others:
            continue
        this = f"{workers[own]}: {name} {identity[name]}"
        if name == "data":
            raise PeerError(
                f"{others[0]} loaded other data than {workers[own]} (fingerprint "
                f"{identity[name]} here): give every worker the same data and --max_train_examples"
            )
        if name == "checkpoint":
            raise PeerError(
                f"{others[0]} resumes another checkpoint than {workers[own]} ({identity[name]} "
                "here): give every worker the same --logdir and --run_name"
            )
        raise PeerError(
            f"{others[0]} was started with another {name} than {workers[own]} ({this}): start "
            "every worker with the same flags"
        )


def signal_on_any_worker(strategy, signal_name: str | None) -> str | None:
    """The signal (`SIGHUP`, `SIGINT` or `SIGTERM`) that any worker received, else None.

    Every worker calls this at the same step, so all of them stop after that
    step together; a worker stopping on its own would leave the others waiting
    in their next step's all-reduce. One small all-reduce per call; with one
    worker, `signal_name` as it is. A signal that arrives during the all-reduce
    counts at the next call.
    """
    if not in_multi_worker_mode(strategy):
        return signal_name
    import tensorflow as tf

    local = [float(signal_name == name) for name in STOP_SIGNALS]
    counts = strategy.reduce(tf.distribute.ReduceOp.SUM, tf.constant(local), axis=None)
    received = [name for name, count in zip(STOP_SIGNALS, counts.numpy()) if count > 0]
    return received[-1] if received else None


def sharded(dataset):
    """`dataset` with every worker keeping its part of each global batch (`DATA` sharding).

    TensorFlow's default (`AUTO`) tries sharding by file first and warns before
    falling back to this; our data come from arrays, not files.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def weights_digest(model) -> str:
    """SHA-256 of the model's weights, to show that every worker ends with the same ones."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def peer_failures(strategy, saved_epochs: Callable[[], int] | None = None) -> Iterator[None]:
    """Turns the errors that mean a peer worker went away into a one-line `PeerError` that
    says what was saved (`saved_epochs()`: the last complete epoch saved, 0 for none;
    None: before training)."""
    import tensorflow as tf

    peer_gone = (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
    )
    try:
        yield
    except peer_gone as error:
        if not in_multi_worker_mode(strategy):
            raise
        text = error.message or str(error)
        resolver = strategy.cluster_resolver
        own = f"{resolver.task_type} {resolver.task_id}"
        named = re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)", text)
        peers = [f"{job} {task}" for job, task in named if f"{job} {task}" != own]
        who = peers[0] if peers else "a peer worker"
        if saved_epochs is None:
            raise PeerError(
                f"{who} stopped or became unreachable before training began; nothing was "
                "trained: start every worker again"
            ) from None
        epoch = saved_epochs()
        saved = (
            f"epoch {epoch} is the last one saved: start every worker again with --resume"
            if epoch
            else "no epoch was saved: start every worker again with the same command"
        )
        raise PeerError(f"{who} stopped or became unreachable during the run; {saved}") from None
