"""Command line: the seed's flags, further options, and every refusal (before TensorFlow loads)."""

import argparse
import os
import re
import subprocess
import sys

import pytest

from swsl_cli.runner.augment import Augmentation
from swsl_cli.runner.cli import (
    UsageError,
    _DefaultsFormatter,
    add_setting,
    build_parser,
    main,
    parse_args,
    parse_command,
)
from swsl_cli.runner.config import Config, Declaration


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "swsl_cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_defaults_are_the_seeds():
    config = parse_args([])
    assert config == Config()
    assert config.centroid_grid == (2, 2) and config.n_filters == (24, 48)
    assert config.n_epochs == 10 and config.logdir == "tensorboard"
    assert config.color_coding is False and config.centroids_trainable is False
    assert config.n_centroids is None and config.log_verbosity == 0
    assert config.centroids == (2, 2)


def test_readme_command_parses():
    config = parse_args("--centroids_trainable --n_filters 24 48 --centroid_grid 3 3".split())
    assert config.centroids_trainable and config.n_filters == (24, 48)
    assert config.centroid_grid == (3, 3) and config.centroids == (3, 3)


def test_random_centroids_override_the_grid():
    config = parse_args(["--n_centroids", "5", "--centroid_grid", "3", "3"])
    assert config.centroids == 5


def test_given_flags_are_known_even_at_their_default_value():
    config, given = parse_command(["--centroid_grid", "2", "2", "--quiet", "--n_epochs", "10"])
    assert config == Config(quiet=True)
    assert given == {"centroid_grid", "quiet", "n_epochs"}
    assert parse_command([])[1] == frozenset()
    assert parse_command(["--no-color_coding"])[1] == {"color_coding"}


def test_help_shows_every_default_from_config():
    options = build_parser().format_help().split("options:", 1)[1].split("example:")[0]
    # Without the group headings, one entry per option: its lines up to the next option.
    options = re.sub(r"\n\n[^ \n][^\n]*:\n", "\n", options)
    entries = {
        entry.splitlines()[0].split("  ")[0].strip(): " ".join(entry.split())
        for entry in re.split(r"\n  (?=-)", options.strip())
    }
    for flag, default in (
        ("--n_epochs N_EPOCHS", "(default: 10)"),
        ("--centroid_grid CENTROID_GRID CENTROID_GRID", "(default: 2 2)"),
        ("--n_filters N_FILTERS N_FILTERS", "(default: 24 48)"),
        ("--learning_rate LEARNING_RATE", "(default: 0.003)"),
        ("--lr_schedule {cosine,exponential}", "(default: cosine)"),
        ("--warmup_epochs WARMUP_EPOCHS", "(default: 0.2)"),
        ("--ema MOMENTUM", "(default: 0.99)"),
        ("--lr_decay LR_DECAY", "(default: 0.75)"),
        ("--layer {sws,conv,local,lrlc,coordconv}", "(default: sws)"),
        ("--head {dense,gap}", "(default: dense)"),
        ("--scaling SCALING", "(default: 1.0)"),
        ("--rank K", "(default: 4)"),
        ("--combining {row_col,free}", "(default: row_col)"),
        ("--label_key KEY", "(default: label)"),
        ("--kcp_init {independent,shared}", "(default: shared)"),
        ("--jit_compile {off,on}", "(default: off)"),
        ("--color_coding, --no-color_coding", "(default: False)"),
    ):
        assert entries[flag].endswith(default), entries[flag]
    text = " ".join(build_parser().format_help().split())
    assert "(default: None)" not in text and "SUPPRESS" not in text


def test_the_comparison_flags():
    config = parse_args(
        "--layer lrlc --rank 6 --combining free --head gap --dataset celeb_a "
        "--label_key attributes/Male --image_size 32 --center_crop 0.775".split()
    )
    assert (config.layer, config.rank, config.combining, config.head) == ("lrlc", 6, "free", "gap")
    assert (config.label_key, config.image_size, config.center_crop) == (
        "attributes/Male",
        32,
        0.775,
    )
    assert parse_args(["--scaling", "2.5"]).scaling == 2.5


def test_color_coding_can_be_turned_on_and_off():
    assert parse_args(["--color_coding"]).color_coding is True
    assert parse_args(["--color_coding", "--no-color_coding"]).color_coding is False


def test_further_options():
    config = parse_args(
        "--data_dir d --batch_size 32 --learning_rate 0.01 --seed 3 --run_name r --layer conv "
        "--max_train_examples 100 --max_test_examples 50 --quiet --resume --distribute mirrored "
        "--log_verbosity 3 --lr_decay 1 --precision float32 --jit_compile on --max_shift 0 "
        "--lr_schedule exponential --ema 0 --max_rotation 0 --max_zoom 0".split()
    )
    assert (config.data_dir, config.batch_size, config.learning_rate, config.seed) == (
        "d",
        32,
        0.01,
        3,
    )
    assert (config.run_name, config.layer, config.quiet, config.resume) == ("r", "conv", True, True)
    assert (config.max_train_examples, config.max_test_examples) == (100, 50)
    assert (config.distribute, config.log_verbosity, config.lr_decay) == ("mirrored", 3, 1.0)
    assert (config.max_shift, config.lr_schedule, config.ema) == (0, "exponential", 0.0)


def test_the_original_training_is_three_flags_and_the_schedule():
    config = parse_args(
        "--lr_schedule exponential --learning_rate 0.01 --lr_decay 1 --max_shift 0 --ema 0 "
        "--max_rotation 0 --max_zoom 0 --kcp_init independent".split()
    )
    assert (config.lr_schedule, config.learning_rate, config.lr_decay) == ("exponential", 0.01, 1)
    assert config.kcp_init == "independent"
    assert (config.max_shift, config.ema, config.max_rotation, config.max_zoom) == (0, 0, 0, 0)
    assert not Augmentation.from_config(config)


REFUSALS = [
    (["--centroid_grid", "3"], "expected 2 arguments"),
    (["--centroid_grid", "3", "0"], "argument --centroid_grid: must be >= 1 and <= 32, got '0'"),
    (["--centroid_grid", "3", "-2"], "argument --centroid_grid: must be >= 1"),
    (["--centroid_grid", "a", "b"], "argument --centroid_grid: must be an integer, got 'a'"),
    (["--n_centroids", "0"], "argument --n_centroids: must be >= 1"),
    (["--n_centroids", "2.5"], "argument --n_centroids: must be an integer"),
    (["--n_filters", "24"], "expected 2 arguments"),
    (["--n_filters", "24", "0"], "argument --n_filters: must be >= 1"),
    (["--n_epochs", "0"], "argument --n_epochs: must be >= 1"),
    (["--n_epochs", "ten"], "argument --n_epochs: must be an integer"),
    (["--log_verbosity", "4"], "argument --log_verbosity: must be >= 0 and <= 3"),
    (["--log_verbosity", "-1"], "argument --log_verbosity: must be >= 0 and <= 3"),
    (["--batch_size", "0"], "argument --batch_size: must be >= 1"),
    (["--learning_rate", "0"], "argument --learning_rate: must be > 0"),
    (["--learning_rate", "-0.1"], "argument --learning_rate: must be > 0"),
    (["--learning_rate", "nan"], "argument --learning_rate: must be finite"),
    (["--learning_rate", "fast"], "argument --learning_rate: must be a number"),
    (["--lr_decay", "1.5"], "argument --lr_decay: must be > 0 and <= 1"),
    (["--seed", "-1"], "argument --seed: must be >= 0"),
    (["--max_shift", "15"], "argument --max_shift: must be >= 0 and <= 14"),
    (["--max_train_examples", "0"], "argument --max_train_examples: must be >= 1"),
    (["--max_test_examples", "-5"], "argument --max_test_examples: must be >= 1"),
    (["--run_name", "a/b"], "argument --run_name: must be a plain folder name"),
    (["--run_name", ".."], "argument --run_name: must be a plain folder name"),
    (["--layer", "dense"], "invalid choice: 'dense'"),
    (["--distribute", "tpu"], "invalid choice: 'tpu'"),
    (["--logdir", ""], "argument --logdir: must not be empty"),
    (["--data_dir", " "], "argument --data_dir: must not be empty"),
    (["--dataset", ""], "argument --dataset: must not be empty"),
    (["--val_split", ""], "argument --val_split: must not be empty"),
    (["--n_filters", "24", "100000"], "argument --n_filters: must be >= 1 and <= 1024"),
    (["--n_centroids", "5000"], "argument --n_centroids: must be >= 1 and <= 1024"),
    (["--centroid_grid", "40", "2"], "argument --centroid_grid: must be >= 1 and <= 32"),
    (["--jit_compile", "auto"], "invalid choice: 'auto'"),
    (["--max_rotation", "181"], "argument --max_rotation: must be >= 0 and <= 180"),
    (["--max_zoom", "0.6"], "argument --max_zoom: must be >= 0 and <= 0.5"),
    (["--kcp_init", "zeros"], "invalid choice: 'zeros'"),
    (["--lr_schedule", "step"], "invalid choice: 'step'"),
    (["--lr_decay", "0.5"], "--lr_decay applies to --lr_schedule exponential, not cosine"),
    (
        ["--lr_schedule", "exponential", "--warmup_epochs", "1"],
        "--warmup_epochs applies to --lr_schedule cosine, not exponential",
    ),
    (["--warmup_epochs", "-1"], "argument --warmup_epochs: must be >= 0"),
    (["--warmup_epochs", "4", "--n_epochs", "3"], "--warmup_epochs 4 leaves no steps to decay"),
    (["--warmup_epochs", "10"], "must be shorter than the run"),
    (["--ema", "1"], "argument --ema: must be >= 0 and <= 0.9999, got '1'"),
    (["--ema", "0.99999999"], "argument --ema: must be >= 0 and <= 0.9999"),
    (["--ema", "-0.1"], "argument --ema: must be >= 0"),
    (["--unknown_flag"], "unrecognized arguments: --unknown_flag"),
    (["--head", "flatten"], "invalid choice: 'flatten'"),
    (["--layer", "lrlc", "--rank", "0"], "argument --rank: must be >= 1 and <= 1024, got '0'"),
    (["--scaling", "0"], "argument --scaling: must be > 0 and <= 10, got '0'"),
    (["--combining", "rows"], "invalid choice: 'rows'"),
    (["--rank", "4"], "--rank applies to --layer lrlc, not sws"),
    (["--layer", "conv", "--combining", "free"], "--combining applies to --layer lrlc, not conv"),
    (["--layer", "lrlc", "--scaling", "2"], "--scaling applies to --layer sws, not lrlc"),
    (["--image_size", "3"], "argument --image_size: must be >= 4 and <= 1024, got '3'"),
    (["--center_crop", "0"], "argument --center_crop: must be > 0 and <= 1, got '0'"),
    (["--n_epochs", "100000000000000000000"], "argument --n_epochs: must be >= 1 and <= 100000"),
    (["--run_name=-x"], "argument --run_name: must be a plain folder name"),
    (["--run_name", "a\nb"], "argument --run_name: must be printable UTF-8 text"),
    # A command line's bytes that are not UTF-8 arrive as surrogates.
    (["--logdir", "runs-\udcff"], "argument --logdir: must be printable UTF-8 text"),
    (["--data_dir", "\udcffdata"], "argument --data_dir: must be printable UTF-8 text"),
]


@pytest.mark.parametrize("argv, message", REFUSALS)
def test_refusals(argv, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_args(argv)


def test_color_coding_with_many_centroids_is_accepted():
    assert parse_args(["--color_coding", "--centroid_grid", "4", "4"]).centroids == (4, 4)


def test_main_reports_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--n_epochs", "0", "--logdir", str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("swsl-train: error: argument --n_epochs: must be >= 1")
    assert not (tmp_path / "tb").exists()


def test_multi_worker_without_tf_config_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UsageError, match="TF_CONFIG"):
        parse_args(["--distribute", "multi_worker"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--n_filters", "1"],
        ["--version"],
        ["--data_dir", "/nonexistent/mnist.npz"],
        ["--resume", "--logdir", "/nonexistent/runs"],
        ["--logdir", "/dev/null/runs"],
    ],
)
def test_help_and_refusals_never_import_tensorflow(argv):
    # -X importtime lists every module the command imports, on stderr.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "swsl_cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "swsl_cli.runner.cli" in imported
    assert not imported & {
        "tensorflow",
        "keras",
        "tensorflow_datasets",
        "ray",
        "yaml",
        "matplotlib",
    }
    assert result.returncode in (0, 1, 2)
    assert result.returncode == 0 or "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "imports",
    [
        "import swsl_cli.layers, keras",
        "from swsl_cli import LocallyConnected2D; import keras",
        "import keras, swsl_cli",
    ],
)
def test_importing_the_layers_registers_them(imports):
    script = (
        f"{imports}\n"
        "print(sorted(k for k in keras.saving.get_custom_objects() if k.startswith('swsl_cli')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert "'swsl_cli>SoftWeightSharingConv2D'" in result.stdout, result.stderr[-2000:]
    assert "'swsl_cli>LocalResponseNormalization'" in result.stdout
    assert "'swsl_cli>FusedAdam'" in result.stdout


def test_the_layer_library_loads_without_tensorflow_on_another_backend():
    script = (
        "import sys; import swsl_cli.layers as layers; import swsl_cli\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "print(tuple(layers.SoftWeightSharingConv2D(4, 3)(__import__('numpy').ones((1, 8, 8, 1))).shape))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "KERAS_BACKEND": "torch"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 8, 8, 4)" in result.stdout


def test_module_entry_point_exit_status_and_no_traceback(tmp_path):
    result = run_cli("--centroid_grid", "2", "x", "--logdir", str(tmp_path / "tb"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "swsl-train: error: argument --centroid_grid: must be an integer, got 'x' (see swsl-train --help)"
    ]
    assert not (tmp_path / "tb").exists()
    help_text = run_cli("-h")
    assert help_text.returncode == 0 and "\ntraining:\n" in help_text.stdout


def test_compare_refuses_training_flags(tmp_path, capsys):
    assert main(["--compare", str(tmp_path), "--n_epochs", "3"]) == 2
    assert (
        "--compare takes only --logdir, --format, --group_by and --plot, not --n_epochs"
        in capsys.readouterr().err
    )
    with pytest.raises(UsageError, match="train nothing"):
        parse_command(["--format", "csv"])


def test_a_declared_help_text_is_plain_text():
    parser = argparse.ArgumentParser(formatter_class=_DefaultsFormatter)
    add_setting(parser, "keep", Declaration(help="keeps 80 % of the units", group="", kind=float))
    assert "keeps 80 % of the units" in " ".join(parser.format_help().split())
