"""`benchmarks/reproduce.py`: `make reproduce`'s floors, checked on the groups of seeds."""

import os
import subprocess
import sys
from pathlib import Path

from tests.test_compare import epochs, make_run

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce.py"


def reproduction(logdir, variant, accuracies, first=0.992, n_epochs=10, **flags):
    for seed, accuracy in enumerate(accuracies):
        make_run(
            logdir,
            f"{variant}_s{seed}",
            {
                "status": "completed",
                "epochs": epochs(*[1000.0] * n_epochs, val_accuracy=first),
                "test_accuracy": accuracy,
            },
            n_epochs=n_epochs,
            seed=seed,
            **flags,
        )


def check(logdir):
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(logdir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_floors_on_the_mean_over_seeds_at_ten_epochs(tmp_path):
    logdir = tmp_path / "reproduce-10ep"
    reproduction(logdir, "default", [0.9962, 0.9944])  # mean 0.9953: one seed below, mean above
    reproduction(logdir, "trainable-3x3", [0.9960], first=0.989, centroid_grid=(3, 3))
    reproduction(logdir, "independent", [0.9940, 0.9945], kcp_init="independent")
    reproduction(logdir, "conv", [0.99], layer="conv")  # a baseline: no floor
    result = check(logdir)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[-5:] == [
        "- default: ok (>= 0.995, epoch 1 >= 0.990)",
        "- trainable-3x3: epoch 1 below 0.990 on the mean",
        "- independent: test accuracy below 0.995 on the mean",
        "- conv: ok (baseline, no floor)",
        "- local: no runs",
    ]
    assert result.stdout.startswith("| group | n | completed |")
    assert (logdir / "reproduce.md").read_text() == result.stdout


def test_a_shorter_budget_has_the_lower_floor(tmp_path):
    logdir = tmp_path / "reproduce-1ep"
    for variant, flags in [
        ("default", {}),
        ("trainable-3x3", {"centroid_grid": (3, 3)}),
        ("independent", {"kcp_init": "independent"}),
        ("conv", {"layer": "conv"}),
        ("local", {"layer": "local"}),
    ]:
        reproduction(logdir, variant, [0.975], first=0.975, n_epochs=1, **flags)
    result = check(logdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-5] == "- default: ok (>= 0.970)"
