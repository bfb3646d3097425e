"""The Ray Tune half of `swsl-train --sweep`: the trials of `sweep` on a Ray cluster.

Without `RAY_ADDRESS` Ray starts on this machine alone (no dashboard, no
usage report, loopback only) and stops with the sweep; with it, the sweep
joins that cluster and every node writes to the shared `--logdir`. Each
trial is one Tune trial whose trainable (`run_trial`) runs the trial's own
`python -m swsl_cli` process and waits for it, relaying the driver's
Ctrl-C to it. Imported only when a sweep has trials to train: Ray loads here.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from swsl_cli.runner.config import PROG
from swsl_cli.runner.console import Console
from swsl_cli.runner.interrupts import handled_by
from swsl_cli.runner.sweep import (
    INSTALL_HINT,
    LOGS,
    POLL_SECONDS,
    Step,
    SweepError,
    outcome,
    trial_command,
)


def run_trial(config: dict, steps: dict, control) -> dict:
    """Ray Tune's trainable: one trial's `swsl-train` process, stopped when `control` says.

    Runs in a Ray worker, on any node of the cluster. The process gets its
    own session, so a Ctrl-C in the driver's terminal reaches it only through
    `control`, once per signal; its output goes to the trial's log.
    """
    import ray

    step = steps[config["trial"]]
    if ray.get(control.signals.remote()):  # stopped before this trial began
        return {"returncode": None}
    logdir = Path(step["logdir"])
    log = logdir / LOGS / f"{config['trial']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    threads = str(step["threads"])
    env = {
        **os.environ,
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": threads,
        "PYTHONUNBUFFERED": "1",
    }
    if step["shares_gpu"]:  # several trials on one GPU: none may take all of its memory
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    command = [sys.executable, "-m", "swsl_cli", *step["argv"]]
    with log.open("a") as output:
        output.write(f"$ {shlex.join([PROG, *step['argv']])}\n")
        output.flush()
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=logdir,
            env=env,
            start_new_session=True,
        )
        relayed = 0
        while True:
            try:
                returncode = process.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            try:
                wanted = ray.get(control.signals.remote())
            except ray.exceptions.RayError:  # the driver is gone: stop as if it had asked
                wanted = max(relayed, 1)
            for _ in range(wanted - relayed):
                process.send_signal(signal.SIGINT)
            relayed = wanted
    return {"returncode": returncode}


@dataclass
class Resources:
    """What each trial reserves on the cluster, and its TensorFlow threads."""

    cpus: float
    gpus: float
    threads: int
    where: str


def trial_resources(workers: int, local: bool) -> Resources:
    """CPU (and GPU) shares so that `workers` trials run at once: cores / workers each,
    at most one node's worth, so that every trial fits on one node."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    total_cpus = sum(node.get("CPU", 0) for node in nodes)
    total_gpus = sum(node.get("GPU", 0) for node in nodes)
    cpus = min(total_cpus / workers, max(node.get("CPU", 0) for node in nodes))
    gpus = min(total_gpus / workers, max(node.get("GPU", 0) for node in nodes))
    where = "local Ray" if local else f"the Ray cluster at {os.environ['RAY_ADDRESS']}"
    where += f", {len(nodes)} node(s), {total_cpus:g} CPUs" + (
        f", {total_gpus:g} GPUs" if total_gpus else ""
    )
    return Resources(cpus, gpus, max(1, math.floor(cpus)), where)


def ray_environment() -> None:
    """What Ray and Tune read from the environment, set before they load: no usage report,
    no result files of Tune's own, no SIGINT handler of Tune's (the sweep stops its trials
    itself)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables of Tune's own


def start_ray() -> bool:
    """Connects to `RAY_ADDRESS`'s cluster, or starts Ray on this machine alone (no
    dashboard, loopback only); returns whether it is local."""
    address = os.environ.get("RAY_ADDRESS")
    import logging

    import ray

    options = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # Local workers import this very swsl_cli, installed or not.
            package_parent = str(Path(__file__).resolve().parents[2])
            path = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (package_parent, path)))
            ray.init(
                num_cpus=_cores(),
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                **options,
            )
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {address}" if address else "Ray on this machine"
        raise SweepError(f"cannot start {where}: {' '.join(str(error).split())}") from None
    return not address


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class SignalRelay:
    """The driver's SIGINT/SIGTERM handler while Tune runs: it only takes note (a Ray call
    inside a signal handler could deadlock); the Tune loop relays each signal to the
    trials (`SweepProgress.on_step_begin`)."""

    def __init__(self, console: Console):
        self.console = console
        self.signal_name: str | None = None
        self.count = 0

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        self.count += 1
        if self.signal_name is None:
            self.signal_name = name
            self.console.error(
                f"{name}: stopping the sweep: running trials stop after their current step and "
                "no other starts (again to stop the trials at once)"
            )
        else:
            self.console.error(f"{name} again: the running trials stop at once")


def tune_trials(
    steps: list[Step], logdir: Path, workers: int, quiet: bool, console: Console
) -> tuple[dict[str, tuple[int | None, str]], str | None]:
    """Trains `steps` through Ray Tune, `workers` at once.

    Returns each trial's exit status (None: not run) and error text, and the
    name of the signal that stopped the sweep (None when it ran to its end).
    """
    ray_environment()
    try:
        from ray import tune
    except ImportError as error:
        raise SweepError(f"--sweep needs Ray Tune ({error}): {INSTALL_HINT}") from None
    local = start_ray()
    import ray

    try:
        resources = trial_resources(workers, local)
        console.line(
            f"{len(steps)} trial(s) to train, {workers} at once on {resources.where}: "
            f"{resources.cpus:g} CPU(s) and {resources.threads} TensorFlow thread(s) each"
            + (f", {resources.gpus:g} GPU(s)" if resources.gpus else "")
        )
        specs = {
            step.trial.name: {
                "argv": trial_command(step, logdir),
                "logdir": str(logdir),
                "threads": resources.threads,
                "shares_gpu": 0 < resources.gpus < 1,
            }
            for step in steps
        }
        control = ray.remote(num_cpus=0)(SweepControl).remote()
        relay = SignalRelay(console)
        progress = sweep_progress(tune, steps, logdir, quiet, console, relay, control)
        trainable = tune.with_parameters(run_trial, steps=specs, control=control)
        wanted = {"cpu": resources.cpus} | ({"gpu": resources.gpus} if resources.gpus else {})
        storage = tempfile.mkdtemp(prefix="swsl-sweep-")
        try:
            tuner = tune.Tuner(
                tune.with_resources(trainable, wanted),
                param_space={"trial": tune.grid_search([step.trial.name for step in steps])},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=workers,
                    reuse_actors=True,
                    trial_name_creator=lambda trial: trial.config["trial"],
                    trial_dirname_creator=lambda trial: trial.config["trial"],
                ),
                run_config=tune.RunConfig(
                    name="sweep",
                    storage_path=storage,
                    verbose=0,
                    callbacks=[progress],
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
            with handled_by(relay):
                tuner.fit()
        except tune.TuneError as error:
            raise SweepError(f"Ray Tune: {' '.join(str(error).split())}") from None
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        return progress.results, relay.signal_name
    finally:
        ray.shutdown()


class SweepControl:
    """A Ray actor: how many stop signals the driver has relayed to the trials."""

    def __init__(self):
        self.count = 0

    def relay(self, count: int) -> None:
        self.count = count

    def signals(self) -> int:
        return self.count


def sweep_progress(tune, steps, logdir, quiet, console, relay, control):
    """A Tune callback, called in the driver's loop: relays signals, and (unless `quiet`)
    prints each trial's start, new epochs and end."""
    by_name = {step.trial.name: step for step in steps}
    total = len(steps)

    class SweepProgress(tune.Callback):
        def __init__(self):
            self.results: dict[str, tuple[int | None, str]] = {}
            self.running: dict[str, int] = {}  # trial -> epochs printed
            self.relayed = 0
            self.last_poll = 0.0
            self.started = 0

        def say(self, text: str) -> None:
            if not quiet:
                console.line(text)

        def on_step_begin(self, iteration, trials, **info):
            if relay.count > self.relayed:
                self.relayed = relay.count
                control.relay.remote(self.relayed)
            now = time.monotonic()
            if quiet or now - self.last_poll < POLL_SECONDS:
                return
            self.last_poll = now
            for name, printed in self.running.items():
                epochs = _epochs_of(logdir / name)
                for entry in epochs[printed:]:
                    planned = by_name[name].trial.config.n_epochs
                    accuracy = entry.get("val_accuracy")
                    figure = f"  val_accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
                    self.say(f"{name}: epoch {entry.get('epoch')}/{planned}{figure}")
                self.running[name] = max(printed, len(epochs))

        def on_trial_start(self, iteration, trials, trial, **info):
            name = trial.config["trial"]
            if relay.count:
                return  # it will return at once, not started
            step = by_name[name]
            self.started += 1
            self.running[name] = step.epochs_done
            what = (
                f"resuming after epoch {step.epochs_done}" if step.action == "resume" else "new run"
            )
            self.say(f"[{self.started}/{total}] {name}: {what}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            name = trial.config["trial"]
            returncode = (trial.last_result or {}).get("returncode")
            self.results[name] = (returncode, "")
            self.running.pop(name, None)
            if returncode is not None:
                state = outcome(by_name[name], logdir, returncode)
                self.say(f"{name}: {state.state}" + (f", {state.detail}" if state.detail else ""))

        def on_trial_error(self, iteration, trials, trial, **info):
            name = trial.config["trial"]
            text = " ".join(str(getattr(trial, "error_file", None) or "no error file").split())
            self.results[name] = (None, f"Ray Tune: the trial's worker failed ({text})")
            self.running.pop(name, None)
            self.say(f"{name}: failed in Ray")

    return SweepProgress()


def _epochs_of(folder: Path) -> list[dict]:
    """The epochs a run's `metrics.json` lists so far (none when it is absent or mid-write)."""
    try:
        epochs = json.loads((folder / "metrics.json").read_text()).get("epochs")
    except (OSError, ValueError, AttributeError):
        return []
    return (
        [entry for entry in epochs if isinstance(entry, dict)] if isinstance(epochs, list) else []
    )
