"""The comparison benchmark's results as one table: a row per variant, a column per data set and head.

    python benchmarks/comparison_table.py LOGDIR [--seeds N]

Reads `swsl-train --compare LOGDIR --format csv` (the groups of seeds) and prints two tables.
The first gives, per variant, the test accuracy as mean ± half the 95 % interval (Student's t)
and the seeds' standard deviation, for spatial_mnist and mnist under the dense and the gap
head, then the parameter counts and the mean images/s. The second gives each variant's
difference to `conv` in the same cell, in points, with Welch's 95 % interval, in bold where
the interval leaves out 0. Groups with fewer completed runs than --seeds are marked with their n.
"""

import argparse
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

from swsl_cli.runner import compare
from swsl_cli.runner.statistics import Summary, difference

CELLS = [(d, h) for d in ("spatial_mnist", "mnist") for h in ("dense", "gap")]
BASELINE = "conv"


def summary_of(row) -> Summary | None:
    """The test accuracy of one group, in points."""
    if not row or not row["test_accuracy_mean"]:
        return None

    def points(key):
        return 100 * float(row[key]) if row[key] else None

    return Summary(
        int(row["test_accuracy_n"]),
        points("test_accuracy_mean"),
        points("test_accuracy_sd"),
        points("test_accuracy_ci95_low"),
        points("test_accuracy_ci95_high"),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path)
    parser.add_argument("--seeds", type=int, default=5, help="the seeds a complete cell has")
    args = parser.parse_args()
    swsl_train = Path(sys.executable).parent / "swsl-train"
    command = [str(swsl_train), "--compare", str(args.logdir), "--format", "csv"]
    table = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(table.stderr)  # damaged runs, or why there is no table
    if table.returncode:
        return table.returncode
    groups = {row["group"]: row for row in csv.DictReader(io.StringIO(table.stdout))}
    variants = []
    # The longest suffix first: `_spatial_mnist_gap` before `_mnist_gap`.
    suffixes = sorted((f"_{d}_{h}" for d, h in CELLS), key=len, reverse=True)
    for name in groups:
        for suffix in suffixes:
            if name.endswith(suffix):
                if name.removesuffix(suffix) not in variants:
                    variants.append(name.removesuffix(suffix))
                break
    if not variants:
        if groups:  # (without any, swsl-train --compare has said that there are no runs)
            print(
                f"comparison_table.py: error: no run in {args.logdir} is named as the comparison"
                " sweep names its trials (VARIANT_DATASET_HEAD_sSEED)",
                file=sys.stderr,
            )
        return 1
    out = []
    heads = " | ".join(f"{d} {h}" for d, h in CELLS)
    out.append(f"| variant | {heads} | parameters dense / gap | images/s dense / gap |")
    out.append("| --- |" + " ---: |" * (len(CELLS) + 2))
    for variant in variants:
        cells, params, speed = [], {}, {}
        for dataset, head in CELLS:
            row = groups.get(f"{variant}_{dataset}_{head}")
            summary = summary_of(row)
            if summary is None:
                cells.append("-")
                continue
            text = f"{summary.mean:.2f}"
            if summary.sd is not None:
                text += f" ± {summary.half_width:.2f} (sd {summary.sd:.2f})"
            if summary.n < args.seeds:
                text += f" (n={summary.n})"
            cells.append(text)
            if row["params"]:
                params[head] = int(row["params"])
            if row["images_per_s_mean"]:
                speed.setdefault(head, []).append(float(row["images_per_s_mean"]))
        p = " / ".join(f"{params[h]:,}" if h in params else "-" for h in ("dense", "gap"))
        s = " / ".join(
            f"{sum(speed[h]) / len(speed[h]):,.0f}" if h in speed else "-" for h in ("dense", "gap")
        )
        out.append(f"| {variant} | " + " | ".join(cells) + f" | {p} | {s} |")
    out.append("")
    out.append(f"Difference to {BASELINE}, points, with Welch's 95 % interval:")
    out.append("")
    out.append(f"| variant | {heads} |")
    out.append("| --- |" + " ---: |" * len(CELLS))
    for variant in variants:
        if variant == BASELINE:
            continue
        cells = []
        for dataset, head in CELLS:
            ours = summary_of(groups.get(f"{variant}_{dataset}_{head}"))
            theirs = summary_of(groups.get(f"{BASELINE}_{dataset}_{head}"))
            d = difference(ours, theirs) if ours and theirs else None
            if d is None:
                cells.append("-")
                continue
            text = f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"
            cells.append(f"**{text}**" if d.low > 0 or d.high < 0 else text)
        out.append(f"| {variant} | " + " | ".join(cells) + " |")
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        print("comparison_table.py: error: standard output is closed", file=sys.stderr)
        return 1
    try:
        # --compare's writer: quiet when the reader leaves early (`| head -2`), and
        # names it cannot encode escaped.
        compare._write("\n".join(out) + "\n", sys.stdout)
    except OSError as error:  # a full disk, a closed descriptor
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"comparison_table.py: error: cannot print the table: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # it only reads: nothing to clean up
        print("comparison_table.py: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
