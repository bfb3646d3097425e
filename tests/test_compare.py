"""`swsl-train --compare`: the runs table from run folders' JSON files, damaged files, pipes."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from swsl_cli.runner import compare
from swsl_cli.runner.config import Config


def make_run(logdir, name, metrics=None, **flags):
    """A run folder as `runs.create` and `train.write_metrics` leave it."""
    folder = logdir / name
    folder.mkdir(parents=True)
    config = Config(logdir=str(logdir), run_name=name, **{"seed": 1, **flags}).to_dict()
    (folder / "config.json").write_text(json.dumps(config))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps({"flags": config, **metrics}))
    return folder


def epochs(*speeds, val_accuracy=0.9):
    return [
        {"epoch": i + 1, "images_per_second": s, "val_accuracy": val_accuracy}
        for i, s in enumerate(speeds)
    ]


@pytest.fixture
def logdir(tmp_path):
    """Five runs of every kind and state, one damaged, and a folder that is no run."""
    logdir = tmp_path / "tb"
    make_run(
        logdir,
        "a-sws",
        {"status": "completed", "epochs": epochs(1000.0, 1200.0), "test_accuracy": 0.98765},
        n_epochs=2,
    )
    make_run(
        logdir,
        "b-conv",
        {
            "status": "completed",
            "epochs": epochs(5000.0),
            "test_accuracy": 0.5,
            "dataset": "cifar10",
            "parameters": {"conv1": 100, "total": 1234567},
        },
        n_epochs=1,
        layer="conv",
    )
    make_run(
        logdir,
        "c-random",
        {"status": "interrupted", "epochs": epochs(900.0), "parameters": 4321},
        n_epochs=10,
        n_centroids=13,
        centroids_trainable=True,
    )
    make_run(logdir, "d-startup-failed", n_epochs=3)
    damaged = make_run(logdir, "e-damaged", {}, n_epochs=4)
    (damaged / "metrics.json").write_text('{"status": "comp')  # cut short by a full disk
    (logdir / "not-a-run").mkdir()
    (logdir / "notes.txt").write_text("a file beside the runs")
    return logdir


def compare_output(logdir, fmt="table"):
    out, err = io.StringIO(), io.StringIO()
    status = compare.main(str(logdir), fmt, stream=out, errors=err)
    return status, out.getvalue(), err.getvalue()


def test_table_lists_every_run_by_name_with_aligned_columns(logdir):
    status, out, err = compare_output(logdir)
    assert status == 0
    assert out.splitlines() == [
        "run               dataset  layer  centroids               params  epochs  test_accuracy  "
        "images_per_s  status",
        "a-sws             mnist    sws    2x2                          -     2/2         0.9877  "
        "        1100  completed",
        "b-conv            cifar10  conv   -                    1,234,567     1/1         0.5000  "
        "        5000  completed",
        "c-random          mnist    sws    13 random trainable      4,321    1/10              -  "
        "         900  interrupted",
        "d-startup-failed  mnist    sws    2x2                          -       -              -  "
        "           -  not started",
        "e-damaged         mnist    sws    2x2                          -       -              -  "
        "           -  damaged",
    ]
    (line,) = err.splitlines()  # one line for the damaged file
    assert line.startswith("swsl-train --compare: ") and "e-damaged/metrics.json: damaged" in line


def test_csv_keeps_exact_numbers_and_leaves_gaps_empty(logdir):
    status, out, _ = compare_output(logdir, "csv")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["run"] for row in rows] == [
        "a-sws",
        "b-conv",
        "c-random",
        "d-startup-failed",
        "e-damaged",
    ]
    assert rows[0]["test_accuracy"] == "0.98765" and rows[0]["images_per_s"] == "1100.0"
    assert rows[1]["params"] == "1234567" and rows[1]["dataset"] == "cifar10"
    assert rows[2]["epochs"] == "1" and rows[2]["epochs_planned"] == "10"
    assert rows[2]["centroids"] == "13 random trainable" and rows[2]["test_accuracy"] == ""
    assert rows[4]["status"] == "damaged" and rows[4]["epochs_planned"] == "4"


def test_markdown_table_right_aligns_numbers(logdir):
    _, out, _ = compare_output(logdir, "markdown")
    lines = out.splitlines()
    assert lines[0] == (
        "| run | dataset | layer | centroids | params | epochs | test_accuracy | images_per_s "
        "| status |"
    )
    assert lines[1] == "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"
    assert (
        lines[3] == "| b-conv | cifar10 | conv | - | 1,234,567 | 1/1 | 0.5000 | 5000 | completed |"
    )
    assert len(lines) == 7


@pytest.mark.parametrize(
    "config_text, metrics_text, status, warnings",
    [
        ("[1, 2]", '{"status": "completed", "epochs": "many"}', "damaged", 1),  # not an object
        ("\xff\xfe", None, "damaged", 1),  # not UTF-8
        ("{}", '{"status": 3, "epochs": [1, {"images_per_second": "fast"}]}', "3", 0),
        (None, '{"flags": {"layer": "local"}, "status": "running", "epochs": []}', "running", 0),
    ],
)
def test_odd_file_contents_never_crash(tmp_path, config_text, metrics_text, status, warnings):
    run = tmp_path / "tb" / "odd"
    run.mkdir(parents=True)
    if config_text is not None:
        (run / "config.json").write_bytes(config_text.encode("latin-1"))
    if metrics_text is not None:
        (run / "metrics.json").write_text(metrics_text)
    code, out, err = compare_output(tmp_path / "tb")
    assert code == 0
    assert out.splitlines()[1].split()[0] == "odd"
    assert out.splitlines()[1].split()[-1] == status
    assert len(err.splitlines()) == warnings


def test_infinite_numbers_pipes_and_links_never_crash_or_hang(tmp_path):
    logdir = tmp_path / "tb"
    run = logdir / "inf"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"n_epochs": 1e400, "layer": "sws"}')
    (run / "metrics.json").write_text('{"status": "running", "test_accuracy": -1e400}')
    pipe = logdir / "pipe"
    pipe.mkdir()
    os.mkfifo(pipe / "config.json")
    (pipe / "metrics.json").symlink_to("/dev/zero")
    code, out, err = compare_output(logdir)
    assert code == 0
    inf, piped = out.splitlines()[1:]
    assert inf.split()[0] == "inf" and inf.split()[-1] == "running" and "inf" not in inf[4:]
    assert piped.split()[0] == "pipe" and piped.endswith("not started")


def test_a_run_whose_process_was_killed_says_so(tmp_path):
    run = make_run(tmp_path / "tb", "k", {"status": "running", "epochs": []})
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (run / "lock").write_text(f"process {gone} on {os.uname().nodename}\n")
    _, out, _ = compare_output(tmp_path / "tb")
    assert out.splitlines()[1].split()[-1] == "killed"


def test_folder_names_that_are_not_utf8_print_under_a_strict_stdout(tmp_path):
    logdir = tmp_path / "tb"
    make_run(logdir, "run", {"status": "completed", "epochs": []})
    (logdir / "run").rename(logdir / os.fsdecode(b"run-\xff"))
    make_run(logdir, "caf\u00e9", {"status": "completed", "epochs": []})
    for encoding in ("utf-8:strict", "ascii:strict"):
        result = run_cli("--compare", str(logdir), env={**os.environ, "PYTHONIOENCODING": encoding,
                         "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
        assert names[1] == "run-\\xff"
        assert names[0] == ("caf\u00e9" if encoding.startswith("utf") else "caf\\xe9")


def test_missing_logdir_a_file_and_an_empty_logdir(tmp_path):
    status, out, err = compare_output(tmp_path / "nowhere")
    assert (status, out) == (1, "")
    assert err == f"swsl-train --compare: error: logdir {tmp_path / 'nowhere'} does not exist\n"
    (tmp_path / "file").write_text("x")
    status, _, err = compare_output(tmp_path / "file")
    assert status == 1 and err.endswith("is not a folder\n")
    (tmp_path / "empty").mkdir()
    status, out, err = compare_output(tmp_path / "empty")
    assert (status, out) == (0, "") and err.startswith("swsl-train --compare: no runs in ")


def run_cli(*args, flags=(), **kwargs):
    kwargs.setdefault("env", {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return subprocess.run(
        [sys.executable, *flags, "-m", "swsl_cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def test_cli_compare_uses_logdir_by_default_and_imports_no_tensorflow(logdir):
    # -X importtime lists every module the command imports, on stderr.
    result = run_cli(
        "--compare", "--logdir", str(logdir), "--format", "csv", "--group_by", "run",
        flags=["-X", "importtime"],
    )  # fmt: skip
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert result.returncode == 0 and "swsl_cli.runner.compare" in imported
    assert not imported & {"tensorflow", "keras", "ray", "matplotlib"}
    assert result.stdout.splitlines()[1].startswith("a-sws,mnist,sws,2x2,")
    named = run_cli("--compare", str(logdir))
    assert named.returncode == 0 and named.stdout.splitlines()[0].startswith("group ")
    missing = run_cli("--compare", str(logdir / "nowhere"))
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1
    assert "Traceback" not in missing.stderr


def test_cli_format_without_compare_is_a_usage_error(capsys):
    from swsl_cli.runner.cli import main

    assert main(["--format", "csv"]) == 2
    assert capsys.readouterr().err.startswith("swsl-train: error: --format applies to --compare")


def test_a_reader_that_left_and_a_closed_stdout_end_quietly(logdir):
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -2` having exited: every write fails with EPIPE
    left = subprocess.run(
        [sys.executable, "-m", "swsl_cli", "--compare", str(logdir)],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write_end)
    assert left.returncode == 0 and left.stderr.count("\n") == 1  # the damaged-file line
    closed = subprocess.run(
        ["bash", "-c", f'exec "$0" -m swsl_cli --compare {logdir} >&-', sys.executable],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert closed.returncode == 1
    assert closed.stderr.splitlines()[-1] == (
        "swsl-train --compare: error: standard output is closed; nowhere to print the table"
    )
    assert "Traceback" not in closed.stderr


@pytest.fixture
def seeds_logdir(tmp_path):
    """A sweep's runs: conv and sws over seeds, a longer conv, one sws run interrupted and one
    read from another data folder (a place, not a setting)."""
    logdir = tmp_path / "tb"
    figures = {
        "conv_s0": (0.990, 0.980, 1000.0),
        "conv_s1": (0.992, 0.985, 1100.0),
        "conv_s2": (0.991, 0.970, 1200.0),
        "sws_s0": (0.995, 0.990, 500.0),
        "sws_s2": (0.993, 0.988, 700.0),
    }
    for name, (test, first, speed) in figures.items():
        layer, seed = name.split("_s")
        make_run(
            logdir,
            name,
            {
                "status": "completed",
                "epochs": epochs(speed, speed, val_accuracy=first),
                "test_accuracy": test,
                "parameters": {"total": 100 if layer == "conv" else 300},
            },
            n_epochs=2,
            layer=layer,
            seed=int(seed),
            data_dir=f"/data/{name}",
        )
    make_run(
        logdir, "sws_s1", {"status": "interrupted", "epochs": epochs(600.0)}, n_epochs=2, seed=1
    )
    make_run(
        logdir,
        "conv-long_s0",
        {"status": "completed", "epochs": epochs(900.0, 900.0, 900.0), "test_accuracy": 0.9},
        n_epochs=3,
        layer="conv",
    )
    return logdir


def test_runs_that_differ_only_in_their_seed_form_a_group(seeds_logdir):
    status, out, err = compare_output_grouped(seeds_logdir, None, "csv")
    assert status == 0 and err == ""
    rows = {row["group"]: row for row in csv.DictReader(io.StringIO(out))}
    assert list(rows) == ["conv", "conv-long", "sws"]
    conv, sws = rows["conv"], rows["sws"]
    assert (conv["n"], conv["completed"], conv["layer"], conv["params"]) == (
        "3",
        "3",
        "conv",
        "100",
    )
    assert float(conv["test_accuracy_mean"]) == pytest.approx(0.991)
    assert float(conv["test_accuracy_sd"]) == pytest.approx(0.001)
    # Student's t with 2 degrees of freedom: 4.302653 x sd / sqrt(3).
    half = 4.302653 * 0.001 / 3**0.5
    assert float(conv["test_accuracy_ci95_low"]) == pytest.approx(0.991 - half, abs=1e-7)
    assert float(conv["test_accuracy_ci95_high"]) == pytest.approx(0.991 + half, abs=1e-7)
    assert float(conv["epoch1_accuracy_mean"]) == pytest.approx((0.98 + 0.985 + 0.97) / 3)
    assert float(conv["images_per_s_mean"]) == pytest.approx(1100.0)
    # The interrupted run counts for epoch 1 and speed, not for the test accuracy.
    assert (sws["n"], sws["completed"], sws["test_accuracy_n"]) == ("3", "2", "2")
    assert sws["epoch1_accuracy_n"] == "3" and sws["images_per_s_n"] == "3"
    assert rows["conv-long"]["test_accuracy_sd"] == "" and rows["conv-long"]["n"] == "1"


def compare_output_grouped(logdir, group_by, fmt="table", plot=None):
    out, err = io.StringIO(), io.StringIO()
    status = compare.main(str(logdir), fmt, stream=out, errors=err, group_by=group_by, plot=plot)
    return status, out.getvalue(), err.getvalue()


def test_grouped_table_and_markdown_show_mean_spread_and_interval(seeds_logdir):
    _, out, _ = compare_output_grouped(seeds_logdir, None)
    lines = out.splitlines()
    assert lines[0].split() == [
        "group", "n", "completed", "dataset", "layer", "params", "epochs",
        "test_accuracy", "sd", "ci95", "epoch1_accuracy", "sd", "ci95",
        "images_per_s", "sd", "ci95",
    ]  # fmt: skip
    assert lines[1].split() == [
        "conv", "3", "3", "mnist", "conv", "100", "2", "0.9910", "0.0010", "±0.0025",
        "0.9783", "0.0076", "±0.0190", "1100", "100", "±248",
    ]  # fmt: skip
    assert lines[2].split()[7:10] == ["0.9000", "-", "-"]  # one run: no spread
    _, markdown, _ = compare_output_grouped(seeds_logdir, None, "markdown")
    assert markdown.splitlines()[1].startswith("| --- | ---: | ---: | --- | --- | ---: |")
    assert markdown.splitlines()[2].startswith("| conv | 3 | 3 | mnist | conv | 100 | 2 |")


def test_group_by_chosen_settings_or_per_run(seeds_logdir, capsys):
    _, out, _ = compare_output_grouped(seeds_logdir, ("layer",), "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["group"], r["n"], r["epochs"]) for r in rows] == [
        ("layer=conv", "4", "*"),  # two budgets in one group: the column says it varies
        ("layer=sws", "3", "2"),
    ]
    _, out, _ = compare_output_grouped(seeds_logdir, compare.PER_RUN)
    assert [line.split()[0] for line in out.splitlines()] == [
        "run", "conv-long_s0", "conv_s0", "conv_s1", "conv_s2", "sws_s0", "sws_s1", "sws_s2",
    ]  # fmt: skip
    assert compare.grouping("layer, n_filters") == ("layer", "n_filters")
    from swsl_cli.runner.cli import main

    assert main(["--compare", str(seeds_logdir), "--group_by", "layer,heads"]) == 2
    assert capsys.readouterr().err.startswith(
        "swsl-train: error: --group_by: unknown setting 'heads'; give setting names"
    )
    assert main(["--group_by", "layer"]) == 2
    assert "--group_by applies to --compare only" in capsys.readouterr().err


def png_size(path):
    """Width and height from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_plot_draws_the_curves_and_the_parameters_of_each_group(seeds_logdir, tmp_path):
    status, _, err = compare_output_grouped(seeds_logdir, None, plot=str(tmp_path / "out.png"))
    assert status == 0
    curves, params = tmp_path / "out_epochs.png", tmp_path / "out_params.png"
    assert err == f"swsl-train --compare: plots: {curves}, {params}\n"
    for path in (curves, params):
        width, height = png_size(path)  # 10 x 5.5 inches at 120 dpi, and the legend beside
        assert 1000 <= width <= 1800 and 550 <= height <= 800
    status, _, err = compare_output_grouped(seeds_logdir, None, plot=str(tmp_path / "out.svg"))
    assert status == 1 and err.endswith(
        "--plot takes a .png file name, got '" + str(tmp_path / "out.svg") + "'\n"
    )


def test_groups_with_the_same_name_are_told_apart_by_their_settings(tmp_path):
    logdir = tmp_path / "tb"
    done = {"status": "completed", "epochs": epochs(100.0), "test_accuracy": 0.9}
    make_run(logdir, "x_s0", done, n_epochs=3, seed=0)
    make_run(logdir, "x_s1", done, n_epochs=3, seed=1)
    make_run(logdir, "y-x_s2", done, n_epochs=5, seed=2)  # another budget
    make_run(logdir, "x_s3", done, n_epochs=5, seed=3)
    labels = [g.label for g in compare.group_runs(compare.collect_figures(logdir, print))]
    assert labels == ["n_epochs=5", "x"]
    make_run(logdir, "x_s4", done, n_epochs=7, seed=4)
    labels = [g.label for g in compare.group_runs(compare.collect_figures(logdir, print))]
    assert labels == ["n_epochs=5", "x n_epochs=3", "x n_epochs=7"]
