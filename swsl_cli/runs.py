"""Run folders under `--logdir`: created fresh, never overwritten, found again for `--resume`.

No TensorFlow here: a bad `--logdir` or `--resume` is refused before it loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from swsl_cli.config import EXPERIMENT_FIELDS, Config

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_MODEL = "model.keras"
CHECKPOINT_STATE = "state.json"
MODEL_FILE = "model.keras"
KERNEL_IMAGES = "kernel_images"


class RunError(Exception):
    """The run folder cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class RunDir:
    """The files of one run."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def checkpoint_model(self) -> Path:
        return self.root / CHECKPOINT_DIR / CHECKPOINT_MODEL

    @property
    def checkpoint_state(self) -> Path:
        return self.root / CHECKPOINT_DIR / CHECKPOINT_STATE

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def kernel_images(self) -> Path:
        return self.root / KERNEL_IMAGES

    def saved_state(self) -> dict | None:
        """The last complete epoch's state, or None when there is no checkpoint."""
        if not (self.checkpoint_state.is_file() and self.checkpoint_model.is_file()):
            return None
        return json.loads(self.checkpoint_state.read_text())


def write_json(path: Path, data: dict) -> None:
    """Writes JSON atomically: a crash leaves the old file or the new one, never half."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def _usable_logdir(logdir: Path) -> None:
    if logdir.exists() and not logdir.is_dir():
        raise RunError(f"--logdir {logdir} is a file, not a folder; choose another --logdir")
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create --logdir {logdir}: {error.strerror}") from None
    if not os.access(logdir, os.W_OK | os.X_OK):
        raise RunError(f"--logdir {logdir} is not writable; choose another --logdir")


def with_seed(config: Config) -> Config:
    """The config with a concrete seed and determinism setting.

    A given seed asks for a repeatable run (deterministic ops); without one a
    fresh seed is drawn and recorded, and ops may pick their fastest kernels.
    """
    given = config.seed is not None
    seed = config.seed if given else secrets.randbelow(2**31)
    deterministic = given if config.deterministic is None else config.deterministic
    return dataclasses.replace(config, seed=seed, deterministic=deterministic)


def create(config: Config, now: float | None = None) -> tuple[RunDir, Config]:
    """A new, empty run folder; an existing one is never reused without `--resume`."""
    logdir = Path(config.logdir).expanduser()
    _usable_logdir(logdir)
    config = with_seed(config)
    if config.run_name:
        names = [config.run_name]
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        base = config.default_run_name(stamp)
        names = [base] + [f"{base}-{n}" for n in range(2, 100)]
    for name in names:
        root = logdir / name
        try:
            root.mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            raise RunError(f"cannot create run folder {root}: {error.strerror}") from None
        run = RunDir(root)
        config = dataclasses.replace(config, run_name=name)
        write_json(run.config, config.to_dict())
        return run, config
    raise RunError(
        f"run folder {logdir / names[0]} already exists; pass --resume to continue it, "
        "or another --run_name"
    )


def _latest_run(logdir: Path) -> Path:
    candidates = [
        path.parent.parent for path in logdir.glob(f"*/{CHECKPOINT_DIR}/{CHECKPOINT_STATE}")
    ]
    if not candidates:
        raise RunError(f"--resume: no run with a checkpoint in --logdir {logdir}")
    return max(
        candidates, key=lambda path: (path / CHECKPOINT_DIR / CHECKPOINT_STATE).stat().st_mtime
    )


def resume(config: Config) -> tuple[RunDir, Config, dict]:
    """The run to continue, its saved config merged with this command line, and its state.

    Flags that define the experiment (grid, filters, seed, ...) come from the
    saved run; giving one a different non-default value is refused.
    Everything else (epochs, verbosity, quiet, ...) follows the command line.
    """
    logdir = Path(config.logdir).expanduser()
    if not logdir.is_dir():
        raise RunError(f"--resume: --logdir {logdir} does not exist")
    root = logdir / config.run_name if config.run_name else _latest_run(logdir)
    run = RunDir(root)
    if not root.is_dir():
        raise RunError(f"--resume: no run {config.run_name!r} in --logdir {logdir}")
    state = run.saved_state()
    if state is None:
        raise RunError(
            f"--resume: run {root.name!r} has no complete epoch to resume from; start it anew"
        )
    if not run.config.is_file():
        raise RunError(f"--resume: run {root.name!r} lacks its {CONFIG_FILE}")
    saved = json.loads(run.config.read_text())
    defaults = Config()
    merged = {}
    for name in EXPERIMENT_FIELDS:
        given, stored = getattr(config, name), saved.get(name)
        if isinstance(given, tuple):
            stored = tuple(stored) if stored is not None else None
        if given != getattr(defaults, name) and given != stored:
            raise RunError(
                f"--resume: --{name} {given} contradicts the saved run's {stored}; "
                "drop the flag or start a new run"
            )
        merged[name] = stored
    merged["deterministic"] = saved.get("deterministic", True)
    resumed = dataclasses.replace(config, run_name=root.name, **merged)
    if state["epoch"] >= resumed.n_epochs:
        raise RunError(
            f"--resume: run {root.name!r} already completed {state['epoch']} epochs; "
            f"pass a larger --n_epochs to train on"
        )
    write_json(run.config, resumed.to_dict())
    return run, resumed, state
