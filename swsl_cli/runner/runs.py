"""Run folders under `--logdir`: every file of a run, created fresh, never overwritten,
checkpointed atomically and found again for `--resume`.

No TensorFlow here: a bad `--logdir` or `--resume` is refused before it loads.
A run folder holds:

    config.json            the settings (what `--resume` restores)
    metrics.json           status, per-epoch metrics, final test figures
    lock                   names the process training the run (the lock itself is on the folder)
    checkpoints/epoch-N/   model.keras + state.json of the last two complete epochs
    model.keras            the final model (after the test evaluation)
    kernel_images/         PNG pictures of the layers
    train/ validation/ layers/   TensorBoard event files

Whatever else a run folder holds is the user's: nothing here deletes it, and no
symbolic link inside a run folder is followed, for reading or writing. What is
read back (settings, checkpoint state, metrics) is checked before it is used:
a damaged file is refused in one line that names it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import shlex
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from swsl_cli.runner import distribute
from swsl_cli.runner.config import DECLARATIONS, PROG, RESUME_OVERRIDES, Config
from swsl_cli.runner.interrupts import raise_if_interrupted

CHECKPOINTS = "checkpoints"
PARTIAL = "partial-"
EPOCH_FOLDER = re.compile(r"epoch-(\d+)$")
KEPT_CHECKPOINTS = 2  # the newest and one before it, for a resume when the newest is damaged
EVENTS = "events.out.tfevents."
# A run's JSON files are a few kB (100,000 epochs of metrics: about 25 MB).
MAX_JSON_BYTES = 64 << 20
LOCK_RECORD = 128  # bytes of `lock` that name its holder, written in place, never truncated
# The settings that decide the network's weights: a checkpoint of other values is another run's.
ARCHITECTURE_SETTINGS = (
    "layer",
    "head",
    "n_filters",
    "centroid_grid",
    "n_centroids",
    "centroids_trainable",
    "rank",
    "combining",
)
_FILE_KINDS = (
    (stat.S_ISLNK, "symbolic link"),
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "named pipe"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


class RunError(Exception):
    """The run folder cannot be used; the message says why and what to do."""


class ForeignCheckpoint(RunError):
    """A restored checkpoint is not of this run's network (refused before training)."""


def write_error(path: Path, error: OSError) -> RunError:
    """A one-line error for a failed write that names the file (disk full, read-only, ...)."""
    return RunError(f"cannot write {path}: {error.strerror or error}")


def file_kind(mode: int) -> str:
    """`symbolic link`, `folder`, `named pipe`, ... for an `lstat` mode; `file` for a regular one."""
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "file")


def _kind_of(path: Path) -> str:
    """`file_kind` of what `path` names now (never through a link)."""
    try:
        return file_kind(os.lstat(path).st_mode)
    except OSError:
        return "file that vanished"


# Files: read and written without following a link, regular files only.


def read_regular_file(path: Path, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes.

    Raises `OSError` (its `strerror` says why) for a missing file, a symbolic
    link (never followed), a pipe or device (never opened for long: a named
    pipe is opened without waiting for a writer) or a larger file.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, "a symbolic link, which is not followed", str(path)
            ) from None
        raise
    with open(descriptor, "rb", closefd=True) as stream:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            kind = file_kind(info.st_mode)
            raise OSError(errno.EINVAL, f"a {kind}, not a regular file", str(path))
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size:,} bytes, more than {limit:,}", str(path))
        return stream.read(limit + 1)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a `RunError` saying the file is missing or damaged."""
    try:
        value = json.loads(read_regular_file(path))
    except FileNotFoundError:
        raise RunError(f"{what} {path} is missing") from None
    except OSError as error:
        raise RunError(f"{what} {path} is unreadable ({error.strerror or error})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RunError(f"{what} {path} is damaged ({error})") from None
    if not isinstance(value, dict):
        raise RunError(f"{what} {path} is damaged (not a JSON object)")
    return value


def _no_link(folder: Path) -> None:
    """Refuses to write into `folder` when it is a symbolic link (a planted one)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(os.lstat(folder).st_mode):
            raise RunError(
                f"{folder} is a symbolic link, not a folder swsl-train made; it writes nothing "
                "through a link: remove the link"
            )


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(temporary)` and renames the result over `path`.

    A crash or a full disk leaves the old file or the new one, never half of
    one, and no temporary file behind. The temporary file is created here,
    exclusively (never an existing file or a link planted under its name), and
    the rename replaces a link at `path` without writing through it.
    """
    _no_link(path.parent)
    temporary = path.with_name(f"{PARTIAL}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(temporary, flags, 0o644))
        write(temporary)
        raise_if_interrupted()  # a signal that the writer's library swallowed
        os.replace(temporary, path)
    except OSError as error:
        raise write_error(path, error) from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def write_json(path: Path, data: dict) -> None:
    """Writes JSON atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def file_digest(path: Path) -> str:
    """The SHA-256 of a regular file (never through a link), as hex."""
    digest = hashlib.sha256()
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def architecture_settings(config: Config) -> str:
    """16 hex digits of the settings that decide the network's weights (`ARCHITECTURE_SETTINGS`)."""
    values = {name: getattr(config, name) for name in ARCHITECTURE_SETTINGS if config.applies(name)}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def architecture(config: Config, parameters: int) -> dict:
    """What a checkpoint records of its network: the settings' digest and the parameter count."""
    return {"settings": architecture_settings(config), "parameters": parameters}


def _state_problem(state: dict, number: int, planned: int) -> str | None:
    """Why a checkpoint's `state.json` cannot be the state of epoch `number` of a run of
    `planned` epochs; None when it can."""
    epoch = state.get("epoch")
    if not _positive_int(epoch) or epoch != number:
        return f"says epoch {json.dumps(epoch)}, not {number} as its folder's name"
    if number > planned:
        return f"is epoch {number} of a run of {planned} epochs (a stray or copied folder)"
    epochs = state.get("epochs")
    if not isinstance(epochs, list) or len(epochs) != number:
        return f"lists {len(epochs) if isinstance(epochs, list) else 'no'} epochs, not {number}"
    for index, entry in enumerate(epochs, 1):
        if not isinstance(entry, dict) or entry.get("epoch") != index:
            return f"holds a damaged entry for epoch {index}"
        if not all(isinstance(key, str) and _number(value) for key, value in entry.items()):
            return f"holds a value that is not a number in epoch {index}"
    digest = state.get("model_sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        return "lacks the model's SHA-256"
    if not isinstance(state.get("data_fingerprint", ""), str):
        return "holds a data fingerprint that is not text"
    if "global_batch" in state and not _positive_int(state["global_batch"]):
        return "holds a global batch that is not a positive integer"
    recorded = state.get("architecture", {})
    if not isinstance(recorded, dict) or not (
        isinstance(recorded.get("settings", ""), str)
        and (_positive_int(recorded["parameters"]) if "parameters" in recorded else True)
    ):
        return "holds a damaged architecture record"
    return None


@dataclass(frozen=True)
class Checkpoint:
    """One complete epoch: its folder, the model file and the saved state (checked)."""

    folder: Path
    state: dict
    # The parameter count the run's `metrics.json` reports, for checkpoints without a record.
    run_parameters: int | None = None

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def model(self) -> Path:
        return self.folder / "model.keras"

    @property
    def parameters(self) -> int | None:
        """The parameter count its network had when saved; None for checkpoints saved before
        the record existed (0.3.1 and earlier)."""
        return self.state.get("architecture", {}).get("parameters")


def check_restored(checkpoint: Checkpoint, parameters: int) -> None:
    """Refuses a restored model whose parameter count is not the checkpoint's record (or,
    for a checkpoint that has none, the run's `metrics.json`)."""
    expected = checkpoint.parameters or checkpoint.run_parameters
    if expected is not None and expected != parameters:
        raise ForeignCheckpoint(
            f"checkpoint {checkpoint.model} holds a network of {parameters:,} parameters, not "
            f"the {expected:,} of this run's settings: it was copied from another run; "
            "remove it (an earlier epoch is then resumed) or start a new run"
        )


# What swsl-train writes into a run folder, by the folder it is in: anything else
# is the user's. `walk`: one of its folders, looked into; `file`, `folder`: its own.
def _own_entry(parent: str | None, entry: os.DirEntry) -> str:
    """`file`, `folder` or `walk` for an entry swsl-train writes in a run folder, else ``."""
    name = entry.name
    if entry.is_symlink():
        return ""
    is_dir = entry.is_dir(follow_symlinks=False)
    if parent is None:
        if is_dir:
            return (
                "walk"
                if name in ("train", "validation", "layers", "kernel_images", CHECKPOINTS)
                else ""
            )
        own = name in ("config.json", "metrics.json", "lock", "model.keras")
        return "file" if own or name.startswith((EVENTS, PARTIAL)) else ""
    if parent == CHECKPOINTS:
        if is_dir and name.startswith(PARTIAL):
            return "folder"
        if is_dir and EPOCH_FOLDER.match(name):
            with os.scandir(entry.path) as contents:
                names = {item.name for item in contents}
            return "folder" if names <= {"model.keras", "state.json"} else ""
        return ""
    if parent == "kernel_images":
        return "file" if not is_dir and name.endswith(".png") or name.startswith(PARTIAL) else ""
    return "file" if not is_dir and name.startswith(EVENTS) else ""


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

    @property
    def folders(self) -> tuple[Path, ...]:
        """Every folder swsl-train writes into, the run folder first."""
        names = ("kernel_images", CHECKPOINTS, "train", "validation", "layers")
        return (self.root, *(self.root / name for name in names))

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
        if not os.path.lexists(self.metrics):
            return {}
        return read_json(self.metrics, "metrics file")

    def save_model(self, save: Callable[[Path], None]) -> None:
        """The final model, written atomically by `save(path)` (e.g. `model.save`)."""
        atomic_write(self.model, save)

    def save_checkpoint(self, save: Callable[[Path], None], state: dict) -> Checkpoint:
        """Commits one epoch: model and state written into a partial folder, then one rename.

        `state.json` records the model file's SHA-256, so a damaged model is
        refused on resume. Of the older epochs, the one before this is kept
        (resumed when this one turns out damaged); the others are removed, and
        nothing else in `checkpoints/`.
        """
        epoch = int(state["epoch"])
        final = self.checkpoints / f"epoch-{epoch}"
        _no_link(self.checkpoints)
        partial = self.checkpoints / f"{PARTIAL}{os.getpid()}-{secrets.token_hex(4)}-epoch-{epoch}"
        superseded = None
        try:
            self.checkpoints.mkdir(exist_ok=True)
            partial.mkdir()
            save(partial / "model.keras")
            state = {**state, "model_sha256": file_digest(partial / "model.keras")}
            (partial / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
            if os.path.lexists(final):  # an epoch trained again after a crash: the new one wins
                if not stat.S_ISDIR(os.lstat(final).st_mode):
                    raise OSError(errno.EEXIST, f"{final.name} exists and is no epoch folder")
                superseded = final.with_name(f"{PARTIAL}{os.getpid()}-superseded-{final.name}")
                os.rename(final, superseded)
            os.rename(partial, final)
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise write_error(final, error) from None
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if superseded is not None:
            shutil.rmtree(superseded, ignore_errors=True)
        with contextlib.suppress(RunError):
            for number, folder in self.epoch_folders():
                if number <= epoch - KEPT_CHECKPOINTS:
                    shutil.rmtree(folder, ignore_errors=True)
        return Checkpoint(final, state)

    def epoch_folders(self) -> list[tuple[int, Path]]:
        """`(N, checkpoints/epoch-N)` of every epoch folder (no links), the newest first."""
        try:
            entries = list(os.scandir(self.checkpoints))
        except FileNotFoundError:
            return []
        except OSError as error:
            raise RunError(f"cannot read {self.checkpoints}: {error.strerror or error}") from None
        return sorted(
            (
                (int(match.group(1)), Path(entry.path))
                for entry in entries
                if (match := EPOCH_FOLDER.match(entry.name)) and entry.is_dir(follow_symlinks=False)
            ),
            reverse=True,
        )

    def _checked_checkpoint(self, folder: Path, number: int, config: Config) -> Checkpoint:
        """The checkpoint in `folder` (epoch-`number`), checked against `config`; `RunError`
        naming the damaged or foreign file otherwise."""
        state_file = folder / "state.json"
        state = read_json(state_file, "checkpoint state")
        problem = _state_problem(state, number, config.n_epochs)
        if problem is not None:
            raise RunError(f"checkpoint state {state_file} {problem}")
        settings = state.get("architecture", {}).get("settings")
        if settings is not None and settings != architecture_settings(config):
            names = ", ".join(f"--{name}" for name in ARCHITECTURE_SETTINGS if config.applies(name))
            raise RunError(
                f"checkpoint {folder} was saved by a run with other network settings "
                f"({names}) than {self.config} holds: it was copied from another run"
            )
        checkpoint = Checkpoint(folder, state)
        try:
            intact = file_digest(checkpoint.model) == state["model_sha256"]
        except OSError:
            intact = False
        if not intact:
            raise RunError(
                f"checkpoint {checkpoint.model} is missing or damaged (its SHA-256 does not "
                "match state.json)"
            )
        return checkpoint

    def usable_checkpoint(self, config: Config) -> tuple[Checkpoint | None, list[str]]:
        """The newest checkpoint that is intact and this run's (`config`), and a warning for
        each newer one skipped; `(None, [])` when there is none at all.

        Raises `RunError` naming the newest checkpoint's problem when there are
        epoch folders but none of them can be resumed.
        """
        _no_link(self.checkpoints)
        if os.path.lexists(self.checkpoints) and not self.checkpoints.is_dir():
            raise RunError(f"{self.checkpoints} is a file, not a folder; start a new run")
        problems = []
        for number, folder in self.epoch_folders():
            try:
                checkpoint = self._checked_checkpoint(folder, number, config)
            except RunError as error:
                problems.append(str(error))
                continue
            notes = [f"{problem}; skipped, resuming from {folder.name}" for problem in problems]
            return checkpoint, notes
        if problems:
            more = f" (and {len(problems) - 1} older checkpoint(s))" if len(problems) > 1 else ""
            raise RunError(f"{problems[0]}{more}; this run cannot be resumed, start a new one")
        return None, []

    def latest_checkpoint(self, config: Config | None = None) -> Checkpoint | None:
        """The checkpoint `usable_checkpoint` picks (for the run's own settings by default)."""
        return self.usable_checkpoint(config or self.read_config())[0]

    def check_folders(self) -> None:
        """Refuses a run whose folders (`checkpoints/`, `train/`, ...) are links or files."""
        for folder in self.folders[1:]:
            try:
                mode = os.lstat(folder).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(mode):
                raise RunError(
                    f"{folder} is a {file_kind(mode)}, not a folder swsl-train made; it writes "
                    "nothing through a link: remove it, or start a new run"
                )

    def check_writable(self) -> None:
        """Refuses a run folder that this user cannot write, naming it."""
        for folder in self.folders:
            if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
                raise RunError(
                    f"run folder {self.root} is read-only ({folder} is not writable by this "
                    "user): make it writable (chmod -R u+w), or copy the run and --resume the copy"
                )

    def remove_partial_files(self) -> None:
        """Removes what a killed process left half-written (`partial-*`), never through a link."""
        for folder in (self.root, self.checkpoints, self.kernel_images):
            try:
                entries = list(os.scandir(folder)) if not folder.is_symlink() else []
            except OSError:
                continue
            for entry in entries:
                if not entry.name.startswith(PARTIAL):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _walk(self, folder: Path, parent: str | None):
        """(path, kind) of every entry of `folder` and its own subfolders; `kind` as `_own_entry`."""
        with os.scandir(folder) as entries:
            entries = sorted(entries, key=lambda item: item.name)
        for entry in entries:
            kind = _own_entry(parent, entry)
            yield Path(entry.path), kind
            if kind == "walk":
                yield from self._walk(Path(entry.path), entry.name)

    def foreign_entries(self) -> list[Path]:
        """What the run folder holds that swsl-train did not write (links included)."""
        return [path for path, kind in self._walk(self.root, None) if not kind]

    def remove_own_files(self, keep_lock: bool = False) -> bool:
        """Removes what swsl-train wrote here (never through a link), and the run folder
        itself when nothing else is left; True when it is gone."""
        try:
            entries = list(self._walk(self.root, None))
        except OSError:
            return False
        for path, kind in entries:
            if kind == "file" and not (keep_lock and path == self.lock_file):
                with contextlib.suppress(OSError):
                    path.unlink()
            elif kind == "folder":
                shutil.rmtree(path, ignore_errors=True)
        for path, kind in [*reversed(entries), (self.root, "walk")]:
            if kind == "walk":
                with contextlib.suppress(OSError):
                    path.rmdir()
        return not os.path.lexists(self.root)

    def holder(self) -> str | None:
        """`process N on HOST` that `lock` names, or None."""
        try:
            text = read_regular_file(self.lock_file, 4096).decode("utf-8", "replace")
        except (OSError, ValueError):
            return None
        match = re.match(r"process \d+ on [^\s]+", text.strip())
        return match.group(0) if match else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds the run's lock: a second process training the same run is refused.

        Two `flock`s: one on the run folder itself, which no deleted or
        replaced file can undo, and one on `lock`, which a network file system
        shares between machines. `lock` is opened without following a link,
        never truncated and never removed; its first bytes name the holder.
        Both are released when the process ends, however it ends.
        """
        folder = self._open_folder()
        try:
            self._flock(folder)
            record = self._open_lock_file(folder)
            try:
                yield
            finally:
                if record is not None:
                    os.close(record)
        finally:
            os.close(folder)

    def _open_folder(self) -> int:
        try:
            mode = os.lstat(self.root).st_mode
            if not stat.S_ISDIR(mode):
                raise RunError(f"run folder {self.root} is a {file_kind(mode)}, not a folder")
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise RunError(f"cannot open run folder {self.root}: {error.strerror}") from None

    def _flock(self, descriptor: int) -> None:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise RunError(f"cannot lock {self.root}: {error.strerror}") from None
            owner = self.holder() or "another process"
            raise RunError(
                f"run {self.root} is being trained by {owner}; wait for it to end or stop it"
            ) from None

    def _open_lock_file(self, folder: int) -> int | None:
        """`lock`, held: opened without following a link, checked to be the file that the
        name still points to (not one replaced meanwhile), its record written in place.
        None where the file system refuses it (the folder's lock still holds)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        for _ in range(3):
            try:
                descriptor = os.open("lock", flags, 0o644, dir_fd=folder)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.EISDIR):
                    raise RunError(
                        f"{self.lock_file} is a {_kind_of(self.lock_file)}, not the file "
                        "swsl-train makes; nothing is written through it: remove it and try again"
                    ) from None
                return None  # read-only, no permission: the folder's lock alone holds
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                os.close(descriptor)
                raise RunError(
                    f"{self.lock_file} is a {file_kind(info.st_mode)}, not the file swsl-train "
                    "makes: remove it and try again"
                )
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(descriptor)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    return None
                raise RunError(
                    f"run {self.root} is being trained by {self.holder() or 'another process'}; "
                    "wait for it to end or stop it"
                ) from None
            try:
                same = os.stat("lock", dir_fd=folder, follow_symlinks=False).st_ino == info.st_ino
            except FileNotFoundError:
                same = False
            if same:
                record = f"process {os.getpid()} on {os.uname().nodename}"
                with contextlib.suppress(OSError):
                    os.pwrite(
                        descriptor,
                        record.encode()[: LOCK_RECORD - 1].ljust(LOCK_RECORD - 1) + b"\n",
                        0,
                    )
                return descriptor
            os.close(descriptor)  # replaced between open and flock: lock the new one
        return None


def effective_status(run: RunDir, status: str) -> str:
    """`status` as `metrics.json` says it, or `killed` when it says a process is at work
    (`running`, `finishing`) and that process, on this machine, is gone."""
    if status not in ("running", "finishing"):
        return status
    holder = run.holder()
    match = re.fullmatch(r"process (\d+) on (\S+)", holder or "")
    if not match or match.group(2) != os.uname().nodename:
        return status
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return "killed"
    except OSError:
        pass
    return status


def _no_dangling_link(logdir: Path) -> None:
    """Refuses a `--logdir` that is a symbolic link to nothing (a missing target, a loop)."""
    if logdir.is_symlink() and not logdir.exists():
        raise RunError(
            f"--logdir {logdir} is a symbolic link that leads to no folder (its target is "
            "missing, or it loops); choose another --logdir"
        )


def _usable_logdir(logdir: Path) -> None:
    _no_dangling_link(logdir)
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


def create(
    config: Config, now: float | None = None, stack: contextlib.ExitStack | None = None
) -> tuple[RunDir, Config]:
    """A new run folder holding `config` (seeded by `with_seed`); never an existing one.

    With a `stack`, the run's lock is taken before anything is written into the
    folder and held until the stack closes.
    """
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
        if stack is not None:
            stack.enter_context(run.lock())
        try:
            run.write_config(config)
        except BaseException:
            run.remove_own_files()
            raise
        return run, config
    raise RunError(
        f"run folder {logdir / names[0]} already exists; pass --resume to continue it, "
        "or another --run_name"
    )


def _latest_run(logdir: Path) -> Path:
    """The run folder (no link) whose checkpoints changed last."""
    candidates = []
    try:
        runs = list(logdir.iterdir())
    except OSError as error:
        raise RunError(f"--resume: cannot read --logdir {logdir}: {error.strerror}") from None
    for run in runs:
        checkpoints = RunDir(run).checkpoints
        try:
            if run.is_symlink() or checkpoints.is_symlink() or not checkpoints.is_dir():
                continue
            if RunDir(run).epoch_folders():
                candidates.append((checkpoints.stat().st_mtime, run))
        except (OSError, RunError):
            continue
    if not candidates:
        raise RunError(f"--resume: no run with a checkpoint in --logdir {logdir}")
    return max(candidates)[1]


def _flag_value(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class Resumption:
    """What `--resume` continues: the run, its settings, and its last intact epoch (None:
    the run saved none, and starts again from its first epoch)."""

    run: RunDir
    config: Config
    checkpoint: Checkpoint | None
    notes: tuple[str, ...] = ()


def find_run(config: Config) -> RunDir:
    """The run `--resume` names (`--run_name`), or the newest with a checkpoint."""
    logdir = Path(config.logdir).expanduser()
    if not logdir.is_dir():
        raise RunError(f"--resume: --logdir {logdir} does not exist")
    root = logdir / config.run_name if config.run_name else _latest_run(logdir)
    if root.is_symlink():
        target = Path(os.path.realpath(root))
        raise RunError(
            f"--resume: run folder {root} is a symbolic link; swsl-train follows no link to a "
            f"run: pass --logdir {shlex.quote(str(target.parent))} --run_name "
            f"{shlex.quote(target.name)}"
        )
    if not root.is_dir():
        raise RunError(f"--resume: no run {config.run_name!r} in --logdir {logdir}")
    return RunDir(root)


def _tolerant_metrics(run: RunDir) -> tuple[dict, list[str]]:
    """`metrics.json` for the checks of `resume`, which need only its status: a damaged one
    is said and read as empty (it is written anew from the checkpoint)."""
    try:
        return run.read_metrics(), []
    except RunError as error:
        return {}, [f"{error}; it is written anew from the checkpoint"]


def _foreign_note(run: RunDir) -> str | None:
    """Why a run with no complete epoch cannot start again in its folder; None when it can."""
    try:
        foreign = run.foreign_entries()
    except OSError as error:
        return f"its folder cannot be read ({error.strerror or error})"
    if not os.path.lexists(run.config):
        return "it has no config.json"
    if foreign:
        shown = ", ".join(str(path.relative_to(run.root)) for path in foreign[:3])
        return f"it holds files swsl-train did not write ({shown})"
    return None


def resume(run: RunDir, config: Config, given: frozenset[str]) -> Resumption:
    """The run to continue, with its saved settings; nothing is written here.

    Every setting comes back from the run's `config.json`. Of the flags
    `given` on the command line, those in `RESUME_OVERRIDES` replace the
    saved values: a larger `--n_epochs` extends the run, `--data_dir` may
    point at the same data elsewhere (checked by the caller), `--quiet` and
    `--peer_timeout` say how this process prints and waits. Any other flag
    that contradicts the saved run is refused, even at its default value.
    The newest intact checkpoint of the run's own settings is continued
    (newer damaged or foreign ones are skipped, with a note); a run that saved
    none starts again from its first epoch, when its folder holds only what
    swsl-train wrote. Call it holding the run's lock, so that no other process
    changes the run.
    """
    root = run.root
    saved = run.read_config()
    for name in sorted(given - set(RESUME_OVERRIDES)):
        if getattr(config, name) != getattr(saved, name):
            raise RunError(
                f"--resume: --{name} {_flag_value(getattr(config, name))} contradicts the saved "
                f"run's {_flag_value(getattr(saved, name))}; drop the flag or start a new run"
            )
    overrides = {name: getattr(config, name) for name in given & set(RESUME_OVERRIDES)}
    epochs = overrides.get("n_epochs", saved.n_epochs)
    if epochs < saved.n_epochs:
        raise RunError(
            f"--resume: --n_epochs {epochs} is fewer than the saved run's {saved.n_epochs}; "
            "a run can be extended, not shortened"
        )
    # The run is where it was found, whatever the saved config says of its place.
    place = {"logdir": config.logdir, "run_name": root.name, "resume": True}
    resumed = dataclasses.replace(saved, **{**overrides, **place})
    checkpoint, notes = run.usable_checkpoint(saved)
    if checkpoint is None:
        problem = _foreign_note(run)
        if problem is not None:
            raise RunError(
                f"--resume: run {root.name!r} has no complete epoch to resume from, and "
                f"{problem}: start a new run (or move them away to start it again)"
            )
        notes.append(
            f"run {root.name!r} has no complete epoch: it starts again from its first epoch, "
            "with its saved settings"
        )
        return Resumption(run, resumed, None, tuple(notes))
    metrics, damaged = _tolerant_metrics(run)
    notes += damaged
    parameters = metrics.get("parameters")
    total = parameters.get("total") if isinstance(parameters, dict) else None
    if _positive_int(total):
        checkpoint = dataclasses.replace(checkpoint, run_parameters=total)
    if metrics.get("status") == "completed" and epochs <= checkpoint.epoch:
        accuracy = metrics.get("test_accuracy")
        figure = f", test accuracy {accuracy:.4f}" if _number(accuracy) else ""
        raise RunError(
            f"--resume: run {root.name!r} is complete ({checkpoint.epoch} epochs{figure}); "
            f"pass --n_epochs larger than {checkpoint.epoch} to train on"
        )
    return Resumption(run, resumed, checkpoint, tuple(notes))


def absolute_data_dir(config: Config) -> Config:
    """`--data_dir` as an absolute path, so the saved run resumes from any folder."""
    if config.data_dir is None:
        return config
    return dataclasses.replace(config, data_dir=str(Path(config.data_dir).expanduser().resolve()))


def check_new_run(config: Config) -> None:
    """Refuses at once what `create` would refuse later (an unusable `--logdir`, a taken
    name), creating nothing: a run that cannot start leaves no folder behind."""
    logdir = Path(config.logdir).expanduser()
    _no_dangling_link(logdir)
    existing = next(path for path in (logdir, *logdir.parents) if path.exists())
    if existing == logdir and not logdir.is_dir():
        raise RunError(f"--logdir {logdir} is a file, not a folder; choose another --logdir")
    if not existing.is_dir():
        raise RunError(f"cannot create --logdir {logdir}: Not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == logdir:
            raise RunError(f"--logdir {logdir} is not writable; choose another --logdir")
        raise RunError(f"cannot create --logdir {logdir}: Permission denied")
    if config.run_name and os.path.lexists(logdir / config.run_name):
        raise RunError(
            f"run folder {logdir / config.run_name} already exists; pass --resume to continue "
            "it, or another --run_name"
        )


def abandoned_start(config: Config, stack: contextlib.ExitStack) -> RunDir | None:
    """The folder of `--run_name`, locked, when it holds a run that ended before its first
    epoch did (killed: nothing else stops a run that way) and nothing but what swsl-train
    wrote; a new run of that name then starts there. None when there is no such folder."""
    if not config.run_name:
        return None
    root = Path(config.logdir).expanduser() / config.run_name
    if root.is_symlink() or not root.is_dir():
        return None
    run = RunDir(root)
    try:
        if run.epoch_folders() or _foreign_note(run) is not None:
            return None
    except RunError:
        return None
    stack.enter_context(run.lock())
    if run.epoch_folders() or _foreign_note(run) is not None:  # changed before the lock
        return None
    return run


@dataclass
class OpenedRun:
    """The run to train, resolved before anything heavy loads.

    Attributes:
        config: the effective config: a drawn seed, `--data_dir` absolute, a
            resumed run's saved settings with the overrides given, and on a
            worker that is not the chief its scratch `--logdir`.
        run: the folder `--resume` continues or a run starts again in (its
            lock held), or None for a new run until `create` makes it.
        checkpoint: the last intact epoch a resumed run continues from.
        cluster: the workers of a multi-worker run, else None.
        notes: warnings for the user (checkpoints skipped, a run started again).
        logdir: the run's `--logdir` (on every worker the chief's, which the
            resume command names).
    """

    config: Config
    run: RunDir | None
    checkpoint: Checkpoint | None
    cluster: distribute.Cluster | None = None
    notes: tuple[str, ...] = ()
    logdir: str | None = None

    @property
    def writes_scratch(self) -> bool:
        """Whether this process is a worker whose copy of the run is temporary."""
        return not distribute.is_chief(self.cluster)

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None

    @property
    def restarted(self) -> bool:
        """Whether the run starts again, from its first epoch, in a folder that holds it."""
        return self.checkpoint is None and self.run is not None

    def create(self, stack: contextlib.ExitStack) -> RunDir:
        """Makes a new run's folder (or clears the one it starts again in) and holds its lock
        until `stack` closes."""
        if self.run is None:
            self.run, self.config = create(self.config, stack=stack)
        else:
            self.run.remove_own_files(keep_lock=True)
            self.run.root.mkdir(exist_ok=True)
            self.run.write_config(self.config)
        return self.run

    def resume_command(self) -> str:
        """The command that continues this run, on any worker the chief's."""
        return resume_command(dataclasses.replace(self.config, logdir=self.logdir))


def open_run(config: Config, given: frozenset[str], stack: contextlib.ExitStack) -> OpenedRun:
    """Resolves the run `config` asks for; every check of paths, of the resume target and of
    its settings files happens here, with no TensorFlow.

    `--resume`: finds the run, takes its lock (on the chief: other workers only
    read the chief's run) and applies the saved settings (`resume`). A new
    run gets its seed, and its `--logdir` and name are checked; its folder is
    made by `OpenedRun.create` once the data have loaded, so a run that cannot
    start leaves nothing behind; a run of that name that was killed before its
    first epoch ended starts again in its folder. A worker that is not the
    chief writes into a temporary folder, removed when `stack` closes. Locks
    are held, and temporary folders kept, until then.
    """
    config = absolute_data_dir(config)
    notes: tuple[str, ...] = ()
    if config.resume:
        run = find_run(config)
        # The saved strategy decides whether this process is the chief; it is read
        # again, under the lock, by `resume`.
        cluster = distribute.cluster_of(run.read_config().distribute, os.environ)
        if distribute.is_chief(cluster):
            run.check_writable()
            stack.enter_context(run.lock())
            run.check_folders()
        resumption = resume(run, config, given)
        config, checkpoint, notes = resumption.config, resumption.checkpoint, resumption.notes
        if checkpoint is None and not distribute.is_chief(cluster):
            run = None  # starts again: its scratch copy is a new run
    else:
        cluster = distribute.cluster_of(config.distribute, os.environ)
        config, run, checkpoint = with_seed(config), None, None
        if distribute.is_chief(cluster):
            run = abandoned_start(config, stack)
            if run is None:
                check_new_run(config)
            else:
                run.check_writable()
                run.check_folders()
                notes = (
                    f"run folder {run.root} holds a run that was killed before its first epoch "
                    "ended; the new run starts there",
                )
    logdir = config.logdir
    scratch = stack.enter_context(distribute.scratch_logdir(cluster))
    if scratch is not None:
        # The same run, written under `scratch`; a resumed one still restores the
        # chief's checkpoint (read only), so every worker starts from the same state.
        config = dataclasses.replace(config, logdir=str(scratch))
        if run is not None:
            run = RunDir(scratch / run.root.name)
            run.root.mkdir()
    return OpenedRun(config, run, checkpoint, cluster, notes, logdir)


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


def run_identity(opened: OpenedRun, fingerprint: str) -> dict[str, str]:
    """What every worker of one run must agree on, by name: each setting that is not a
    place (`--data_dir`, `--logdir`, ...), the data's fingerprint, and the checkpoint a
    resumed run continues from."""
    identity = {
        f"--{name}": _flag_value(getattr(opened.config, name))
        for name in DECLARATIONS
        if name not in RESUME_OVERRIDES or name == "n_epochs"
    }
    identity["data"] = fingerprint
    checkpoint = opened.checkpoint
    identity["checkpoint"] = (
        f"epoch {checkpoint.epoch} ({checkpoint.state['model_sha256'][:12]})"
        if checkpoint
        else "none"
    )
    return identity
