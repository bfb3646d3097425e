"""Run folders under `--logdir`: every file of a run, created fresh, never overwritten,
checkpointed atomically and found again for `--resume`.

No TensorFlow here: a bad `--logdir` or `--resume` is refused before it loads.
A run folder holds:

    config.json            the settings (what `--resume` restores)
    metrics.json           status, per-epoch metrics, final test figures
    lock                   held (flock) by the process training the run
    checkpoints/epoch-N/   model.keras + state.json of the last complete epoch
    model.keras            the final model (after the test evaluation)
    kernel_images/         PNG pictures of the layers
    train/ validation/ layers/   TensorBoard event files
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from swsl_cli.runner import distribute
from swsl_cli.runner.config import PROG, RESUME_OVERRIDES, Config

CHECKPOINTS = "checkpoints"
PARTIAL = "partial-"
EPOCH_FOLDER = re.compile(r"epoch-(\d+)$")


class RunError(Exception):
    """The run folder cannot be used; the message says why and what to do."""


def write_error(path: Path, error: OSError) -> RunError:
    """A one-line error for a failed write that names the file (disk full, read-only, ...)."""
    return RunError(f"cannot write {path}: {error.strerror or error}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(temporary)` and renames the result over `path`.

    A crash or a full disk leaves the old file or the new one, never half of
    one, and no temporary file behind.
    """
    temporary = path.with_name(f"{PARTIAL}{os.getpid()}-{path.name}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise write_error(path, error) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_json(path: Path, data: dict) -> None:
    """Writes JSON atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda temporary: temporary.write_text(text))


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a `RunError` saying the file is damaged."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{what} {path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunError(f"{what} {path} is damaged ({error}); start a new run") from None
    if not isinstance(value, dict):
        raise RunError(f"{what} {path} is damaged (not a JSON object); start a new run")
    return value


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """One complete epoch: its folder, the model file and the saved state."""

    folder: Path
    state: dict

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def model(self) -> Path:
        return self.folder / "model.keras"


@dataclass(frozen=True)
class RunDir:
    """The files of one run; every write to a run folder goes through here."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def model(self) -> Path:
        return self.root / "model.keras"

    @property
    def kernel_images(self) -> Path:
        return self.root / "kernel_images"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    def write_config(self, config: Config) -> None:
        write_json(self.config, config.to_dict())

    def read_config(self) -> Config:
        try:
            return Config.from_dict(read_json(self.config, "settings file"))
        except (TypeError, ValueError) as error:
            raise RunError(
                f"settings file {self.config} is damaged ({error}); start a new run"
            ) from None

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics, metrics)

    def read_metrics(self) -> dict:
        """The metrics written so far; an empty dict when there are none."""
        if not self.metrics.exists():
            return {}
        return read_json(self.metrics, "metrics file")

    def save_model(self, save: Callable[[Path], None]) -> None:
        """The final model, written atomically by `save(path)` (e.g. `model.save`)."""
        atomic_write(self.model, save)

    def save_checkpoint(self, save: Callable[[Path], None], state: dict) -> Checkpoint:
        """Commits one epoch: model and state written into a partial folder, then one rename.

        `state.json` records the model file's SHA-256, so a damaged model is
        refused on resume. Older epochs are removed after the commit.
        """
        epoch = int(state["epoch"])
        final = self.checkpoints / f"epoch-{epoch}"
        partial = self.checkpoints / f"{PARTIAL}{os.getpid()}-epoch-{epoch}"
        try:
            partial.mkdir(parents=True, exist_ok=True)
            save(partial / "model.keras")
            state = {**state, "model_sha256": file_digest(partial / "model.keras")}
            (partial / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
            if final.exists():  # an epoch trained again after a crash: the new one wins
                shutil.rmtree(final)
            os.rename(partial, final)
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise write_error(final, error) from None
        for folder in self.checkpoints.iterdir():
            if folder != final:
                shutil.rmtree(folder, ignore_errors=True)
        return Checkpoint(final, state)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest committed epoch, checked against its model's hash; None when none."""
        if not self.checkpoints.is_dir():
            return None
        epochs = [
            (int(match.group(1)), folder)
            for folder in self.checkpoints.iterdir()
            if (match := EPOCH_FOLDER.match(folder.name))
        ]
        if not epochs:
            return None
        _, folder = max(epochs)
        checkpoint = Checkpoint(folder, read_json(folder / "state.json", "checkpoint state"))
        try:
            intact = file_digest(checkpoint.model) == checkpoint.state.get("model_sha256")
        except OSError:
            intact = False
        if not intact:
            raise RunError(
                f"checkpoint {checkpoint.model} is missing or damaged (its SHA-256 does not "
                "match state.json); this run cannot be resumed, start a new one"
            )
        return checkpoint

    def remove_partial_files(self) -> None:
        """Removes what a killed process left half-written (`partial-*`)."""
        for folder in (self.root, self.checkpoints, self.kernel_images):
            for path in folder.glob(f"{PARTIAL}*") if folder.is_dir() else ():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds the run's lock: a second process training the same run is refused."""
        try:
            handle = self.lock_file.open("a+")
        except OSError as error:
            raise write_error(self.lock_file, error) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise write_error(self.lock_file, error) from None
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                raise RunError(
                    f"run {self.root} is being trained by {owner}; wait for it to end or stop it"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {os.uname().nodename}\n")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                with contextlib.suppress(FileNotFoundError):
                    self.lock_file.unlink()


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
    """A new run folder holding `config` (seeded by `with_seed`); never an existing one."""
    if config.seed is None or config.deterministic is None:
        raise ValueError("create() takes a config with a seed: pass it through with_seed()")
    logdir = Path(config.logdir).expanduser()
    _usable_logdir(logdir)
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
        try:
            run.write_config(config)
        except RunError:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return run, config
    raise RunError(
        f"run folder {logdir / names[0]} already exists; pass --resume to continue it, "
        "or another --run_name"
    )


def _latest_run(logdir: Path) -> Path:
    candidates = [path.parent.parent for path in logdir.glob(f"*/{CHECKPOINTS}/epoch-*")]
    if not candidates:
        raise RunError(f"--resume: no run with a checkpoint in --logdir {logdir}")
    return max(candidates, key=lambda path: (path / CHECKPOINTS).stat().st_mtime)


def _flag_value(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class Resumption:
    """What `--resume` continues: the run, its settings, and its last complete epoch."""

    run: RunDir
    config: Config
    checkpoint: Checkpoint


def find_run(config: Config) -> RunDir:
    """The run `--resume` names (`--run_name`), or the newest with a checkpoint."""
    logdir = Path(config.logdir).expanduser()
    if not logdir.is_dir():
        raise RunError(f"--resume: --logdir {logdir} does not exist")
    root = logdir / config.run_name if config.run_name else _latest_run(logdir)
    if not root.is_dir():
        raise RunError(f"--resume: no run {config.run_name!r} in --logdir {logdir}")
    return RunDir(root)


def resume(run: RunDir, config: Config, given: frozenset[str]) -> Resumption:
    """The run to continue, with its saved settings; nothing is written here.

    Every setting comes back from the run's `config.json`. Of the flags
    `given` on the command line, those in `RESUME_OVERRIDES` replace the
    saved values: a larger `--n_epochs` extends the run, `--data_dir` may
    point at the same data elsewhere (checked by the caller), `--quiet` and
    `--peer_timeout` say how this process prints and waits. Any other flag
    that contradicts the saved run is refused, even at its default value.
    Call it holding the run's lock, so that no other process changes the run.
    """
    root = run.root
    saved = run.read_config()
    for name in sorted(given - set(RESUME_OVERRIDES)):
        if getattr(config, name) != getattr(saved, name):
            raise RunError(
                f"--resume: --{name} {_flag_value(getattr(config, name))} contradicts the saved "
                f"run's {_flag_value(getattr(saved, name))}; drop the flag or start a new run"
            )
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise RunError(
            f"--resume: run {root.name!r} has no complete epoch to resume from; start it anew"
        )
    overrides = {name: getattr(config, name) for name in given & set(RESUME_OVERRIDES)}
    epochs = overrides.get("n_epochs", saved.n_epochs)
    if epochs < saved.n_epochs:
        raise RunError(
            f"--resume: --n_epochs {epochs} is fewer than the saved run's {saved.n_epochs}; "
            "a run can be extended, not shortened"
        )
    metrics = run.read_metrics()
    if metrics.get("status") == "completed" and epochs <= checkpoint.epoch:
        raise RunError(
            f"--resume: run {root.name!r} is complete ({checkpoint.epoch} epochs, test accuracy "
            f"{metrics.get('test_accuracy', 0):.4f}); pass --n_epochs larger than "
            f"{checkpoint.epoch} to train on"
        )
    # The run is where it was found, whatever the saved config says of its place.
    place = {"logdir": config.logdir, "run_name": root.name, "resume": True}
    resumed = dataclasses.replace(saved, **{**overrides, **place})
    return Resumption(run, resumed, checkpoint)


def absolute_data_dir(config: Config) -> Config:
    """`--data_dir` as an absolute path, so the saved run resumes from any folder."""
    if config.data_dir is None:
        return config
    return dataclasses.replace(config, data_dir=str(Path(config.data_dir).expanduser().resolve()))


def check_new_run(config: Config) -> None:
    """Refuses at once what `create` would refuse later (an unusable `--logdir`, a taken
    name), creating nothing: a run that cannot start leaves no folder behind."""
    logdir = Path(config.logdir).expanduser()
    existing = next(path for path in (logdir, *logdir.parents) if path.exists())
    if existing == logdir and not logdir.is_dir():
        raise RunError(f"--logdir {logdir} is a file, not a folder; choose another --logdir")
    if not existing.is_dir():
        raise RunError(f"cannot create --logdir {logdir}: Not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == logdir:
            raise RunError(f"--logdir {logdir} is not writable; choose another --logdir")
        raise RunError(f"cannot create --logdir {logdir}: Permission denied")
    if config.run_name and (logdir / config.run_name).exists():
        raise RunError(
            f"run folder {logdir / config.run_name} already exists; pass --resume to continue "
            "it, or another --run_name"
        )


@dataclass
class OpenedRun:
    """The run to train, resolved before anything heavy loads.

    Attributes:
        config: the effective config: a drawn seed, `--data_dir` absolute, a
            resumed run's saved settings with the overrides given, and on a
            worker that is not the chief its scratch `--logdir`.
        run: the folder `--resume` continues (its lock held), or None for a
            new run until `create` makes it.
        checkpoint: the last complete epoch a resumed run continues from.
        cluster: the workers of a multi-worker run, else None.
    """

    config: Config
    run: RunDir | None
    checkpoint: Checkpoint | None
    cluster: distribute.Cluster | None = None

    @property
    def writes_scratch(self) -> bool:
        """Whether this process is a worker whose copy of the run is temporary."""
        return not distribute.is_chief(self.cluster)

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None

    def create(self, stack: contextlib.ExitStack) -> RunDir:
        """Makes a new run's folder and holds its lock until `stack` closes."""
        self.run, self.config = create(self.config)
        stack.enter_context(self.run.lock())
        return self.run


def open_run(config: Config, given: frozenset[str], stack: contextlib.ExitStack) -> OpenedRun:
    """Resolves the run `config` asks for; every check of paths, of the resume target and of
    its settings files happens here, with no TensorFlow.

    `--resume`: finds the run, takes its lock (on the chief: other workers only
    read the chief's run) and applies the saved settings (`resume`). A new
    run gets its seed, and its `--logdir` and name are checked; its folder is
    made by `OpenedRun.create` once the data have loaded, so a run that cannot
    start leaves nothing behind. A worker that is not the chief writes into a
    temporary folder, removed when `stack` closes. Locks are held, and
    temporary folders kept, until then.
    """
    config = absolute_data_dir(config)
    if config.resume:
        run = find_run(config)
        # The saved strategy decides whether this process is the chief; it is read
        # again, under the lock, by `resume`.
        cluster = distribute.cluster_of(run.read_config().distribute, os.environ)
        if distribute.is_chief(cluster):
            stack.enter_context(run.lock())
        resumption = resume(run, config, given)
        config, checkpoint = resumption.config, resumption.checkpoint
    else:
        cluster = distribute.cluster_of(config.distribute, os.environ)
        config, run, checkpoint = with_seed(config), None, None
        if distribute.is_chief(cluster):
            check_new_run(config)
    scratch = stack.enter_context(distribute.scratch_logdir(cluster))
    if scratch is not None:
        # The same run, written under `scratch`; a resumed one still restores the
        # chief's checkpoint (read only), so every worker starts from the same state.
        config = dataclasses.replace(config, logdir=str(scratch))
        if run is not None:
            run = RunDir(scratch / run.root.name)
            run.root.mkdir()
    return OpenedRun(config, run, checkpoint, cluster)


def check_resumable(opened: OpenedRun, fingerprint: str, source: str, replicas: int) -> None:
    """The refusals of `--resume` that need the loaded data and the strategy.

    The data must be the run's (by fingerprint), and the global batch the
    run's: the learning rate is a function of the step, and another number
    of replicas would count steps of another size.
    """
    config, state = opened.config, opened.checkpoint.state
    saved = state.get("data_fingerprint")
    if saved is not None and saved != fingerprint:
        raise RunError(
            f"--resume: {source} is not the data run {config.run_name!r} was trained on (its "
            "fingerprint differs); pass --data_dir with the run's data"
        )
    saved_batch = state.get("global_batch")
    global_batch = config.batch_size * replicas
    if saved_batch is not None and saved_batch != global_batch:
        raise RunError(
            f"--resume: run {config.run_name!r} was trained with a global batch of {saved_batch} "
            f"({config.batch_size} per replica); on {replicas} replica(s) it would be "
            f"{global_batch}: resume it on as many devices (or workers) as it started with"
        )


def resume_command(config: Config) -> str:
    """The shell command that continues this run, quoted to paste as is."""
    logdir = str(Path(config.logdir).expanduser().resolve())
    return shlex.join([PROG, "--resume", "--logdir", logdir, "--run_name", config.run_name])
