"""`swsl-train --sweep FILE`: many runs from one file, trained through Ray Tune.

A sweep file (YAML or JSON) names flags every trial gets (`fixed`), a grid
whose every combination is a trial (`grid`), optional named flag sets each
crossed with the grid (`variants`) and the seeds every combination is trained
with (`seeds`). Each trial is an ordinary run folder under `--logdir`, named
from its variant, grid values and seed, trained by its own `python -m
swsl_cli` process: TensorBoard, `--compare` and `--resume` see it as any run.

The file is checked whole before anything starts: each trial's flags go
through the runner's own parser. Run folders already there say what is left:
a completed trial is skipped, an interrupted one resumed. Ray Tune schedules
the trials (`--sweep_workers` at once, on this machine or on the cluster of
`RAY_ADDRESS`); Ctrl-C stops the running trials after their current step,
as it stops a single run.

Nothing heavy is imported here at module level: Ray and PyYAML load only
when a sweep runs, so `swsl-train --help` stays instant.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from swsl_cli import __version__
from swsl_cli.runner import cli, runs
from swsl_cli.runner.config import DECLARATIONS, PROG, Config, Role
from swsl_cli.runner.console import Console
from swsl_cli.runner.interrupts import EXIT_CODES, Interrupted, handled_by, raise_interrupted

INSTALL_HINT = 'pip install "swsl-cli[sweep]" (in a clone: pip install ".[sweep]")'
SECTIONS = ("fixed", "grid", "variants", "seeds")
DEFAULT_SEEDS = (0,)
# Flags the sweep sets for every trial itself, and what to do instead.
SWEEP_OWNED = {
    "seed": "give the seeds as `seeds: [...]`",
    "logdir": "give --logdir beside --sweep",
    "run_name": "each trial's folder is named from its settings",
    "resume": "the sweep resumes interrupted trials itself",
    "quiet": "trials always write one line per epoch to their log",
}
LOGS = "sweep-logs"  # under --logdir: one log per trial, its process's output
POLL_SECONDS = 0.25  # how often a trial checks for a stop, and the driver for new epochs
# Exit statuses of a run stopped by a signal: its own (130, 143), or the signal's when it
# arrived as the process was exiting, after the runner's handlers were gone.
STOPPED = {*EXIT_CODES.values(), -signal.SIGINT, -signal.SIGTERM}
STATES = ("completed", "interrupted", "failed", "not started")


class SweepFileError(Exception):
    """The sweep file is wrong: one line, exit status 2."""


class SweepError(Exception):
    """The sweep cannot run (missing extra, conflicting run folders, Ray): one line, exit 1."""


# --- The file --------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file's four sections, checked for shape (not yet for flag values)."""

    fixed: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    variants: dict | None = None
    seeds: tuple[int, ...] = DEFAULT_SEEDS


def read_sweep_file(path: Path) -> dict:
    """The mapping in a YAML or JSON file (`.json` is read as JSON, anything else as YAML)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SweepFileError("no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise SweepFileError(f"cannot read it ({reason})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SweepFileError(f"not valid JSON: {error}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SweepFileError(f"not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise SweepFileError(f"expected a mapping of {', '.join(SECTIONS)}")
    return data


def _flag_names(section: str, flags) -> dict:
    """`flags` (a mapping of flag names to values, or nothing) checked for shape."""
    if flags is None:
        return {}
    if not isinstance(flags, dict):
        raise SweepFileError(f"{section}: expected a mapping of flag names to values")
    for name in flags:
        if not isinstance(name, str):
            raise SweepFileError(f"{section}: flag names are text, got {name!r}")
        if name in SWEEP_OWNED:
            raise SweepFileError(f"{section}: --{name} is set by the sweep; {SWEEP_OWNED[name]}")
    return dict(flags)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)


def spec_of(data: dict) -> SweepSpec:
    """The sections of a sweep file's mapping, with every structural mistake refused."""
    unknown = [key for key in data if key not in SECTIONS]
    if unknown:
        raise SweepFileError(
            f"unknown section {unknown[0]!r}; a sweep file has {', '.join(SECTIONS)}"
        )
    fixed = _flag_names("fixed", data.get("fixed"))
    grid = _flag_names("grid", data.get("grid"))
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepFileError(f"grid: {name} must be a non-empty list of values")
        seen = [_canonical(value) for value in values]
        if len(set(seen)) != len(seen):
            raise SweepFileError(f"grid: {name} lists a value twice")
        if name in fixed:
            raise SweepFileError(f"--{name} is both in fixed and in grid; keep one")
    variants = data.get("variants")
    if variants is not None:
        if not isinstance(variants, dict) or not variants:
            raise SweepFileError("variants: expected a mapping of names to flag sets")
        for variant, flags in variants.items():
            reason = DECLARATIONS["run_name"].problem(variant)
            if not isinstance(variant, str) or reason or not re.fullmatch(r"[\w.+-]+", variant):
                raise SweepFileError(
                    f"variants: the name {variant!r} must be a plain folder name "
                    "(letters, digits, '_', '-', '.', '+'; not starting with '.' or '-')"
                )
            flags = _flag_names(f"variants: {variant}", flags)
            both = sorted(set(flags) & set(grid))
            if both:
                raise SweepFileError(
                    f"variants: {variant} sets --{both[0]}, which grid varies; keep one"
                )
            variants[variant] = flags
    seeds = data.get("seeds", list(DEFAULT_SEEDS))
    if not isinstance(seeds, list) or not seeds:
        raise SweepFileError("seeds: expected a non-empty list of integers")
    for seed in seeds:
        reason = DECLARATIONS["seed"].problem(seed)
        if reason:
            raise SweepFileError(f"seeds: each seed {reason}, got {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepFileError("seeds: a seed is listed twice")
    return SweepSpec(fixed, grid, dict(variants) if variants else None, tuple(seeds))


def parse_override(text: str):
    """The value of `--sweep_set NAME=VALUE`: YAML (`1`, `conv`, `[8, 16]`), or several
    values separated by spaces (`seeds=0 1 2`, `n_filters=8 16`)."""
    import yaml

    words = [text] if text.lstrip().startswith("[") else text.split()
    try:
        values = [yaml.safe_load(word) for word in words]
    except yaml.YAMLError:
        raise SweepFileError(f"--sweep_set: cannot read the value {text!r}") from None
    return values[0] if len(values) == 1 else values


def with_overrides(spec: SweepSpec, overrides: dict) -> SweepSpec:
    """`spec` with `--sweep_set` values for every trial: each replaces the flag wherever the
    file sets it (a grid dimension it replaces drops out of the names); `seeds` the seeds."""
    fixed, grid = dict(spec.fixed), dict(spec.grid)
    variants = {name: dict(flags) for name, flags in (spec.variants or {}).items()} or None
    seeds = spec.seeds
    for name, value in overrides.items():
        if name == "seeds":
            seeds = value if isinstance(value, list) else [value]
            continue
        fixed[name] = value
        grid.pop(name, None)
        for flags in (variants or {}).values():
            flags.pop(name, None)
    data = {"fixed": fixed, "grid": grid, "seeds": list(seeds)}
    if variants:
        data["variants"] = variants
    try:
        return spec_of(data)
    except SweepFileError as error:
        raise SweepFileError(f"--sweep_set: {error}") from None


# --- Trials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: its folder name, its flags and its validated config."""

    name: str
    flags: dict
    argv: tuple[str, ...]  # the flags as a command line (the seed included)
    config: Config


def _name_part(name: str, value) -> str:
    """A grid value in a run name: text as is, `n_epochs3`, `n_filters8-16`, `no-flag`."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = name if value else f"no-{name}"
    elif value is None:
        text = f"no-{name}"
    elif isinstance(value, (list, tuple)):
        text = name + "-".join(map(str, value))
    else:
        text = f"{name}{value}"
    return re.sub(r"[^\w.+-]", "-", text)


def trial_name(variant: str | None, grid_values: Iterable[tuple[str, object]], seed: int) -> str:
    """`variant_gridvalue..._sSEED`: readable, and the same every time the file is run."""
    parts = [variant] if variant else []
    parts += [_name_part(name, value) for name, value in grid_values]
    return "_".join([*parts, f"s{seed}"])


def command_line(flags: dict) -> list[str]:
    """`flags` (YAML values) as `swsl-train` arguments; an unknown flag is refused by name."""
    argv = []
    for name, value in flags.items():
        declaration = DECLARATIONS.get(name)
        if declaration is None:
            raise SweepFileError(f"unknown flag --{name} (see {PROG} --help)")
        if value is None:
            continue
        if declaration.kind is bool:
            if not isinstance(value, bool):
                raise SweepFileError(f"--{name} takes true or false, got {value!r}")
            if value:
                argv.append(f"--{name}")
            elif declaration.negatable:
                argv.append(f"--no-{name}")
            continue
        if isinstance(value, dict) or (isinstance(value, list) and not declaration.pair):
            raise SweepFileError(f"--{name} takes one value, got {value!r}")
        values = value if isinstance(value, list) else [value]
        argv += [f"--{name}", *(json.dumps(v) if not isinstance(v, str) else v for v in values)]
    return argv


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of `spec`, variants outermost, seeds innermost; each checked by the
    runner's parser and `Config`, and every name unique."""
    trials, names = [], set()
    for variant, variant_flags in (spec.variants or {None: {}}).items():
        for combination in itertools.product(*spec.grid.values()):
            grid_values = list(zip(spec.grid, combination))
            for seed in spec.seeds:
                name = trial_name(variant, grid_values, seed)
                flags = {**spec.fixed, **variant_flags, **dict(grid_values), "seed": seed}
                if "data_dir" in flags and isinstance(flags["data_dir"], str):
                    # The trials run elsewhere (Ray's workers): a relative path would move.
                    flags["data_dir"] = str(Path(flags["data_dir"]).expanduser().resolve())
                try:
                    argv = command_line(flags)
                    config, _ = cli.training_command(cli.given_flags(argv))
                except (SweepFileError, cli.UsageError) as error:
                    raise SweepFileError(f"trial {name}: {error}") from None
                reason = DECLARATIONS["run_name"].problem(name)
                if reason:
                    raise SweepFileError(f"trial {name}: its run name {reason}")
                if name in names:
                    raise SweepFileError(
                        f"two trials get the run name {name}; make the grid's values tell "
                        "them apart"
                    )
                names.add(name)
                trials.append(Trial(name, flags, tuple(argv), config))
    return trials


def load(path: Path, overrides: dict | None = None) -> list[Trial]:
    """The trials of the sweep file `path`, with `--sweep_set` `overrides`."""
    spec = spec_of(read_sweep_file(path))
    if overrides:
        spec = with_overrides(spec, overrides)
    return expand(spec)


# --- What is left to do ----------------------------------------------------------------


@dataclass
class Step:
    """What the sweep does with one trial: `new`, `resume`, or nothing (`done`, `stuck`)."""

    trial: Trial
    action: str
    detail: str = ""
    epochs_done: int = 0


def _differences(saved: Config, wanted: Config) -> list[str]:
    """The settings (not places) in which a saved run differs from a trial."""
    return [
        name
        for name, declaration in DECLARATIONS.items()
        if declaration.role is not Role.PLACE and getattr(saved, name) != getattr(wanted, name)
    ]


def _flag_text(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def plan_step(trial: Trial, logdir: Path) -> Step:
    """What its run folder (if any) says is left for `trial`.

    Raises `SweepError` when the folder holds another experiment (other
    settings) or cannot be read: the sweep never trains over a run.
    """
    run = runs.RunDir(logdir / trial.name)
    if not run.root.exists():
        return Step(trial, "new")
    where = f"trial {trial.name}: run folder {run.root}"
    try:
        saved = run.read_config()
        metrics = run.read_metrics()
    except runs.RunError as error:
        raise SweepError(f"{where} cannot be continued: {error}") from None
    differ = _differences(saved, trial.config)
    if differ:
        name = differ[0]
        raise SweepError(
            f"{where} was trained with --{name} {_flag_text(getattr(saved, name))}, the sweep "
            f"asks for {_flag_text(getattr(trial.config, name))}; use another --logdir, or "
            "remove that folder to train the trial anew"
        )
    epochs = metrics.get("epochs")
    done = len(epochs) if isinstance(epochs, list) else 0
    status = metrics.get("status")
    if status == "completed":
        return Step(trial, "done", epochs_done=done)
    if status == "nonfinite_loss":  # a rerun would meet the same NaN
        return Step(trial, "stuck", "the loss became NaN/inf; see its log", done)
    try:
        checkpoint = run.latest_checkpoint()
    except runs.RunError as error:
        return Step(trial, "stuck", str(error), done)
    if checkpoint is None:
        return Step(
            trial,
            "stuck",
            f"{run.root} has no complete epoch to resume; remove it to train the trial anew",
        )
    return Step(trial, "resume", epochs_done=checkpoint.epoch)


def trial_command(step: Step, logdir: Path) -> list[str]:
    """The `swsl-train` arguments that train or continue the step's trial."""
    place = ["--logdir", str(logdir), "--run_name", step.trial.name, "--quiet"]
    if step.action == "resume":
        data_dir = step.trial.flags.get("data_dir")
        return ["--resume", *place, *(["--data_dir", data_dir] if data_dir else [])]
    return [*step.trial.argv, *place]


@dataclass(frozen=True)
class Outcome:
    """A trial's state after the sweep, from its run folder and its process's exit status."""

    name: str
    state: str  # one of STATES
    detail: str


def _last_error(log: Path) -> str:
    """The last `swsl-train:` line (its one-line error) of the trial's last process in its
    log, or that process's last line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    last = text.rsplit(f"\n$ {PROG} ", 1)[-1]  # each process's output follows its command
    lines = [line.strip() for line in last.splitlines()[1:] if line.strip()]
    errors = [line for line in lines if line.startswith(f"{PROG}:")]
    return (errors or lines or [""])[-1]


def outcome(step: Step, logdir: Path, returncode: int | None, error: str = "") -> Outcome:
    """What became of `step`'s trial: this sweep's exit status (None: not run) and its folder."""
    name = step.trial.name
    log = logdir / LOGS / f"{name}.log"
    if error or (returncode is not None and returncode != 0 and returncode not in STOPPED):
        return Outcome(name, "failed", f"{error or _last_error(log)} (log: {log})")
    if step.action == "stuck":
        return Outcome(name, "failed", step.detail)
    run = runs.RunDir(logdir / name)
    try:
        metrics = run.read_metrics() if run.root.exists() else {}
    except runs.RunError as problem:
        return Outcome(name, "failed", str(problem))
    epochs = metrics.get("epochs") if isinstance(metrics.get("epochs"), list) else []
    if metrics.get("status") == "completed":
        accuracy = metrics.get("test_accuracy")
        figure = f"test accuracy {accuracy:.4f}" if isinstance(accuracy, float) else ""
        skipped = ", already complete" if step.action == "done" else ""
        return Outcome(name, "completed", f"{figure}{skipped}")
    if epochs:
        planned = step.trial.config.n_epochs
        return Outcome(
            name, "interrupted", f"{len(epochs)}/{planned} epochs saved; run the sweep again"
        )
    return Outcome(name, "not started", "")


def _extra_missing() -> str | None:
    """Which module of the `sweep` extra is missing, if one is."""
    import importlib.util

    for module in ("yaml", "ray"):
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ValueError:  # a module set to None in sys.modules: hidden
            return module
    return None


# --- The command -----------------------------------------------------------------------


def summary_lines(outcomes: Sequence[Outcome], seconds: float) -> list[str]:
    """`sweep: 4 trials: 2 completed, ...` and a line per trial."""
    counts = {state: sum(o.state == state for o in outcomes) for state in STATES}
    head = ", ".join(f"{counts[state]} {state}" for state in STATES)
    width = max(len(o.name) for o in outcomes)
    lines = [f"sweep: {len(outcomes)} trial(s): {head}; {seconds:.0f} s"]
    for item in outcomes:
        lines.append(f"  {item.state:<11}  {item.name:<{width}}  {item.detail}".rstrip())
    return lines


def main(
    path: str,
    logdir: str,
    workers: int = 1,
    overrides: dict[str, str] | None = None,
    quiet: bool = False,
    stream=None,
) -> int:
    """Runs the sweep file `path` into `logdir`; returns the exit status.

    `overrides`: the `--sweep_set` values by flag name, as text.

    0 when every trial is complete; 130 (143) after SIGINT (SIGTERM); 1 when
    a trial failed or the sweep cannot run; 2 for a bad sweep file.
    """
    console = Console(stream if stream is not None else sys.stdout)
    started = time.monotonic()
    with handled_by(raise_interrupted):
        try:
            missing = _extra_missing()
            if missing:
                raise SweepError(f"--sweep needs Ray Tune and PyYAML ({missing} is missing): "
                                 f"{INSTALL_HINT}")  # fmt: skip
            try:
                values = {name: parse_override(text) for name, text in (overrides or {}).items()}
            except SweepFileError as error:
                Console.error(f"{PROG}: error: {error}")
                return 2
            try:
                trials = load(Path(path).expanduser(), values)
            except SweepFileError as error:
                Console.error(f"{PROG}: error: sweep {path}: {error}")
                return 2
            root = Path(logdir).expanduser().resolve()
            steps = [plan_step(trial, root) for trial in trials]
            todo = [step for step in steps if step.action in ("new", "resume")]
            counts = {a: sum(s.action == a for s in steps) for a in ("done", "resume", "new")}
            console.line(
                f"{PROG} {__version__}: sweep {path}: {len(trials)} trial(s) in {root}: "
                f"{counts['done']} complete, {counts['resume']} to resume, {counts['new']} new"
            )
            results, signal_name = {}, None
            if todo:
                from swsl_cli.runner.sweep_tune import tune_trials

                results, signal_name = tune_trials(todo, root, workers, quiet, console)
        except SweepError as error:
            Console.error(f"{PROG}: error: {error}")
            return 1
        except Interrupted as interrupt:
            Console.error(f"{PROG}: sweep interrupted by {interrupt.signal_name} while starting")
            return interrupt.exit_code
    outcomes = [outcome(step, root, *results.get(step.trial.name, (None, ""))) for step in steps]
    for line in summary_lines(outcomes, time.monotonic() - started):
        console.line(line)
    if signal_name is not None:
        Console.error(
            f"{PROG}: sweep interrupted by {signal_name}; run the same command again to go on "
            "(completed trials are skipped, interrupted ones resumed)"
        )
        return EXIT_CODES[signal_name]
    return 0 if all(item.state == "completed" for item in outcomes) else 1
