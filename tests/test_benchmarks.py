"""The comparison benchmark's sweep files: every trial is a valid swsl-train command."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from swsl_cli.runner.cli import given_flags, training_command
from swsl_cli.runner.model import build_model, parameter_counts

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SWEEPS = ("comparison.yaml", "comparison-short.yaml")


def sweep(name):
    return yaml.safe_load((BENCHMARKS / name).read_text())


def argv_of(flags: dict) -> list[str]:
    """A trial's flags as a command line: `true` is a bare flag, a list several values."""
    argv = []
    for name, value in flags.items():
        if value is True:
            argv.append(f"--{name}")
        else:
            values = value if isinstance(value, list) else [value]
            argv += [f"--{name}", *map(str, values)]
    return argv


def trials(spec):
    """Every trial's flags: fixed, then one grid point, then one variant, then the seed."""
    names = list(spec["grid"])
    for point in itertools.product(*(spec["grid"][name] for name in names)):
        for variant, flags in spec["variants"].items():
            for seed in spec["seeds"]:
                yield variant, {**spec["fixed"], **dict(zip(names, point)), **flags, "seed": seed}


@pytest.mark.parametrize("name", SWEEPS)
def test_every_trial_is_a_valid_command(name):
    spec = sweep(name)
    assert set(spec) == {"fixed", "grid", "variants", "seeds"}
    configs = {}
    for variant, flags in trials(spec):
        config, _ = training_command(given_flags(argv_of(flags)))
        configs.setdefault(variant, config)
    layers = {config.layer for config in configs.values()}
    assert layers == {"conv", "coordconv", "sws", "lrlc", "local"}
    sws = [c for c in configs.values() if c.layer == "sws"]
    for trainable in (False, True):
        assert len({c.scaling for c in sws if c.centroids_trainable == trainable}) >= 2


def test_the_full_benchmark_covers_the_protocol_and_the_short_one_is_small():
    full, short = sweep("comparison.yaml"), sweep("comparison-short.yaml")
    assert len(full["variants"]) >= 9 and len(full["seeds"]) >= 5
    assert full["grid"] == {"dataset": ["spatial_mnist", "mnist"], "head": ["dense", "gap"]}
    assert short["variants"] == full["variants"] and short["grid"] == full["grid"]
    assert len(short["seeds"]) <= 2 and short["fixed"]["max_train_examples"] <= 1000
    assert len(list(trials(full))) == 200


@pytest.mark.parametrize("head", ["dense", "gap"])
def test_the_wide_conv_matches_the_sws_nets_parameter_count(head):
    variants = sweep("comparison.yaml")["variants"]
    counts = {}
    for variant in ("wide-conv", "sws-s1"):
        flags = {**variants[variant], "head": head}
        config, _ = training_command(given_flags(argv_of(flags)))
        counts[variant] = parameter_counts(build_model(config))["total"]
    assert abs(counts["wide-conv"] - counts["sws-s1"]) / counts["sws-s1"] < 0.005


def test_comparison_table_gives_mean_interval_sd_and_welch_difference_to_conv(tmp_path):
    """`benchmarks/comparison_table.py` over fabricated runs of a comparison sweep."""
    from tests.test_compare import epochs, make_run

    logdir = tmp_path / "tb"
    accuracies = {"conv": (0.90, 0.91, 0.92), "sws-s3": (0.95, 0.96, 0.97), "local": (0.93,)}
    for variant, values in accuracies.items():
        layer = variant.split("-")[0]
        for seed, value in enumerate(values):
            make_run(
                logdir,
                f"{variant}_spatial_mnist_dense_s{seed}",
                {"status": "completed", "epochs": epochs(900.0), "test_accuracy": value - 0.1},
                layer=layer,
                dataset="spatial_mnist",
                seed=seed,
            )
            make_run(
                logdir,
                f"{variant}_mnist_gap_s{seed}",
                {
                    "status": "completed",
                    "epochs": epochs(1000.0 + seed),
                    "test_accuracy": value,
                    "parameters": {"total": 12106 if layer == "conv" else 47002},
                },
                layer=layer,
                head="gap",
                dataset="mnist",
                seed=seed,
            )
    table = subprocess.run(
        [sys.executable, str(BENCHMARKS / "comparison_table.py"), str(logdir), "--seeds", "3"],
        capture_output=True,
        text=True,
        env={**os.environ, "SWSL_OFFLINE": "1"},
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    split = lines.index("Difference to conv, points, with Welch's 95 % interval:")
    accuracy, differences = lines[:split], lines[split:]
    # Student's t with 2 degrees of freedom: 4.303 x 1.00 / sqrt(3) = 2.48 points.
    assert accuracy[2:] == [
        "| conv | 81.00 ± 2.48 (sd 1.00) | - | - | 91.00 ± 2.48 (sd 1.00) | - / 12,106 | 900 / 1,001 |",
        "| local | 83.00 (n=1) | - | - | 93.00 (n=1) | - / 47,002 | 900 / 1,000 |",
        "| sws-s3 | 86.00 ± 2.48 (sd 1.00) | - | - | 96.00 ± 2.48 (sd 1.00) | - / 47,002 | 900 / 1,001 |",
        "",
    ]
    # Equal spreads: Welch's 4 degrees of freedom, t = 2.776, standard error sqrt(2/3).
    assert "| sws-s3 | **+5.00 [+2.73, +7.27]** | - | - | **+5.00 [+2.73, +7.27]** |" in differences
    assert "| local | - | - | - | - |" in differences


def test_comparison_table_of_runs_not_named_as_the_sweep_names_them_is_one_error_line(tmp_path):
    from tests.test_compare import epochs, make_run

    logdir = tmp_path / "tb"
    make_run(logdir, "default_s0", {"status": "completed", "epochs": epochs(1000.0)}, seed=0)
    table = subprocess.run(
        [sys.executable, str(BENCHMARKS / "comparison_table.py"), str(logdir)],
        capture_output=True,
        text=True,
        env={**os.environ, "SWSL_OFFLINE": "1"},
    )
    assert table.returncode == 1 and table.stdout == ""
    assert table.stderr.splitlines() == [
        f"comparison_table.py: error: no run in {logdir} is named as the comparison sweep"
        " names its trials (VARIANT_DATASET_HEAD_sSEED)"
    ]


def test_comparison_table_to_a_closed_stdout_or_a_full_disk_is_one_error_line(tmp_path):
    from tests.test_compare import epochs, make_run

    logdir = tmp_path / "tb"
    make_run(
        logdir,
        "conv_mnist_gap_s0",
        {"status": "completed", "epochs": epochs(1000.0), "test_accuracy": 0.9},
        layer="conv",
        head="gap",
        seed=0,
    )
    script = BENCHMARKS / "comparison_table.py"
    env = {**os.environ, "SWSL_OFFLINE": "1"}
    closed = subprocess.run(
        ["bash", "-c", f'exec "$0" {script} {logdir} >&-', sys.executable],
        capture_output=True,
        text=True,
        env=env,
    )
    assert closed.returncode == 1
    assert closed.stderr.splitlines() == ["comparison_table.py: error: standard output is closed"]
    with open("/dev/full", "w") as full:
        filled = subprocess.run(
            [sys.executable, str(script), str(logdir)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    assert filled.returncode == 1
    assert filled.stderr.splitlines() == [
        "comparison_table.py: error: cannot print the table: [Errno 28] No space left on device"
    ]


def test_the_per_cell_matmul_floor_computes_the_locally_connected_layers_products():
    """`make bench`'s floor row times the products of `LocallyConnected2D`, not others."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench
    finally:
        sys.path.remove(str(BENCHMARKS))
    import numpy as np
    import tensorflow as tf

    _, (patches_gradient, kernel_gradient), layer, inputs = bench.per_cell_matmuls(
        (2, 5, 6, 3), 4, 3, input_gradient=True
    )
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = tf.reduce_sum(tf.square(layer(inputs)))
    input_gradient, expected = tape.gradient(loss, [inputs, layer.kernel])
    np.testing.assert_allclose(
        kernel_gradient.numpy(), expected.numpy().reshape(30, -1, 4), rtol=1e-4, atol=1e-4
    )
    # The patches' gradient, (cells, K, batch), summed back onto the pixels each row read.
    assert patches_gradient.shape == (30, 27, 2)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        patches = tf.image.extract_patches(inputs, (1, 3, 3, 1), (1, 1, 1, 1), (1, 1, 1, 1), "SAME")
        flat = tf.transpose(tf.reshape(patches, (2, 30, -1)), (1, 2, 0))
    np.testing.assert_allclose(
        tape.gradient(flat, inputs, output_gradients=patches_gradient).numpy(),
        input_gradient.numpy(),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("problem", ["out_under_a_file", "missing_data"])
def test_bench_refuses_an_unwritable_table_or_missing_data_in_one_line_before_measuring(
    tmp_path, problem
):
    (tmp_path / "file").write_text("not a folder")
    argv = ["--out", str(tmp_path / "file" / "bench.md")]
    if problem == "missing_data":
        argv = ["--out", str(tmp_path / "bench.md"), "--data_dir", str(tmp_path / "nothing")]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench.py"), *argv, "--layer_steps_only"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("bench.py")]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stdout == ""  # refused before any measuring
