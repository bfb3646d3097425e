"""The comparison benchmark's results as one table: a row per variant, a column per data set and head.

    python benchmarks/comparison_table.py LOGDIR [--seeds N]

Reads `swsl-train --compare LOGDIR --format csv` (the groups of seeds) and prints, per variant,
the test accuracy as mean ± half the 95 % interval (Student's t) with the number of seeds, for
spatial_mnist and mnist under the dense and the gap head, then the parameter counts and the mean
images/s. Groups with fewer completed runs than --seeds are marked with their n.
"""

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path

CELLS = [(d, h) for d in ("spatial_mnist", "mnist") for h in ("dense", "gap")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", type=Path)
    parser.add_argument("--seeds", type=int, default=5, help="the seeds a complete cell has")
    args = parser.parse_args()
    swsl_train = Path(sys.executable).parent / "swsl-train"
    command = [str(swsl_train), "--compare", str(args.logdir), "--format", "csv"]
    table = subprocess.run(command, capture_output=True, text=True)
    if table.returncode:
        print(table.stderr.strip(), file=sys.stderr)
        return table.returncode
    groups = {row["group"]: row for row in csv.DictReader(io.StringIO(table.stdout))}
    variants = []
    for name in groups:
        variant = name
        for dataset, head in CELLS:
            variant = variant.removesuffix(f"_{dataset}_{head}")
        if variant not in variants:
            variants.append(variant)
    heads = " | ".join(f"{d} {h}" for d, h in CELLS)
    print(f"| variant | {heads} | parameters dense / gap | images/s dense / gap |")
    print("| --- |" + " ---: |" * (len(CELLS) + 2))
    for variant in variants:
        cells, params, speed = [], {}, {}
        for dataset, head in CELLS:
            row = groups.get(f"{variant}_{dataset}_{head}")
            if not row or not row["test_accuracy_mean"]:
                cells.append("-")
                continue
            n = int(row["test_accuracy_n"])
            mean = 100 * float(row["test_accuracy_mean"])
            text = f"{mean:.2f}"
            if row["test_accuracy_ci95_high"]:
                text += f" ± {100 * (float(row['test_accuracy_ci95_high']) - float(row['test_accuracy_mean'])):.2f}"
            if n < args.seeds:
                text += f" (n={n})"
            cells.append(text)
            params[head] = int(row["params"])
            if row["images_per_s_mean"]:
                speed.setdefault(head, []).append(float(row["images_per_s_mean"]))
        p = " / ".join(f"{params[h]:,}" if h in params else "-" for h in ("dense", "gap"))
        s = " / ".join(
            f"{sum(speed[h]) / len(speed[h]):,.0f}" if h in speed else "-" for h in ("dense", "gap")
        )
        print(f"| {variant} | " + " | ".join(cells) + f" | {p} | {s} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
