"""`swsl-train`: argparse and validation into a frozen `Config`.

Nothing here imports TensorFlow: `--help` and every refusal answer at once,
and a bad value creates nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from swsl_cli import __version__
from swsl_cli.runner import distribute, runs
from swsl_cli.runner.compare import FORMATS, PER_RUN
from swsl_cli.runner.config import DECLARATIONS, DEFAULTS, GROUPS, ORIGINAL, PROG, Config
from swsl_cli.runner.console import Console
from swsl_cli.runner.interrupts import Interrupted, RaiseInterrupted, handled_by

DESCRIPTION = """\
Demonstration of the soft spatial weight sharing layer: trains the two-layer soft
weight sharing convnet on MNIST (or another image set) and logs to TensorBoard."""
EPILOG = """\
example:
  swsl-train --centroids_trainable --n_filters 24 48 --centroid_grid 3 3
  tensorboard --logdir tensorboard"""


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


class _DefaultsFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends each flag's default, read from `Config`, to its help text.

    The parser itself has no defaults (`argparse.SUPPRESS`), so that a parsed
    namespace holds exactly the flags that were given. The description and
    the example are printed as written, so a command never wraps.
    """

    def _get_help_string(self, action):
        default = DEFAULTS.get(action.dest)
        takes_value = action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction)
        if default is None or not takes_value:
            return action.help
        if isinstance(default, tuple):
            default = " ".join(map(str, default))
        return f"{action.help} (default: {default})"


def value_parser(declaration):
    """An argparse type for one declared setting: the text parsed, then checked by `Config`'s rule."""

    def parse(text: str):
        value = text
        if declaration.kind in (int, float):
            try:
                value = declaration.kind(text)
            except ValueError:
                kind = "an integer" if declaration.kind is int else "a number"
                raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        reason = declaration.problem(value)
        if reason is not None:
            raise argparse.ArgumentTypeError(f"{reason}, got {text!r}")
        return value

    return parse


def add_setting(group, name: str, declaration) -> None:
    """The flag `--name` of one declared setting."""
    # A declaration's help is plain text; argparse would read a "%" in it as a format.
    options = {"help": declaration.help.replace("%", "%%")}
    if declaration.kind is bool:
        negatable = declaration.negatable
        options["action"] = argparse.BooleanOptionalAction if negatable else "store_true"
    elif declaration.choices:
        options["choices"] = declaration.choices
    else:
        options["type"] = value_parser(declaration)
    if declaration.pair:
        options["nargs"] = 2
    if declaration.metavar and declaration.kind is not bool:
        options["metavar"] = declaration.metavar
    group.add_argument(f"--{name}", **options)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def override(text: str) -> tuple[str, str]:
    """An argparse type: `NAME=VALUE` of `--sweep_set`."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE, got {text!r}")
    return name.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The parser of every flag: each run setting from its declaration in `Config`, then the
    flags of sweeps (`--sweep`, ...) and those that train nothing (`--compare`, `--format`,
    `--group_by`, `--plot`, `--version`)."""
    parser = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        argument_default=argparse.SUPPRESS,
        formatter_class=_DefaultsFormatter,
    )
    groups = {
        group: parser if group == ORIGINAL else parser.add_argument_group(group) for group in GROUPS
    }
    for name, declaration in DECLARATIONS.items():
        add_setting(groups[declaration.group], name, declaration)
    sweeps = parser.add_argument_group("sweeps: many runs from one file, through Ray Tune")
    sweeps.add_argument(
        "--sweep",
        metavar="FILE",
        help="Train every trial of a sweep file (YAML or JSON: fixed flags, a grid, variants, "
        "seeds), each a run folder under --logdir named from its settings; trials already "
        'complete are skipped, interrupted ones resumed. Needs pip install ".[sweep]"',
    )
    sweeps.add_argument(
        "--sweep_workers",
        type=positive_int,
        metavar="N",
        help="--sweep: trials at once, each with 1/N of the CPUs of this machine (or of the "
        "Ray cluster of RAY_ADDRESS) (default: 1)",
    )
    sweeps.add_argument(
        "--sweep_set",
        type=override,
        action="append",
        metavar="NAME=VALUE",
        help="--sweep: give every trial this flag's value instead of the file's (e.g. "
        "n_epochs=1, data_dir=PATH, or 'seeds=0 1 2'); repeatable",
    )
    runs = parser.add_argument_group("compare runs (trains nothing)")
    runs.add_argument(
        "--compare",
        nargs="?",
        const="",
        metavar="LOGDIR",
        help="Print a table of the runs under LOGDIR (default: --logdir) from their "
        "config.json and metrics.json",
    )
    runs.add_argument(
        "--format",
        choices=FORMATS,
        help=f"Output of --compare: an aligned table, csv or markdown (default: {FORMATS[0]})",
    )
    runs.add_argument(
        "--group_by",
        metavar="FLAGS",
        help="--compare: one row per group of runs with the same values of these settings "
        "(comma-separated, e.g. layer,dataset), with n, mean, standard deviation and 95 %% "
        f"interval; {PER_RUN} for one row per run (default: runs that differ only in their seed "
        "form a group)",
    )
    runs.add_argument(
        "--plot",
        metavar="FILE.png",
        help="--compare: also draw the groups: validation accuracy per epoch (FILE_epochs.png) "
        'and test accuracy against parameters (FILE_params.png). Needs pip install ".[plot]"',
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


# Flags of `--compare`, which trains nothing: they are not part of a run's config.
COMPARE_FLAGS = ("compare", "format", "group_by", "plot", "logdir")
# Flags of `--sweep`: the trials' own flags are in the sweep file.
SWEEP_FLAGS = ("sweep", "sweep_workers", "sweep_set", "logdir", "quiet")


def given_flags(argv: Sequence[str] | None = None) -> dict:
    """The flags given on a command line, by name, with their parsed values."""
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in vars(build_parser().parse_args(argv)).items()
    }


def parse_command(argv: Sequence[str] | None = None) -> tuple[Config, frozenset[str]]:
    """Parses and validates a command line into a config and the names of the flags given.

    Raises `UsageError` on anything wrong.
    """
    return training_command(given_flags(argv))


def training_command(given: dict) -> tuple[Config, frozenset[str]]:
    """The validated config of the flags `given`, and their names."""
    if given.keys() & {"compare", "format", "group_by", "plot"}:
        raise UsageError("--format and --compare train nothing; give them without training flags")
    if given.keys() & {"sweep", "sweep_workers", "sweep_set"}:
        raise UsageError("--sweep takes its trials' flags from its file, not the command line")
    try:
        config = Config(**given)
    except ValueError as error:
        raise UsageError(str(error)) from None
    # With --resume the schedule comes from the saved run, which `runs.resume` compares.
    for name, schedule in (("lr_decay", "exponential"), ("warmup_epochs", "cosine")):
        if name in given and config.lr_schedule != schedule and not config.resume:
            raise UsageError(
                f"--{name} applies to --lr_schedule {schedule}, not {config.lr_schedule}"
            )
    for name, layer in (("scaling", "sws"), ("rank", "lrlc"), ("combining", "lrlc")):
        if name in given and config.layer != layer and not config.resume:
            raise UsageError(f"--{name} applies to --layer {layer}, not {config.layer}")
    if config.warmup_epochs >= config.n_epochs and not config.resume:
        raise UsageError(
            f"--warmup_epochs {config.warmup_epochs:g} leaves no steps to decay over: it "
            f"must be shorter than the run (--n_epochs {config.n_epochs})"
        )
    if config.distribute == "multi_worker":
        try:
            distribute.check_command(os.environ.get("TF_CONFIG"), config.seed, config.resume)
        except distribute.ClusterError as error:
            raise UsageError(str(error)) from None
    return config, frozenset(given)


def compare_command(given: dict) -> int:
    """`--compare [LOGDIR]`: the runs table; refuses training flags beside it."""
    others = sorted(set(given) - set(COMPARE_FLAGS))
    if others:
        raise UsageError(
            f"--compare takes only --logdir, --format, --group_by and --plot, not --{others[0]}"
        )
    if "compare" not in given:
        flag = next(name for name in COMPARE_FLAGS if name in given)
        raise UsageError(f"--{flag} applies to --compare only")
    from swsl_cli.runner.compare import grouping
    from swsl_cli.runner.compare import main as compare_main

    try:
        group_by = grouping(given.get("group_by"))
    except ValueError as error:
        raise UsageError(f"--group_by: {error}") from None
    logdir = given["compare"] or given.get("logdir", DEFAULTS["logdir"])
    return compare_main(
        logdir, given.get("format", FORMATS[0]), group_by=group_by, plot=given.get("plot")
    )


def sweep_command(given: dict) -> int:
    """`--sweep FILE`: the trials of a sweep file; refuses training flags beside it."""
    others = sorted(set(given) - set(SWEEP_FLAGS))
    if others:
        raise UsageError(
            "--sweep takes only --logdir, --sweep_workers, --sweep_set and --quiet beside it, "
            f"not --{others[0]}; the trials' flags go into the sweep file"
        )
    if "sweep" not in given:
        flag = next(name for name in ("sweep_workers", "sweep_set") if name in given)
        raise UsageError(f"--{flag} applies to --sweep only")
    overrides = {}
    for name, value in given.get("sweep_set", ()):
        if name != "seeds" and name not in DECLARATIONS:
            raise UsageError(f"--sweep_set: unknown flag {name!r}")
        overrides[name] = value
    from swsl_cli.runner import sweep

    return sweep.main(
        given["sweep"],
        given.get("logdir", DEFAULTS["logdir"]),
        workers=given.get("sweep_workers", 1),
        overrides=overrides,
        quiet=given.get("quiet", False),
    )


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """The config of a command line; raises `UsageError` on anything wrong."""
    return parse_command(argv)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: returns the exit status."""
    try:
        given = given_flags(argv)
        if given.keys() & {"compare", "format", "group_by", "plot"}:
            return compare_command(given)
        if given.keys() & {"sweep", "sweep_workers", "sweep_set"}:
            return sweep_command(given)
        config, given_names = training_command(given)
    except UsageError as error:
        print(f"{PROG}: error: {error} (see {PROG} --help)", file=sys.stderr)
        return 2
    if config.distribute == "multi_worker":
        # When a peer fails, TensorFlow's C++ runtime logs several error lines that the
        # one-line message repeats; it must hear this before TensorFlow loads.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from swsl_cli.runner import data  # numpy, no TensorFlow: its path checks come first

    # Until training installs its own handlers, a signal ends the start-up in one line.
    with handled_by(RaiseInterrupted()), contextlib.ExitStack() as stack:
        try:
            # Paths, the resume target and its settings are checked before TensorFlow loads.
            opened = runs.open_run(config, given_names, stack)
            data.check_data_dir(opened.config.data_dir)
            data.check_dataset_name(opened.config.dataset)
            Console(sys.stdout).line(opening_line(opened))
            from swsl_cli.runner.train import main_opened

            return main_opened(opened, stack)
        except (runs.RunError, distribute.ClusterError, data.DataError) as error:
            Console.error(f"{PROG}: error: {error}")
            return 1
        except Interrupted as interrupt:
            Console.error(f"{PROG}: interrupted by {interrupt.signal_name} while starting")
            return interrupt.exit_code


def opening_line(opened: runs.OpenedRun) -> str:
    """The first line of a run, printed before TensorFlow loads (which takes seconds)."""
    config = opened.config
    if opened.resumed:
        what = f"resuming run {config.run_name} after epoch {opened.checkpoint.epoch}"
    elif opened.restarted:
        what = f"starting run {config.run_name} again from its first epoch"
    else:
        what = f"new run in {config.logdir}"
    return f"{PROG} {__version__}: {what}; loading TensorFlow"


if __name__ == "__main__":
    sys.exit(main())
