"""`swsl-train --compare [LOGDIR]`: one table of the runs under a logdir.

Read from each run folder's `config.json` and `metrics.json` with nothing but
the standard library: no TensorFlow, so the table comes at once, even while
runs are training. A damaged file is reported in one line and its run still
listed (as `damaged`); nothing here raises on the contents of a file.

By default runs that differ only in their seed (and their name and place)
form a group, one row each: n, mean, standard deviation and 95 % interval
(Student's t) of the test accuracy, of the accuracy after epoch 1 and of the
images/s. `--group_by` groups by chosen settings instead, or not at all
(`run`); `--plot` draws the groups (`swsl_cli.runner.plots`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from swsl_cli.runner.config import DECLARATIONS, PROG, Config, Role
from swsl_cli.runner.runs import RunDir, effective_status, read_regular_file
from swsl_cli.runner.statistics import Summary, summarize

FORMATS = ("table", "csv", "markdown")
PER_RUN = "run"  # `--group_by run`: the table of single runs
HEADERS = (
    "run",
    "dataset",
    "layer",
    "centroids",
    "params",
    "epochs",
    "test_accuracy",
    "images_per_s",
    "status",
)
NUMERIC = {"params", "epochs", "test_accuracy", "images_per_s"}  # right-aligned
MISSING = "-"
# Runs written before `dataset` was recorded could only train on MNIST.
DEFAULT_DATASET = "mnist"


@dataclass(frozen=True)
class RunRow:
    """One run's line of the table; None where the run does not (yet) say."""

    name: str
    dataset: str
    layer: str | None
    centroids: str | None
    parameters: int | None
    epochs_done: int | None
    epochs_planned: int | None
    test_accuracy: float | None
    images_per_second: float | None
    status: str


def _number(value) -> float | None:
    """`value` when it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _read_json(path: Path, warn) -> tuple[dict | None, bool]:
    """The JSON object in `path` (None when absent or damaged), and whether it was damaged."""
    if not path.is_file():
        return None, False
    try:
        data = json.loads(read_regular_file(path))  # no link, pipe or huge file
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = getattr(error, "strerror", None) or error.__class__.__name__
        warn(f"{path}: damaged ({reason}); listed as damaged")
        return None, True
    if not isinstance(data, dict):
        warn(f"{path}: damaged (not a JSON object); listed as damaged")
        return None, True
    return data, False


def _centroids(flags: dict) -> str | None:
    """`2x2` (grid), `13 random`, with ` trainable` when learned; None for layers without."""
    if flags.get("layer") not in (None, "sws"):
        return None
    count = flags.get("n_centroids")
    grid = flags.get("centroid_grid")
    if isinstance(count, int) and not isinstance(count, bool):
        arrangement = f"{count} random"
    elif isinstance(grid, list) and len(grid) == 2:
        arrangement = "{}x{}".format(*grid)
    else:
        return None
    return arrangement + (" trainable" if flags.get("centroids_trainable") is True else "")


def _dataset(metrics: dict, flags: dict) -> str:
    """The data set's name: `metrics.json`'s `dataset` (a name, or `{"name": ...}`), the flag,
    or MNIST for runs from before either was recorded."""
    dataset = metrics.get("dataset") or flags.get("dataset")
    if isinstance(dataset, dict):
        dataset = dataset.get("name")
    return str(dataset) if dataset else DEFAULT_DATASET


def _parameters(metrics: dict) -> int | None:
    """The total parameter count: `parameters` as a number or as `{"total": n, ...}`."""
    parameters = metrics.get("parameters")
    if isinstance(parameters, dict):
        parameters = parameters.get("total")
    value = _number(parameters)
    return int(value) if value is not None else None


def run_row(folder: Path, warn) -> RunRow:
    """The table line of the run in `folder`; `warn(line)` hears of damaged files."""
    config, config_damaged = _read_json(RunDir(folder).config, warn)
    metrics, metrics_damaged = _read_json(RunDir(folder).metrics, warn)
    metrics = metrics or {}
    flags = config or metrics.get("flags")
    flags = flags if isinstance(flags, dict) else {}
    epochs = metrics.get("epochs")
    epochs = [e for e in epochs if isinstance(e, dict)] if isinstance(epochs, list) else []
    speeds = [_number(e.get("images_per_second")) for e in epochs]
    speeds = [speed for speed in speeds if speed is not None]
    planned = _number(flags.get("n_epochs"))
    if metrics_damaged or config_damaged:
        status = "damaged"
    elif not metrics:
        status = "not started"  # a start-up failure leaves config.json alone
    else:
        status = effective_status(RunDir(folder), str(metrics.get("status", MISSING)))
    layer = flags.get("layer")
    return RunRow(
        name=printable(folder.name),
        dataset=_dataset(metrics, flags),
        layer=str(layer) if layer is not None else None,
        centroids=_centroids(flags) if flags else None,
        parameters=_parameters(metrics),
        epochs_done=len(epochs) if metrics else None,
        epochs_planned=int(planned) if planned is not None else None,
        test_accuracy=_number(metrics.get("test_accuracy")),
        images_per_second=sum(speeds) / len(speeds) if speeds else None,
        status=status,
    )


def printable(name: str) -> str:
    """A folder name as text any terminal prints: bytes that are not UTF-8 as `\\xff`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def collect(logdir: Path, warn) -> list[RunRow]:
    """A row per run folder (one holding `config.json` or `metrics.json`) under `logdir`, by name."""
    folders = [
        path
        for path in logdir.iterdir()
        if path.is_dir() and (RunDir(path).config.exists() or RunDir(path).metrics.exists())
    ]
    return [run_row(folder, warn) for folder in sorted(folders, key=lambda path: path.name)]


def _cells(row: RunRow, exact: bool) -> list[str]:
    """The row's cells as text: `exact` (CSV) keeps full numbers and leaves gaps empty."""
    missing = "" if exact else MISSING

    def text(value, spec: str) -> str:
        return missing if value is None else format(value, spec)

    if row.epochs_done is None:
        epochs = missing
    elif exact:
        epochs = str(row.epochs_done)
    else:
        epochs = f"{row.epochs_done}/{text(row.epochs_planned, 'd')}"
    return [
        row.name,
        row.dataset,
        row.layer or missing,
        row.centroids or missing,
        text(row.parameters, "d" if exact else ","),
        epochs,
        text(row.test_accuracy, "" if exact else ".4f"),
        text(row.images_per_second, ".1f" if exact else ".0f"),
        row.status,
    ]


def render(rows: list[RunRow], fmt: str) -> str:
    """The rows as an aligned terminal `table`, `csv` (exact numbers) or `markdown`."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*HEADERS[:6], "epochs_planned", *HEADERS[6:]])
        for row in rows:
            cells = _cells(row, exact=True)
            planned = "" if row.epochs_planned is None else str(row.epochs_planned)
            writer.writerow([*cells[:6], planned, *cells[6:]])
        return buffer.getvalue()
    lines = [_cells(row, exact=False) for row in rows]
    if fmt == "markdown":
        rule = ["---:" if name in NUMERIC else "---" for name in HEADERS]
        return "".join("| " + " | ".join(cells) + " |\n" for cells in [list(HEADERS), rule, *lines])
    widths = [max(len(cells[i]) for cells in [HEADERS, *lines]) for i in range(len(HEADERS))]

    def aligned(cells) -> str:
        parts = [
            cell.rjust(width) if name in NUMERIC else cell.ljust(width)
            for name, cell, width in zip(HEADERS, cells, widths)
        ]
        return "  ".join(parts).rstrip() + "\n"

    return "".join(aligned(cells) for cells in [HEADERS, *lines])


# --- Groups of runs ----------------------------------------------------------------------

# The settings that say where a run is and how it printed, not what it is; the seed is
# what a group's runs differ in.
NOT_AN_EXPERIMENT = frozenset(
    name for name, declaration in DECLARATIONS.items() if declaration.role is Role.PLACE
) | {"seed", "deterministic"}
SEED_SUFFIX = re.compile(r"(^|[_-])s\d+$")  # a sweep's trial names end in _sSEED
VARIES = "*"  # a column whose value differs between the runs of a group


def grouping(text: str | None) -> tuple[str, ...] | str | None:
    """What `--group_by` asks for: None (runs that differ only in their seed), `PER_RUN`,
    or the setting names to group by. Raises `ValueError` on an unknown name."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if names == [PER_RUN]:
        return PER_RUN
    for name in names:
        if name not in DECLARATIONS:
            raise ValueError(
                f"unknown setting {name!r}; give setting names (e.g. layer,dataset) or {PER_RUN}"
            )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class RunFigures:
    """One run's row, its settings (legacy values filled in) and its curve."""

    row: RunRow
    settings: dict
    val_accuracy: tuple[float | None, ...]  # per epoch
    parsed: bool  # the settings are a valid config (else grouped alone)

    @property
    def first_epoch_accuracy(self) -> float | None:
        return self.val_accuracy[0] if self.val_accuracy else None


def _ignore(line: str) -> None:
    """`warn` for a second read: `run_row` has already reported damaged files."""


def run_figures(folder: Path, row: RunRow) -> RunFigures:
    """`row`'s run with the settings and per-epoch figures that grouping and plots need."""
    config, _ = _read_json(RunDir(folder).config, _ignore)
    metrics, _ = _read_json(RunDir(folder).metrics, _ignore)
    metrics = metrics or {}
    flags = config or metrics.get("flags")
    flags = flags if isinstance(flags, dict) else {}
    try:
        effective = Config.from_dict(flags)
        settings = {
            name: getattr(effective, name) for name in DECLARATIONS if effective.applies(name)
        }
        parsed = bool(flags)
    except (TypeError, ValueError):
        settings, parsed = dict(flags), False
    epochs = metrics.get("epochs")
    epochs = [e for e in epochs if isinstance(e, dict)] if isinstance(epochs, list) else []
    curve = tuple(_number(e.get("val_accuracy")) for e in epochs)
    return RunFigures(row, settings, curve, parsed)


def collect_figures(logdir: Path, warn) -> list[RunFigures]:
    """`collect`'s rows with their settings and curves."""
    return [run_figures(logdir / row.name, row) for row in collect(logdir, warn)]


def _key_value(value) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value, sort_keys=True)


def _setting_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


@dataclass(frozen=True)
class RunGroup:
    """Runs grouped together, and their statistics."""

    label: str
    runs: tuple[RunFigures, ...]

    def _values(self, figure) -> list[float]:
        return [v for v in (figure(run) for run in self.runs) if v is not None]

    @property
    def test_accuracy(self) -> Summary | None:
        """Over the completed runs (the others have no test figure)."""
        return summarize(self._values(lambda run: run.row.test_accuracy))

    @property
    def first_epoch_accuracy(self) -> Summary | None:
        return summarize(self._values(lambda run: run.first_epoch_accuracy))

    @property
    def images_per_second(self) -> Summary | None:
        return summarize(self._values(lambda run: run.row.images_per_second))

    @property
    def parameters(self) -> float | None:
        counts = self._values(lambda run: run.row.parameters)
        return sum(counts) / len(counts) if counts else None

    @property
    def completed(self) -> int:
        return sum(run.row.status == "completed" for run in self.runs)

    def common(self, value) -> str | None:
        """The runs' common value of `value(run)` as text, `VARIES`, or None when unknown."""
        values = {value(run) for run in self.runs} - {None}
        if len(values) > 1:
            return VARIES
        return str(values.pop()) if values else None

    def curve(self) -> list[list[float]]:
        """Per epoch, the validation accuracies of the runs that reached it."""
        length = max((len(run.val_accuracy) for run in self.runs), default=0)
        return [
            [run.val_accuracy[i] for run in self.runs
             if i < len(run.val_accuracy) and run.val_accuracy[i] is not None]
            for i in range(length)
        ]  # fmt: skip


def _seed_key(run: RunFigures) -> tuple:
    if not run.parsed:
        return ("run", run.row.name)  # unreadable settings: a group of its own
    return tuple(
        (name, _key_value(value))
        for name, value in sorted(run.settings.items())
        if name not in NOT_AN_EXPERIMENT
    )


def _differing(key: tuple, keys: list[tuple]) -> str:
    """The settings of `key` that some other group's key has another value of."""
    others = [dict(other) for other in keys if other != key and other[0] != "run"]
    return " ".join(
        f"{name}={_setting_text(json.loads(value))}"
        for name, value in dict(key).items()
        if any(other.get(name) != value for other in others)
    )


def _label(runs: list[RunFigures], key: tuple, keys: list[tuple]) -> str:
    """A group's name: the runs' common name without its seed suffix (a sweep's
    `variant_grid_sN`), else the settings that tell it from the other groups."""
    stems = {SEED_SUFFIX.sub("", run.row.name) for run in runs}
    if len(stems) == 1 and "" not in stems:
        return stems.pop()
    if key[0] == "run":
        return runs[0].row.name
    return _differing(key, keys) or ("all runs" if len(keys) == 1 else runs[0].row.name)


def group_runs(runs: list[RunFigures], by: tuple[str, ...] | None = None) -> list[RunGroup]:
    """The runs in groups, by label: those that differ only in their seed (`by` None), or
    those with the same values of the settings `by`."""
    members: dict[tuple, list[RunFigures]] = {}
    for run in runs:
        if by is None:
            key = _seed_key(run)
        else:
            key = tuple((name, _key_value(run.settings.get(name))) for name in by)
        members.setdefault(key, []).append(run)
    keys = list(members)
    labels = {}
    for key, group in members.items():
        if by is None:
            labels[key] = _label(group, key, keys)
        else:
            labels[key] = " ".join(
                f"{name}={_setting_text(json.loads(value))}" for name, value in key
            )
    taken = [label for label in labels.values()]
    for key, label in labels.items():
        if taken.count(label) > 1 and key[0] != "run":  # e.g. the same names, another budget
            labels[key] = f"{label} {_differing(key, keys)}".strip()
    groups = [RunGroup(labels[key], tuple(group)) for key, group in members.items()]
    return sorted(groups, key=lambda group: group.label)


GROUP_HEADERS = ("group", "n", "completed", "dataset", "layer", "params", "epochs")
# Each statistic: its column name, how the group gives it, its number format in a table.
GROUP_FIGURES = (
    ("test_accuracy", lambda group: group.test_accuracy, ".4f"),
    ("epoch1_accuracy", lambda group: group.first_epoch_accuracy, ".4f"),
    ("images_per_s", lambda group: group.images_per_second, ".0f"),
)


def _group_settings(group: RunGroup) -> list[str | None]:
    params = group.common(lambda run: run.row.parameters)
    return [
        group.common(lambda run: run.row.dataset),
        group.common(lambda run: run.row.layer),
        f"{int(params):,}" if params not in (None, VARIES) else params,
        group.common(lambda run: run.row.epochs_planned),
    ]


def render_groups(groups: list[RunGroup], fmt: str) -> str:
    """The groups as an aligned `table`, `csv` (exact numbers, the interval's ends) or
    `markdown`; a figure of one run has no spread (`-`)."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        statistics = ("n", "mean", "sd", "ci95_low", "ci95_high")
        writer.writerow(
            [*GROUP_HEADERS, *(f"{f}_{s}" for f, _, _ in GROUP_FIGURES for s in statistics)]
        )
        for group in groups:
            settings = [
                "" if value is None else value.replace(",", "") for value in _group_settings(group)
            ]
            cells = [group.label, len(group.runs), group.completed, *settings]
            for _, figure, _ in GROUP_FIGURES:
                summary = figure(group)
                cells += (
                    ["0", "", "", "", ""]
                    if summary is None
                    else [summary.n, summary.mean, summary.sd, summary.low, summary.high]
                )
            writer.writerow(["" if cell is None else cell for cell in cells])
        return buffer.getvalue()
    headers = [*GROUP_HEADERS]
    for name, _, _ in GROUP_FIGURES:
        headers += [name, "sd", "ci95"]
    lines = []
    for group in groups:
        cells = [group.label, str(len(group.runs)), str(group.completed)]
        cells += [MISSING if value is None else value for value in _group_settings(group)]
        for _, figure, spec in GROUP_FIGURES:
            summary = figure(group)
            if summary is None:
                cells += [MISSING] * 3
                continue
            spread = [MISSING, MISSING]
            if summary.sd is not None:
                spread = [format(summary.sd, spec), "±" + format(summary.half_width, spec)]
            cells += [format(summary.mean, spec), *spread]
        lines.append(cells)
    right = [index >= 1 and headers[index] != "dataset" and headers[index] != "layer"
             for index in range(len(headers))]  # fmt: skip
    if fmt == "markdown":
        rule = ["---:" if r else "---" for r in right]
        return "".join("| " + " | ".join(cells) + " |\n" for cells in [headers, rule, *lines])
    widths = [max(len(cells[i]) for cells in [headers, *lines]) for i in range(len(headers))]

    def aligned(cells) -> str:
        parts = [
            cell.rjust(width) if r else cell.ljust(width)
            for cell, width, r in zip(cells, widths, right)
        ]
        return "  ".join(parts).rstrip() + "\n"

    return "".join(aligned(cells) for cells in [headers, *lines])


def _write(text: str, stream) -> None:
    """Writes the table; a reader that left early (`| head -2`) ends it quietly."""
    try:
        try:
            stream.write(text)
        except UnicodeEncodeError:  # a stdout that cannot print every name (LANG=C, ...)
            encoding = getattr(stream, "encoding", None) or "ascii"
            stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
        stream.flush()
    except BrokenPipeError:
        if stream is sys.stdout:
            # Python flushes stdout once more at exit: point it at /dev/null first,
            # as the `signal` module's docs advise, so that nothing is printed.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(
    logdir: str,
    fmt: str = "table",
    stream=None,
    errors=None,
    group_by: tuple[str, ...] | str | None = PER_RUN,
    plot: str | None = None,
) -> int:
    """Prints the table of the runs under `logdir`; returns the exit status.

    `group_by`: `PER_RUN` (a row per run), None (a row per group of runs that
    differ only in their seed) or setting names (`grouping`). `plot`: a PNG
    path; the groups' curves and parameters are drawn beside it (`plots`).
    1 with one line on `errors` when `logdir` is not a readable folder,
    `stream` is closed or the plot cannot be drawn; 0 otherwise, an empty
    logdir included (said in one line).
    """
    stream = sys.stdout if stream is None else stream
    errors = sys.stderr if errors is None else errors

    def warn(line: str) -> None:
        print(f"{PROG} --compare: {line}", file=errors)

    if fmt not in FORMATS:
        warn(f"error: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return 1
    if plot is not None:
        from swsl_cli.runner import plots

        problem = plots.problem(plot)
        if problem:
            warn(f"error: {problem}")
            return 1
    folder = Path(logdir).expanduser()
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        warn(f"error: logdir {folder} {problem}")
        return 1
    try:
        figures = collect_figures(folder, warn)
    except OSError as error:
        warn(f"error: cannot read logdir {folder}: {error.strerror or error}")
        return 1
    if not figures:
        warn(f"no runs in {folder} (no folder there holds config.json or metrics.json)")
        return 0
    if stream is None or getattr(stream, "closed", False):
        warn("error: standard output is closed; nowhere to print the table")
        return 1
    if group_by == PER_RUN:
        groups = [RunGroup(run.row.name, (run,)) for run in figures]
        text = render([run.row for run in figures], fmt)
    else:
        groups = group_runs(figures, group_by)
        text = render_groups(groups, fmt)
    try:
        _write(text, stream)
    except OSError as error:
        warn(f"error: cannot print the table: {error.strerror or error}")
        return 1
    if plot is not None:
        try:
            written = plots.draw(groups, Path(plot).expanduser())
        except OSError as error:
            warn(f"error: cannot write the plot {plot}: {error.strerror or error}")
            return 1
        warn("plots: " + ", ".join(map(str, written)))
    return 0
