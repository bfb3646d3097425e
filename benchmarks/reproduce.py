"""`make reproduce`: run the README's training commands, print a table, check accuracy floors.

Each command is the README's, printed verbatim, with the budget and data flags
appended. Exit status 1 if a command fails, misses its accuracy floor, or its
TensorBoard run lacks the kernel images.

Then the spatial benchmark: the same network with conv, sws and (when the
runner has it) local layers on `--dataset spatial_mnist`, MNIST with a fixed
rotation and inversion per quadrant, where location-specific kernels should
pay off (see `swsl_cli.runner.data.spatial_mnist`). It has no floor: it reports which
layer wins at a small budget that runs offline on 2 CPU cores in minutes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

# The README's commands (the original's two first) and whether the accuracy
# floor applies: the two ends of the spectrum (hard sharing, no sharing) are
# there for comparison only.
COMMANDS = {
    "swsl-train": True,
    "swsl-train --centroids_trainable --n_filters 24 48 --centroid_grid 3 3": True,
    "swsl-train --kcp_init independent": True,
    "swsl-train --layer conv": False,
    "swsl-train --layer local": False,
}
FULL_EPOCHS = 10
FULL_FLOOR = 0.995  # the goal at the README's full budget, on the mean over the seeds
FIRST_EPOCH_FLOOR = 0.99  # the goal after the first epoch of a full-budget run
SHORT_FLOOR = 0.97  # a shorter budget still has to learn
SEED = 1
# The spatial benchmark: one command per layer kind, at a budget small enough for CI.
SPATIAL_COMMAND = (
    "swsl-train --dataset spatial_mnist --max_shift 0 --max_rotation 0 --max_zoom 0 --layer"
)
SPATIAL_LAYERS = ("conv", "sws", "local")
SPATIAL_TRAIN, SPATIAL_TEST, SPATIAL_EPOCHS = 6000, 2000, 3


def has_kernel_images(run_dir: Path) -> bool:
    """Whether the run's `layers` events hold kernel images of both SWS layers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"]
    return all(f"pictures/sws{i}/kernels" in tags for i in (1, 2))


def available_layers() -> tuple[str, ...]:
    """The `--layer` choices this swsl-train offers (`local` only once that layer exists)."""
    from swsl_cli.runner.config import LAYERS

    return tuple(layer for layer in SPATIAL_LAYERS if layer in LAYERS)


def train_run(
    args, bin_dir: Path, command: str, run_name: str, seed: int, extra: list[str]
) -> dict | None:
    """Runs `command` with the seed, run name and `extra` flags appended: its metrics, or
    None if it failed."""
    extra = [
        *extra,
        "--seed",
        str(seed),
        "--quiet",
        "--logdir",
        args.logdir,
        "--run_name",
        run_name,
    ]
    extra += ["--data_dir", args.data_dir] if args.data_dir else []
    argv = shlex.split(command) + extra
    print(f"$ {command}   # + {' '.join(extra)}", flush=True)
    if subprocess.run([str(bin_dir / argv[0]), *argv[1:]]).returncode != 0:
        return None
    return json.loads((Path(args.logdir) / run_name / "metrics.json").read_text())


def spatial_run(args, bin_dir: Path, command: str, run_name: str, seed: int) -> dict | None:
    """One spatial benchmark command at the spatial budget: its metrics, None if it failed."""
    budget = [
        "--max_train_examples", str(args.spatial_train),
        "--max_test_examples", str(args.spatial_test),
        "--n_epochs", str(args.spatial_epochs),
    ]  # fmt: skip
    return train_run(args, bin_dir, command, run_name, seed, budget)


def images_per_second(runs: list[dict]) -> float:
    """The mean over every epoch of `runs` of its training images per second."""
    epochs = [e for run in runs for e in run["epochs"]]
    return sum(e["images_per_second"] for e in epochs) / len(epochs)


def seed_figures(values: list[float]) -> str:
    """`mean % (spread: each seed)` of accuracies in [0, 1]; the mean alone for one seed."""
    figures = [v * 100 for v in values]
    mean = sum(figures) / len(figures)
    if len(figures) == 1:
        return f"{mean:.2f} %"
    spread = max(figures) - min(figures)
    return f"{mean:.2f} % (spread {spread:.2f}: {' / '.join(f'{f:.2f}' for f in figures)})"


def _accuracies(runs: list[dict | None]) -> str:
    """The seeds' test accuracies (`seed_figures`), or `-` when a run failed."""
    if not runs or any(run is None for run in runs):
        return "-"
    return seed_figures([run["test_accuracy"] for run in runs])


def spatial_benchmark(args, stamp: str, bin_dir: Path) -> tuple[list[str], bool]:
    """Runs conv / sws / local on spatial_mnist for each seed (and, with --spatial_reference,
    on MNIST at the same budget); returns its table and whether a run failed."""
    seeds = range(SEED, SEED + args.spatial_seeds)
    rows = []
    for layer in available_layers():
        command = " ".join(filter(None, (SPATIAL_COMMAND, layer, args.spatial_flags)))
        plain = command.replace("spatial_mnist", "mnist")
        spatial, reference = [], []
        for seed in seeds:
            name = f"reproduce-{stamp}-{{}}-{layer}-s{seed}"
            spatial.append(spatial_run(args, bin_dir, command, name.format("spatial"), seed))
            if args.spatial_reference:
                reference.append(spatial_run(args, bin_dir, plain, name.format("mnist"), seed))
        rows.append((command, spatial, reference))

    def mean_accuracy(runs):
        return sum(r["test_accuracy"] for r in runs) / len(runs) if all(runs) else None

    best = max((a for a in (mean_accuracy(s) for _, s, _ in rows) if a), default=None)
    table = [
        "",
        f"Spatial benchmark (spatial_mnist): {args.spatial_train} training / {args.spatial_test} "
        f"test images, {args.spatial_epochs} epochs, seeds {', '.join(map(str, seeds))}"
        + ("" if "local" in available_layers() else "; --layer local not available yet")
        + ".",
        "",
        "| command | test accuracy | wall time (s) | images/s | | same budget on mnist |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for command, spatial, reference in rows:
        if not all(spatial):
            table.append(f"| `{command}` | - | - | - | FAILED | {_accuracies(reference)} |")
            continue
        speed = images_per_second(spatial)
        wall = sum(run["wall_time_s"] for run in spatial) / len(spatial)
        table.append(
            f"| `{command}` | {_accuracies(spatial)} | {wall:.0f} | {speed:.0f} "
            f"| {'best' if mean_accuracy(spatial) == best else ''} | {_accuracies(reference)} |"
        )
    failed = any(not all(s) or not all(r) for _, s, r in rows)
    return table, failed


def runs_table(logdir: str, stamp: str) -> str:
    """The `--compare` markdown table of this reproduction's runs (parameters included)."""
    from swsl_cli.runner import compare

    rows = compare.collect(Path(logdir), warn=lambda line: print(line, file=sys.stderr))
    return compare.render([r for r in rows if r.name.startswith(f"reproduce-{stamp}")], "markdown")


def readme_commands(args, stamp: str, bin_dir: Path) -> tuple[list[str], bool]:
    """Runs each README command once per seed; returns its table and whether a check failed."""
    full = args.epochs >= FULL_EPOCHS
    floor = FULL_FLOOR if full else SHORT_FLOOR
    budget = [] if args.epochs == FULL_EPOCHS else ["--n_epochs", str(args.epochs)]
    commands = list(COMMANDS.items())
    chosen = args.commands if args.commands is not None else range(len(commands))
    rows, failed = [], False
    for index in chosen:
        command, has_floor = commands[index]
        names = [f"reproduce-{stamp}-{index}-s{seed}" for seed in args.seeds]
        runs = [
            train_run(args, bin_dir, command, name, seed, budget)
            for name, seed in zip(names, args.seeds)
        ]
        if not all(runs):
            rows.append(f"| `{command}` | {args.epochs} | - | - | - | - | FAILED |")
            failed = True
            continue
        first = [run["epochs"][0]["val_accuracy"] for run in runs]
        last = [run["test_accuracy"] for run in runs]
        mean_first, mean_last = sum(first) / len(first), sum(last) / len(last)
        run_dirs = [Path(args.logdir) / name for name in names]
        if not has_floor:
            verdict = "ok (baseline, no floor)"
        elif mean_last < floor:
            verdict = f"below floor {floor:.3f}"
        elif full and mean_first < FIRST_EPOCH_FLOOR:
            verdict = f"epoch 1 below {FIRST_EPOCH_FLOOR:.3f}"
        elif not all(has_kernel_images(run_dir) for run_dir in run_dirs):
            verdict = "no kernel images"
        else:
            verdict = "ok"
        failed |= not verdict.startswith("ok")
        wall = sum(run["wall_time_s"] for run in runs) / len(runs)
        rows.append(
            f"| `{command}` | {args.epochs} | {seed_figures(first)} | {seed_figures(last)} "
            f"| {wall:.0f} | {images_per_second(runs):.0f} | {verdict} |"
        )
    goals = f"accuracy floor {floor:.3f} on the mean" + (
        f", {FIRST_EPOCH_FLOOR:.3f} after epoch 1" if full else ""
    )
    table = [
        f"Seeds {', '.join(map(str, args.seeds))}; {goals}; logs in {args.logdir}.",
        "",
        "| command | epochs | accuracy after epoch 1 | test accuracy after the last epoch "
        "| wall time (s) | images/s | check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
    ]
    return table, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=FULL_EPOCHS)
    parser.add_argument("--data_dir")
    parser.add_argument("--logdir", default="tensorboard")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[SEED], help="every README command once per seed"
    )
    parser.add_argument(
        "--commands",
        type=int,
        nargs="+",
        choices=range(len(COMMANDS)),
        help="only these README commands, by their index in the table (default: all)",
    )
    parser.add_argument(
        "--part", choices=("all", "mnist", "spatial"), default="all", help="what to run"
    )
    parser.add_argument("--spatial_train", type=int, default=SPATIAL_TRAIN)
    parser.add_argument("--spatial_test", type=int, default=SPATIAL_TEST)
    parser.add_argument("--spatial_epochs", type=int, default=SPATIAL_EPOCHS)
    parser.add_argument("--spatial_seeds", type=int, default=1, help="seeds 1..N per layer")
    parser.add_argument(
        "--spatial_flags", default="", help="more swsl-train flags for every spatial command"
    )
    parser.add_argument(
        "--spatial_reference",
        action="store_true",
        help="also train each spatial command on plain mnist at the same budget",
    )
    args = parser.parse_args()
    # A repeated seed or command would reuse a run name.
    args.seeds = list(dict.fromkeys(args.seeds))
    args.commands = None if args.commands is None else list(dict.fromkeys(args.commands))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bin_dir = Path(sys.executable).parent
    table, failed = [f"Logs in {args.logdir}."], False
    if args.part != "spatial":
        table, failed = readme_commands(args, stamp, bin_dir)
    if args.part != "mnist":
        spatial_table, spatial_failed = spatial_benchmark(args, stamp, bin_dir)
        table += spatial_table
        failed |= spatial_failed
    table += [
        "",
        "Every run of this reproduction (`swsl-train --compare`):",
        "",
        runs_table(args.logdir, stamp),
    ]
    print("\n".join(table))
    Path(args.logdir).mkdir(parents=True, exist_ok=True)
    (Path(args.logdir) / f"reproduce-{stamp}.md").write_text("\n".join(table) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
