"""`make reproduce`'s check: the accuracy floors, on the groups of seeds of a reproduction.

`make reproduce` trains `benchmarks/reproduce.yaml` (the README's commands, one
variant each, once per seed) with `swsl-train --sweep`; this script then reads
that logdir as `swsl-train --compare` groups it and checks each floored
variant's mean over its seeds:

    python benchmarks/reproduce.py LOGDIR

It prints the grouped table (markdown, also written to LOGDIR/reproduce.md)
and a verdict per variant; exit status 1 when a variant misses its floor or
has a run that did not complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from swsl_cli.runner import compare

# The variants of reproduce.yaml with a floor; conv and local are baselines.
FLOORED = ("default", "trainable-3x3", "independent")
BASELINES = ("conv", "local")
FULL_EPOCHS = 10
FULL_FLOOR = 0.995  # test accuracy at the README's full budget, on the mean over the seeds
FIRST_EPOCH_FLOOR = 0.99  # validation accuracy after epoch 1 of a full-budget run, on the mean
SHORT_FLOOR = 0.97  # a shorter budget still has to learn


def verdict(group: compare.RunGroup) -> str:
    """`ok`, or what the group misses."""
    if group.completed < len(group.runs):
        return f"{len(group.runs) - group.completed} of {len(group.runs)} run(s) not completed"
    if group.label in BASELINES:
        return "ok (baseline, no floor)"
    epochs = min(run.row.epochs_planned or 0 for run in group.runs)
    full = epochs >= FULL_EPOCHS
    floor = FULL_FLOOR if full else SHORT_FLOOR
    test, first = group.test_accuracy, group.first_epoch_accuracy
    if test is None or test.mean < floor:
        return f"test accuracy below {floor:.3f} on the mean"
    if full and (first is None or first.mean < FIRST_EPOCH_FLOOR):
        return f"epoch 1 below {FIRST_EPOCH_FLOOR:.3f} on the mean"
    return f"ok (>= {floor:.3f}" + (f", epoch 1 >= {FIRST_EPOCH_FLOOR:.3f})" if full else ")")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="the --logdir of the reproduction's sweep")
    logdir = Path(parser.parse_args(argv).logdir)
    if not logdir.is_dir():
        print(f"reproduce: {logdir} is not a folder; run make reproduce first", file=sys.stderr)
        return 1
    runs = compare.collect_figures(logdir, warn=lambda line: print(line, file=sys.stderr))
    groups = {group.label: group for group in compare.group_runs(runs)}
    lines = [compare.render_groups(list(groups.values()), "markdown"), ""]
    failed = False
    for name in (*FLOORED, *BASELINES):
        check = verdict(groups[name]) if name in groups else "no runs"
        failed |= not check.startswith("ok")
        lines.append(f"- {name}: {check}")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    (logdir / "reproduce.md").write_text(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
