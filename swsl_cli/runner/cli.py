"""`swsl-train`: argparse and validation into a frozen `Config`.

Nothing here imports TensorFlow: `--help` and every refusal answer at once,
and a bad value creates nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from swsl_cli import __version__
from swsl_cli.runner import distribute
from swsl_cli.runner.compare import FORMATS
from swsl_cli.runner.config import (
    DISTRIBUTE,
    JIT,
    KCP_INITS,
    LAYERS,
    LR_SCHEDULES,
    PRECISIONS,
    PROG,
    Config,
)
from swsl_cli.runner.interrupts import Interrupted, handled_by, raise_interrupted

DEFAULTS = Config()
# Beyond these the network no longer fits a machine's memory (layer 2 alone has
# 9 * filters^2 * centroids weights); the limits turn an out-of-memory kill
# minutes into a run into a refusal at once.
MAX_FILTERS = 1024
MAX_CENTROIDS = 1024


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends each flag's default, read from `Config`, to its help text.

    The parser itself has no defaults (`argparse.SUPPRESS`), so that a parsed
    namespace holds exactly the flags that were given.
    """

    def _get_help_string(self, action):
        default = getattr(DEFAULTS, action.dest, None)
        takes_value = action.nargs != 0 or isinstance(action, argparse.BooleanOptionalAction)
        if default is None or not takes_value:
            return action.help
        if isinstance(default, tuple):
            default = " ".join(map(str, default))
        return f"{action.help} (default: {default})"


def _number(kind, minimum=None, maximum=None, exclusive_min=False):
    """An argparse type: parse with `kind`, then check the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        too_small = minimum is not None and (value <= minimum if exclusive_min else value < minimum)
        if too_small or (maximum is not None and value > maximum):
            low = "" if minimum is None else f"{'>' if exclusive_min else '>='} {minimum}"
            high = "" if maximum is None else f"<= {maximum}"
            raise argparse.ArgumentTypeError(
                f"must be {' and '.join(p for p in (low, high) if p)}, got {text!r}"
            )
        return value

    return parse


def _run_name(text: str) -> str:
    if not text or text in (".", "..") or "/" in text or "\\" in text or text.startswith("."):
        raise argparse.ArgumentTypeError(
            f"must be a plain folder name (no '/', not starting with '.'), got {text!r}"
        )
    return text


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Demonstration of the soft spatial weight sharing layer: trains the "
        "two-layer soft weight sharing convnet on MNIST and logs to TensorBoard.",
        epilog="Example: swsl-train --centroids_trainable --n_filters 24 48 --centroid_grid 3 3",
        argument_default=argparse.SUPPRESS,
        formatter_class=_DefaultsFormatter,
    )
    # The original interface, in the original order, names and defaults.
    parser.add_argument(
        "--color_coding",
        action=argparse.BooleanOptionalAction,
        help="Whether to use color coding in TensorBoard (each kernel tile tinted by its "
        "nearest centroid). The original flag could never be turned off",
    )
    parser.add_argument(
        "--centroid_grid",
        nargs=2,
        type=_number(int, minimum=1, maximum=32),
        metavar="CENTROID_GRID",
        help="Grid in which the centroids are arranged at (rows cols)",
    )
    parser.add_argument(
        "--n_centroids",
        type=_number(int, minimum=1, maximum=MAX_CENTROIDS),
        help="If n_centroids is given, the centroids are initialized randomly "
        "(overrides --centroid_grid)",
    )
    parser.add_argument(
        "--logdir",
        type=_non_empty,
        help="Specify dir for TensorFlow logs, one folder per run inside it",
    )
    parser.add_argument(
        "--centroids_trainable",
        action="store_true",
        help="If given, the centroid positions will be trainable",
    )
    parser.add_argument(
        "--log_verbosity",
        type=_number(int, minimum=0, maximum=3),
        help="TensorBoard log verbosity: 0 losses, accuracies and kernel images; "
        "1 adds gradients; 2 adds weight histograms; 3 adds activations",
    )
    parser.add_argument(
        "--n_filters",
        nargs=2,
        type=_number(int, minimum=1, maximum=MAX_FILTERS),
        metavar="N_FILTERS",
        help="Number of filters in the conv layers",
    )
    parser.add_argument(
        "--n_epochs", type=_number(int, minimum=1), help="Number of training epochs"
    )

    more = parser.add_argument_group("further options")
    more.add_argument(
        "--dataset",
        type=_non_empty,
        help="A tensorflow-datasets image classification set with 'image' and 'label' "
        "features and fixed-size images (mnist, fashion_mnist, kmnist, emnist/letters, "
        "cifar10, cifar100, svhn_cropped, ...), or spatial_mnist: MNIST with a fixed "
        "rotation and inversion per quadrant",
    )
    more.add_argument(
        "--val_split",
        type=_non_empty,
        help="Evaluate each epoch on this split (TFDS: e.g. validation; npz: the arrays "
        "x_NAME, y_NAME) instead of the test split",
    )
    more.add_argument(
        "--data_dir",
        type=_non_empty,
        help="Data source: an npz with x_train, y_train, x_test, y_test (uint8 images "
        "(N, H, W) or (N, H, W, C), integer labels), a folder with the four MNIST IDX files "
        "(.gz or not) or DATASET.npz, or a TFDS data dir. Default: TFDS's own data dir when "
        "the set is prepared there or the network answers; for mnist, else the copy shipped "
        "with swsl-cli",
    )
    more.add_argument(
        "--batch_size",
        type=_number(int, minimum=1, maximum=65536),
        help="Images per training step, per replica",
    )
    more.add_argument(
        "--lr_schedule",
        choices=LR_SCHEDULES,
        help="cosine: linear warm-up over --warmup_epochs to --learning_rate, then a cosine "
        "decay to 0 at the last step of --n_epochs; exponential: --learning_rate times "
        "--lr_decay per epoch (the original: --lr_decay 1)",
    )
    more.add_argument(
        "--learning_rate",
        type=_number(float, minimum=0, exclusive_min=True),
        help="Adam's peak (cosine) or initial (exponential) learning rate (the original "
        "used 0.01, constant)",
    )
    more.add_argument(
        "--warmup_epochs",
        type=_number(float, minimum=0),
        help="--lr_schedule cosine: epochs of linear warm-up from 0 (fractions allowed)",
    )
    more.add_argument(
        "--lr_decay",
        type=_number(float, minimum=0, maximum=1, exclusive_min=True),
        help="--lr_schedule exponential: learning rate factor per epoch (1 keeps it "
        "constant, as the original)",
    )
    more.add_argument(
        "--ema",
        # Beyond 0.9999 (an average over 10,000 steps) float32 rounds the momentum to 1.
        type=_number(float, minimum=0, maximum=0.9999),
        metavar="MOMENTUM",
        help="Evaluate and save an exponential moving average of the weights, updated every "
        "step with this momentum (Keras's use_ema); 0 turns it off, as the original",
    )
    more.add_argument(
        "--max_shift",
        type=_number(int, minimum=0, maximum=14),
        help="Training augmentation: random shifts of up to this many pixels per axis "
        "(0 turns it off, as the original)",
    )
    more.add_argument(
        "--max_rotation",
        type=_number(float, minimum=0, maximum=180),
        metavar="DEGREES",
        help="Training augmentation: random rotations of up to this many degrees either way "
        "(0 turns it off, as the original)",
    )
    more.add_argument(
        "--max_zoom",
        type=_number(float, minimum=0, maximum=0.5),
        metavar="FRACTION",
        help="Training augmentation: random zooms in or out by up to this fraction of the "
        "image (0 turns it off, as the original)",
    )
    more.add_argument(
        "--seed",
        type=_number(int, minimum=0, maximum=2**31 - 1),
        help="Random seed; makes runs repeatable (deterministic ops). Default: a fresh seed, "
        "recorded in config.json, without op determinism",
    )
    more.add_argument(
        "--run_name",
        type=_run_name,
        help="Folder of this run under --logdir (default: from the flags and the time)",
    )
    more.add_argument(
        "--layer",
        choices=LAYERS,
        help="sws: soft weight sharing layers; conv: plain Conv2D (hard sharing); "
        "local: LocallyConnected2D (no sharing); the rest of the network is the same",
    )
    more.add_argument(
        "--kcp_init",
        choices=KCP_INITS,
        help="SWS kernels at step 0: shared (every KCP the same kernel, so the layer starts as "
        "a plain convolution and learns where to specialise) or independent (each KCP its own "
        "random kernel, as the original)",
    )
    more.add_argument(
        "--max_train_examples",
        type=_number(int, minimum=1),
        help="Train on the first N training images only (smoke runs)",
    )
    more.add_argument(
        "--max_test_examples",
        type=_number(int, minimum=1),
        help="Evaluate on the first N test images only (smoke runs)",
    )
    more.add_argument(
        "--resume",
        action="store_true",
        help="Continue --run_name (default: the newest run in --logdir) where it stopped, "
        "with its saved settings; only --n_epochs (to extend it), --data_dir (the same data "
        "elsewhere) and --quiet may be given with it",
    )
    more.add_argument(
        "--distribute",
        choices=DISTRIBUTE,
        help="none; mirrored: all local GPUs (tf.distribute.MirroredStrategy); multi_worker: "
        "MultiWorkerMirroredStrategy from TF_CONFIG",
    )
    more.add_argument(
        "--peer_timeout",
        type=_number(float, minimum=0, exclusive_min=True),
        metavar="SECONDS",
        help="--distribute multi_worker: how long a worker waits for all the others of "
        "TF_CONFIG to come up before it gives up",
    )
    more.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="Keras dtype policy; auto: mixed_float16 on GPU, float32 on CPU",
    )
    more.add_argument(
        "--jit_compile",
        choices=JIT,
        help="XLA compilation of the train step (measured slower on CPU)",
    )
    more.add_argument(
        "--quiet", action="store_true", help="No progress bars: one plain line per epoch"
    )
    more.add_argument(
        "--compare",
        nargs="?",
        const="",
        metavar="LOGDIR",
        help="Train nothing: print a table of the runs under LOGDIR (default: --logdir) "
        "from their config.json and metrics.json",
    )
    more.add_argument(
        "--format",
        choices=FORMATS,
        help=f"Output of --compare: an aligned table, csv or markdown (default: {FORMATS[0]})",
    )
    more.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


# Flags of `--compare`, which trains nothing: they are not part of a run's config.
COMPARE_FLAGS = ("compare", "format", "logdir")


def given_flags(argv: Sequence[str] | None = None) -> dict:
    """The flags given on a command line, by name, with their parsed values."""
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in vars(build_parser().parse_args(argv)).items()
    }


def parse_command(argv: Sequence[str] | None = None) -> tuple[Config, frozenset[str]]:
    """Parses and validates a command line into a config and the names of the flags given.

    Raises `UsageError` on anything wrong.
    """
    return training_command(given_flags(argv))


def training_command(given: dict) -> tuple[Config, frozenset[str]]:
    """The validated config of the flags `given`, and their names."""
    if "format" in given or "compare" in given:
        raise UsageError("--format and --compare train nothing; give them without training flags")
    config = Config(**given)
    # With --resume the schedule comes from the saved run, which `runs.resume` compares.
    for name, schedule in (("lr_decay", "exponential"), ("warmup_epochs", "cosine")):
        if name in given and config.lr_schedule != schedule and not config.resume:
            raise UsageError(
                f"--{name} applies to --lr_schedule {schedule}, not {config.lr_schedule}"
            )
    if config.warmup_epochs >= config.n_epochs and not config.resume:
        raise UsageError(
            f"--warmup_epochs {config.warmup_epochs:g} leaves no steps to decay over: it "
            f"must be shorter than the run (--n_epochs {config.n_epochs})"
        )
    if config.distribute == "multi_worker":
        try:
            distribute.check_command(os.environ.get("TF_CONFIG"), config.seed, config.resume)
        except distribute.ClusterError as error:
            raise UsageError(str(error)) from None
    return config, frozenset(given)


def compare_command(given: dict) -> int:
    """`--compare [LOGDIR]`: the runs table; refuses training flags beside it."""
    others = sorted(set(given) - set(COMPARE_FLAGS))
    if others:
        raise UsageError(f"--compare takes only --logdir and --format, not --{others[0]}")
    if "compare" not in given:
        raise UsageError("--format applies to --compare only")
    from swsl_cli.runner.compare import main as compare_main

    logdir = given["compare"] or given.get("logdir", DEFAULTS.logdir)
    return compare_main(logdir, given.get("format", FORMATS[0]))


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """The config of a command line; raises `UsageError` on anything wrong."""
    return parse_command(argv)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: returns the exit status."""
    try:
        given = given_flags(argv)
        if "compare" in given or "format" in given:
            return compare_command(given)
        config, given_names = training_command(given)
    except UsageError as error:
        print(f"{PROG}: error: {error} (see {PROG} --help)", file=sys.stderr)
        return 2
    if config.distribute == "multi_worker":
        # When a peer fails, TensorFlow's C++ runtime logs several error lines that the
        # one-line message repeats; it must hear this before TensorFlow loads.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Until training installs its own handlers, a signal ends the start-up in one line.
    with handled_by(raise_interrupted):
        try:
            from swsl_cli.runner.train import main as train_main

            return train_main(config, given_names)
        except Interrupted as interrupt:
            print(f"{PROG}: interrupted by {interrupt.signal_name} while starting", file=sys.stderr)
            return interrupt.exit_code


if __name__ == "__main__":
    sys.exit(main())
