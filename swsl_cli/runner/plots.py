"""`swsl-train --compare --plot FILE.png`: the groups of `compare`, drawn with matplotlib.

Two pictures beside FILE: `FILE_epochs.png`, the validation accuracy per
epoch of each group (the mean as a line, the lowest to highest run as a
band), and `FILE_params.png`, the test accuracy of each group against its
parameter count (the mean as a point, its 95 % interval as an error bar).
matplotlib is optional (`pip install ".[plot]"`) and loads only here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

INSTALL_HINT = 'pip install "swsl-cli[plot]" (in a clone: pip install ".[plot]")'
DPI = 120
FONT_SIZE = 11
# With points at the same parameter count (e.g. two SWS recipes), each next one sits
# this factor further right on the log axis, so that their error bars stay apart.
SAME_COUNT_SPREAD = 1.04


def problem(path: str) -> str | None:
    """Why `--plot path` cannot be drawn (matplotlib missing, not a .png), or None."""
    if not path.lower().endswith(".png"):
        return f"--plot takes a .png file name, got {path!r}"
    try:
        missing = importlib.util.find_spec("matplotlib") is None
    except ValueError:  # set to None in sys.modules: hidden
        missing = True
    if missing:
        return f"--plot needs matplotlib: {INSTALL_HINT}"
    return None


def outputs(path: Path) -> tuple[Path, Path]:
    """The two files `draw` writes for `path`: FILE_epochs.png and FILE_params.png."""
    stem = path.with_suffix("")
    return stem.with_name(stem.name + "_epochs.png"), stem.with_name(stem.name + "_params.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": FONT_SIZE,
            "axes.titlesize": FONT_SIZE + 1,
            "legend.fontsize": FONT_SIZE - 1,
        }
    )
    return plt


def _legend_outside(axes, title: str) -> None:
    """The legend to the right of the axes, where it covers no data."""
    axes.legend(
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        frameon=False,
        title_fontsize=FONT_SIZE - 1,
        alignment="left",
    )


def draw(groups: Sequence, path: Path) -> list[Path]:
    """Draws both pictures of `groups` (`compare.RunGroup`); returns the files written."""
    plt = _pyplot()
    colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors
    epochs_file, params_file = outputs(path)
    epochs_file.parent.mkdir(parents=True, exist_ok=True)
    _draw_epochs(plt, groups, colors, epochs_file)
    _draw_params(plt, groups, colors, params_file)
    return [epochs_file, params_file]


def _draw_epochs(plt, groups, colors, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(10, 5.5))
    longest = 1
    for index, group in enumerate(groups):
        curve = [values for values in group.curve()]
        if not curve or not curve[0]:
            continue
        color = colors[index % len(colors)]
        epochs = list(range(1, len(curve) + 1))
        means = [sum(values) / len(values) if values else float("nan") for values in curve]
        lows = [min(values) if values else float("nan") for values in curve]
        highs = [max(values) if values else float("nan") for values in curve]
        longest = max(longest, len(curve))
        label = f"{group.label} (n={len(group.runs)})"
        if len(curve) == 1:  # one epoch: a point with its range, nudged apart per group
            x = 1 + 0.08 * (index - (len(groups) - 1) / 2)
            axes.errorbar(
                [x], means, yerr=[[means[0] - lows[0]], [highs[0] - means[0]]], fmt="o",
                color=color, capsize=4, label=label,
            )  # fmt: skip
            continue
        axes.plot(epochs, means, marker="o", markersize=4, color=color, label=label)
        axes.fill_between(epochs, lows, highs, color=color, alpha=0.18, linewidth=0)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.set_title("Validation accuracy per epoch")
    axes.set_xticks(range(1, longest + 1))
    axes.set_xlim(0.5, longest + 0.5)
    axes.grid(alpha=0.3)
    if longest == 1:
        _legend_outside(axes, "point: mean over the runs\nbar: lowest to highest run")
    else:
        _legend_outside(axes, "line: mean over the runs\nband: lowest to highest run")
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)


def _draw_params(plt, groups, colors, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(10, 5.5))
    seen: dict[float, int] = {}
    drawn = 0
    for index, group in enumerate(groups):
        summary, parameters = group.test_accuracy, group.parameters
        if summary is None or not parameters:
            continue
        repeats = seen.get(parameters, 0)
        seen[parameters] = repeats + 1
        x = parameters * SAME_COUNT_SPREAD**repeats
        error = None if summary.half_width is None else [[summary.half_width]] * 2
        color = colors[index % len(colors)]
        axes.errorbar(
            [x], [summary.mean], yerr=error, fmt="o", markersize=7, capsize=5,
            color=color, label=f"{group.label} (n={summary.n})",
        )  # fmt: skip
        # The name beside its point: right of the first at a count, left of the second, ...
        left = repeats % 2 == 1
        axes.annotate(
            group.label, (x, summary.mean), xytext=(-9 if left else 9, -14 * (repeats // 2)),
            textcoords="offset points", ha="right" if left else "left", va="center",
            fontsize=FONT_SIZE - 1, color=color,
        )  # fmt: skip
        drawn += 1
    axes.set_xscale("log")
    axes.set_xlabel("parameters (log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title("Test accuracy against parameter count")
    axes.grid(alpha=0.3, which="both")
    if drawn:
        _legend_outside(
            axes,
            "point: mean test accuracy\nbar: 95 % interval (Student's t)\n"
            "equal counts are set slightly apart",
        )
    else:
        axes.text(0.5, 0.5, "no completed run", ha="center", va="center", transform=axes.transAxes)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
