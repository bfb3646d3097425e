"""`swsl-train --sweep`: sweep files, trial names, what run folders say is left, a real local
Ray sweep stopped by SIGINT and run again, and the message without the extra."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from swsl_cli.runner import runs, sweep
from swsl_cli.runner.cli import main
from swsl_cli.runner.config import Config

EXAMPLE = """\
fixed:            # flags every trial gets
  max_train_examples: 6000
  n_epochs: 3
grid:             # every combination of these
  dataset: [spatial_mnist, mnist]
  n_filters: [[8, 16], [24, 48]]
variants:         # named flag sets, each crossed with the grid
  sws: {}
  conv: {layer: conv}
  long-conv: {layer: conv, n_epochs: 10}
seeds: [0, 1]
"""


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_variants_grid_and_seeds_expand_into_named_trials(tmp_path):
    trials = sweep.load(write(tmp_path, EXAMPLE))
    assert len(trials) == 3 * 2 * 2 * 2
    assert [t.name for t in trials[:4]] == [
        "sws_spatial_mnist_n_filters8-16_s0",
        "sws_spatial_mnist_n_filters8-16_s1",
        "sws_spatial_mnist_n_filters24-48_s0",
        "sws_spatial_mnist_n_filters24-48_s1",
    ]
    assert trials[-1].name == "long-conv_mnist_n_filters24-48_s1"
    conv = next(t for t in trials if t.name == "conv_mnist_n_filters8-16_s1")
    assert conv.argv == (
        "--max_train_examples", "6000", "--n_epochs", "3", "--layer", "conv",
        "--dataset", "mnist", "--n_filters", "8", "16", "--seed", "1",
    )  # fmt: skip
    assert conv.config == Config(
        max_train_examples=6000, n_epochs=3, layer="conv", dataset="mnist", n_filters=(8, 16),
        seed=1,
    )  # fmt: skip
    # A variant's value wins over the fixed one.
    assert {t.config.n_epochs for t in trials if t.name.startswith("long-conv")} == {10}
    # The same keys in JSON give the same trials.
    import yaml

    as_json = write(tmp_path, json.dumps(yaml.safe_load(EXAMPLE)), "sweep.json")
    assert sweep.load(as_json) == trials


def test_names_without_variants_and_of_numbers_and_flags(tmp_path):
    path = write(
        tmp_path,
        """\
        grid:
          learning_rate: [0.001, 0.003]
          centroids_trainable: [true, false]
        """,
    )
    assert [t.name for t in sweep.load(path)] == [
        "learning_rate0.001_centroids_trainable_s0",
        "learning_rate0.001_no-centroids_trainable_s0",
        "learning_rate0.003_centroids_trainable_s0",
        "learning_rate0.003_no-centroids_trainable_s0",
    ]
    assert sweep.load(write(tmp_path, "seeds: [4, 2]\n"))[1].name == "s2"


def test_sweep_set_overrides_every_trial_and_replaces_a_grid_dimension(tmp_path):
    path = write(tmp_path, EXAMPLE)
    trials = sweep.load(path, {"n_epochs": 1, "seeds": [5], "n_filters": [4, 4]})
    assert len(trials) == 3 * 2
    assert [t.name for t in trials[:2]] == ["sws_spatial_mnist_s5", "sws_mnist_s5"]
    assert {(t.config.n_epochs, t.config.n_filters, t.config.seed) for t in trials} == {
        (1, (4, 4), 5)
    }
    assert sweep.parse_override("0 1 2") == [0, 1, 2]
    # YAML reads 1e-3 as text; the runner's parser reads it as the number.
    rate = sweep.load(path, {"learning_rate": sweep.parse_override("1e-3")})[0].config
    assert rate.learning_rate == 0.001
    assert sweep.parse_override("[8, 16]") == [8, 16] and sweep.parse_override("conv") == "conv"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "grid: {dataset: [mnist]}\nvariants: {conv: {layer: conv, colour: red}}\n",
            "trial conv_mnist_s0: unknown flag --colour (see swsl-train --help)",
        ),
        (
            "fixed: {n_epochs: 0}\n",
            "trial s0: argument --n_epochs: must be >= 1 and <= 100000, got '0'",
        ),
        ("fixed: {layer: dense}\n", "trial s0: argument --layer: invalid choice: 'dense'"),
        ("fixed: {n_filters: 8}\n", "trial s0: argument --n_filters: expected 2 arguments"),
        ("fixed: {centroids_trainable: yes please}\n", "takes true or false, got 'yes please'"),
        ("fixed: {lr_decay: 0.5}\n", "--lr_decay applies to --lr_schedule exponential"),
        ("grid: {seed: [0, 1]}\n", "grid: --seed is set by the sweep; give the seeds as"),
        ("fixed: {logdir: x}\n", "fixed: --logdir is set by the sweep; give --logdir beside"),
        ("grid: {layer: conv}\n", "grid: layer must be a non-empty list of values"),
        ("grid: {layer: [conv, conv]}\n", "grid: layer lists a value twice"),
        ("fixed: {layer: conv}\ngrid: {layer: [sws]}\n", "--layer is both in fixed and in grid"),
        ("grid: {layer: [sws]}\nvariants: {c: {layer: conv}}\n", "c sets --layer, which grid"),
        ("variants: {.hidden: {}}\n", "the name '.hidden' must be a plain folder name"),
        ("seeds: [1, 1]\n", "seeds: a seed is listed twice"),
        ("seeds: [-1]\n", "seeds: each seed must be >= 0 and <= 2.14748e+09, got -1"),
        ("runs: 3\n", "unknown section 'runs'; a sweep file has fixed, grid, variants, seeds"),
        ("- a list\n", "expected a mapping of fixed, grid, variants, seeds"),
        ("fixed: {a: [\n", "not valid YAML"),
        ("grid: {max_train_examples: [1, 1.5]}\n", "must be an integer, got '1.5'"),
    ],
)
def test_a_bad_sweep_file_is_refused_in_one_line(tmp_path, text, message):
    with pytest.raises(sweep.SweepFileError) as refused:
        sweep.load(write(tmp_path, text))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_command_line_refuses_training_flags_and_bad_files_before_ray(tmp_path, capsys):
    path = write(tmp_path, "fixed: {colour: red}\n")
    assert main(["--sweep", str(path), "--n_epochs", "3"]) == 2
    assert capsys.readouterr().err == (
        "swsl-train: error: --sweep takes only --logdir, --sweep_workers, --sweep_set and "
        "--quiet beside it, not --n_epochs; the trials' flags go into the sweep file "
        "(see swsl-train --help)\n"
    )
    assert main(["--sweep_workers", "2"]) == 2
    assert "--sweep_workers applies to --sweep only" in capsys.readouterr().err
    assert main(["--sweep", str(path), "--sweep_set", "heads=2"]) == 2
    assert "--sweep_set: unknown flag 'heads'" in capsys.readouterr().err
    assert main(["--sweep", str(path), "--sweep_workers", "0"]) == 2
    assert "argument --sweep_workers: must be >= 1, got '0'" in capsys.readouterr().err
    assert main(["--sweep", str(path), "--logdir", str(tmp_path / "tb")]) == 2
    assert capsys.readouterr().err == (
        f"swsl-train: error: sweep {path}: trial s0: unknown flag --colour (see swsl-train --help)\n"
    )
    assert main(["--sweep", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err.endswith("none.yaml: no such file\n")
    assert not (tmp_path / "tb").exists()


def make_run(logdir, name, status, epochs, **flags):
    """A run folder as the runner leaves it, with a checkpoint of its last epoch."""
    run = runs.RunDir(logdir / name)
    run.root.mkdir(parents=True)
    config = Config(logdir=str(logdir), run_name=name, deterministic=True, **flags)
    run.write_config(config)
    entries = [{"epoch": e + 1} for e in range(epochs)]
    run.write_metrics({"status": status, "epochs": entries})
    if epochs:
        state = {"epoch": epochs, "epochs": entries}
        run.save_checkpoint(lambda path: path.write_bytes(b"model"), state)
    return run


def test_run_folders_say_what_is_left_and_another_experiment_is_refused(tmp_path):
    trials = {
        t.name: t
        for t in sweep.load(write(tmp_path, "fixed: {n_epochs: 3}\nseeds: [0, 1, 2, 3, 4, 5]\n"))
    }
    logdir = tmp_path / "tb"
    make_run(logdir, "s0", "completed", 3, n_epochs=3, seed=0)
    make_run(logdir, "s1", "interrupted", 2, n_epochs=3, seed=1)
    make_run(logdir, "s2", "running", 1, n_epochs=3, seed=2)  # killed: its status never changed
    make_run(logdir, "s3", "running", 0, n_epochs=3, seed=3)  # killed before its first epoch
    make_run(logdir, "s4", "nonfinite_loss", 1, n_epochs=3, seed=4)
    steps = {name: sweep.plan_step(trial, logdir) for name, trial in trials.items()}
    assert {name: (s.action, s.epochs_done) for name, s in steps.items()} == {
        "s0": ("done", 3),
        "s1": ("resume", 2),
        "s2": ("resume", 1),
        "s3": ("stuck", 0),
        "s4": ("stuck", 1),
        "s5": ("new", 0),
    }
    assert "no complete epoch to resume; remove it" in steps["s3"].detail
    assert sweep.trial_command(steps["s1"], logdir) == [
        "--resume", "--logdir", str(logdir), "--run_name", "s1", "--quiet",
    ]  # fmt: skip
    assert sweep.trial_command(steps["s5"], logdir) == [
        "--n_epochs", "3", "--seed", "5", "--logdir", str(logdir), "--run_name", "s5", "--quiet",
    ]  # fmt: skip
    outcomes = [sweep.outcome(s, logdir, None) for s in steps.values()]
    assert [(o.name, o.state) for o in outcomes] == [
        ("s0", "completed"), ("s1", "interrupted"), ("s2", "interrupted"), ("s3", "failed"),
        ("s4", "failed"), ("s5", "not started"),
    ]  # fmt: skip
    # A process that failed: its last command's one-line error, and where its log is.
    log = logdir / "sweep-logs" / "s5.log"
    log.parent.mkdir()
    log.write_text(
        "$ swsl-train --seed 5\nswsl-train: interrupted by SIGINT while starting\n"
        "$ swsl-train --seed 5\nswsl-train 0.3.1: new run\nswsl-train: error: no data here\n"
    )
    assert sweep.outcome(steps["s5"], logdir, 1) == sweep.Outcome(
        "s5", "failed", f"swsl-train: error: no data here (log: {log})"
    )
    summary = sweep.summary_lines(outcomes, 12.3)
    assert summary[0] == (
        "sweep: 6 trial(s): 1 completed, 2 interrupted, 2 failed, 1 not started; 12 s"
    )
    assert summary[2] == "  interrupted  s1  2/3 epochs saved; run the sweep again"
    # The same name with other settings is another experiment: never trained over.
    longer = sweep.load(write(tmp_path, "fixed: {n_epochs: 5}\n"))[0]
    with pytest.raises(sweep.SweepError) as refused:
        sweep.plan_step(longer, logdir)
    assert str(refused.value) == (
        f"trial s0: run folder {logdir / 's0'} was trained with --n_epochs 3, the sweep asks "
        "for 5; use another --logdir, or remove that folder to train the trial anew"
    )


def run_cli(*args, flags=(), **kwargs):
    return subprocess.run(
        [sys.executable, *flags, "-m", "swsl_cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        **kwargs,
    )


@pytest.mark.parametrize(
    "hidden, argv, message",
    [
        (
            "ray",
            ["--sweep", "{file}"],
            "swsl-train: error: --sweep needs Ray Tune and PyYAML (ray is missing): pip install "
            '"swsl-cli[sweep]" (in a clone: pip install ".[sweep]")',
        ),
        (
            "yaml",
            ["--sweep", "{file}"],
            "swsl-train: error: --sweep needs Ray Tune and PyYAML (yaml is missing): pip install "
            '"swsl-cli[sweep]" (in a clone: pip install ".[sweep]")',
        ),
        (
            "matplotlib",
            ["--compare", "{logdir}", "--plot", "p.png"],
            'swsl-train --compare: error: --plot needs matplotlib: pip install "swsl-cli[plot]" '
            '(in a clone: pip install ".[plot]")',
        ),
    ],
)
def test_without_the_extra_one_line_says_what_to_install(tmp_path, hidden, argv, message):
    path = write(tmp_path, "fixed: {n_epochs: 1}\n")
    (tmp_path / "tb").mkdir()
    argv = [a.format(file=path, logdir=tmp_path / "tb") for a in argv]
    hide = f"import sys; sys.modules[{hidden!r}] = None; from swsl_cli.runner.cli import main; "
    result = run_cli(
        flags=["-c", hide + f"sys.exit(main({argv!r}))"], cwd=tmp_path
    )  # the module is hidden as if it were not installed
    assert result.returncode == 1
    assert result.stderr.splitlines() == [message] and result.stdout == ""
    assert not (tmp_path / "tb" / "s0").exists()


LONG_EPOCHS = 32  # the long trial of the SIGINT sweep: 128 steps of batch 1 each


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """128 training and 32 test images of 12x12: a trial trains in seconds."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (128, 12, 12), dtype=np.uint8),
        y_train=rng.integers(0, 10, 128),
        x_test=rng.integers(0, 256, (32, 12, 12), dtype=np.uint8),
        y_test=rng.integers(0, 10, 32),
    )
    return path


def metrics(logdir, name):
    return json.loads((logdir / name / "metrics.json").read_text())


@pytest.fixture(scope="module")
def stopped_and_rerun(tmp_path_factory, tiny_npz):
    """A real local Ray sweep of two trials at once: SIGINT once the quick trial is complete
    and the long one has saved an epoch since; then the same command again, and a third time.

    The two trials start side by side; the long one has enough epochs that it is still
    training when the quick one completes, even when start-up on a loaded machine delays the
    quick one by many of the long one's epochs."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = write(
        tmp,
        f"""\
        fixed: {{data_dir: {tiny_npz}, n_filters: [2, 2], max_test_examples: 32}}
        variants:
          quick: {{n_epochs: 1}}
          long: {{n_epochs: {LONG_EPOCHS}, batch_size: 1}}
        """,
    )
    command = [sys.executable, "-m", "swsl_cli", "--sweep", str(path), "--logdir", str(tmp / "tb")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    driver = subprocess.Popen(
        [*command, "--sweep_workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    lines = []
    try:
        for line in driver.stdout:
            lines.append(line)
            if line.startswith("long_s0: epoch") and any(
                earlier.startswith("quick_s0: completed") for earlier in lines
            ):
                driver.send_signal(signal.SIGINT)
                break
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:  # it hung: end it, the test fails on its output
            driver.kill()
    first = subprocess.CompletedProcess(driver.args, driver.returncode, "".join(lines) + out, err)
    quick_after_first = (tmp / "tb" / "quick_s0" / "metrics.json").read_text()
    long_after_first = metrics(tmp / "tb", "long_s0")

    def again():
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    rerun = again()
    return {
        "logdir": tmp / "tb",
        "first": first,
        "long_after_first": long_after_first,
        "quick_unchanged": quick_after_first
        == (tmp / "tb" / "quick_s0" / "metrics.json").read_text(),
        "rerun": rerun,
        "third": again(),
    }


def test_two_trials_at_once_then_sigint_stops_the_sweep_cleanly(stopped_and_rerun):
    first = stopped_and_rerun["first"]
    assert first.returncode == 130, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    assert "2 trial(s) to train, 2 at once on local Ray" in first.stdout
    assert first.stderr.splitlines()[-1] == (
        "swsl-train: sweep interrupted by SIGINT; run the same command again to go on "
        "(completed trials are skipped, interrupted ones resumed)"
    )
    summary = first.stdout[first.stdout.index("sweep: 2 trial(s)") :].splitlines()
    assert summary[0].startswith(
        "sweep: 2 trial(s): 1 completed, 1 interrupted, 0 failed, 0 not started; "
    )
    assert summary[1].split()[:4] == ["completed", "quick_s0", "test", "accuracy"]
    assert summary[2].split()[:2] == ["interrupted", "long_s0"]
    stopped = stopped_and_rerun["long_after_first"]
    assert stopped["status"] == "interrupted" and 1 <= len(stopped["epochs"]) < LONG_EPOCHS


def test_the_rerun_skips_the_completed_trial_and_resumes_the_interrupted_one(stopped_and_rerun):
    rerun, logdir = stopped_and_rerun["rerun"], stopped_and_rerun["logdir"]
    assert rerun.returncode == 0, rerun.stderr
    assert "2 trial(s) in" in rerun.stdout and "1 complete, 1 to resume, 0 new" in rerun.stdout
    done = len(stopped_and_rerun["long_after_first"]["epochs"])
    assert f"long_s0: resuming after epoch {done}" in rerun.stdout
    assert stopped_and_rerun["quick_unchanged"]
    long = metrics(logdir, "long_s0")
    assert long["status"] == "completed" and [e["epoch"] for e in long["epochs"]] == list(
        range(1, LONG_EPOCHS + 1)
    )
    assert metrics(logdir, "quick_s0")["status"] == "completed"
    log = (logdir / "sweep-logs" / "long_s0.log").read_text()
    assert f"resuming after epoch {done}" in log and "TF_NUM" not in log
    third = stopped_and_rerun["third"]
    assert third.returncode == 0 and "2 complete, 0 to resume, 0 new" in third.stdout
    assert "on local Ray" not in third.stdout  # nothing left: Ray is not even started
    assert third.stdout.splitlines()[-2:] == [
        f"  completed    quick_s0  test accuracy "
        f"{metrics(logdir, 'quick_s0')['test_accuracy']:.4f}, already complete",
        f"  completed    long_s0   test accuracy {long['test_accuracy']:.4f}, already complete",
    ]


def test_trials_are_ordinary_runs_for_compare(stopped_and_rerun):
    logdir = stopped_and_rerun["logdir"]
    result = run_cli("--compare", str(logdir), "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert rows[0].startswith("group,n,completed,")
    assert [row.split(",")[:3] for row in rows[1:]] == [["long", "1", "1"], ["quick", "1", "1"]]
