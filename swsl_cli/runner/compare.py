"""`swsl-train --compare [LOGDIR]`: one table of the runs under a logdir.

Read from each run folder's `config.json` and `metrics.json` with nothing but
the standard library: no TensorFlow, so the table comes at once, even while
runs are training. A damaged file is reported in one line and its run still
listed (as `damaged`); nothing here raises on the contents of a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from swsl_cli.runner.config import PROG
from swsl_cli.runner.runs import RunDir

FORMATS = ("table", "csv", "markdown")
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
    """`value` when it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _read_json(path: Path, warn) -> tuple[dict | None, bool]:
    """The JSON object in `path` (None when absent or damaged), and whether it was damaged."""
    if not path.is_file():
        return None, False
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
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
        status = str(metrics.get("status", MISSING))
    layer = flags.get("layer")
    return RunRow(
        name=folder.name,
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


def _write(text: str, stream) -> None:
    """Writes the table; a reader that left early (`| head -2`) ends it quietly."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        if stream is sys.stdout:
            # Python flushes stdout once more at exit: point it at /dev/null first,
            # as the `signal` module's docs advise, so that nothing is printed.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(logdir: str, fmt: str = "table", stream=None, errors=None) -> int:
    """Prints the table of the runs under `logdir`; returns the exit status.

    1 with one line on `errors` when `logdir` is not a readable folder or
    `stream` is closed; 0 otherwise, an empty logdir included (said in one line).
    """
    stream = sys.stdout if stream is None else stream
    errors = sys.stderr if errors is None else errors

    def warn(line: str) -> None:
        print(f"{PROG} --compare: {line}", file=errors)

    if fmt not in FORMATS:
        warn(f"error: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return 1
    folder = Path(logdir).expanduser()
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        warn(f"error: logdir {folder} {problem}")
        return 1
    try:
        rows = collect(folder, warn)
    except OSError as error:
        warn(f"error: cannot read logdir {folder}: {error.strerror or error}")
        return 1
    if not rows:
        warn(f"no runs in {folder} (no folder there holds config.json or metrics.json)")
        return 0
    if stream is None or getattr(stream, "closed", False):
        warn("error: standard output is closed; nowhere to print the table")
        return 1
    try:
        _write(render(rows, fmt), stream)
    except OSError as error:
        warn(f"error: cannot print the table: {error.strerror or error}")
        return 1
    return 0
