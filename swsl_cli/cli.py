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
from swsl_cli.config import DISTRIBUTE, JIT, LAYERS, MAX_COLORS, PRECISIONS, PROG, Config

DEFAULTS = Config()


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Demonstration of the soft spatial weight sharing layer: trains the "
        "two-layer soft weight sharing convnet on MNIST and logs to TensorBoard.",
        epilog="Example: swsl-train --centroids_trainable --n_filters 24 48 --centroid_grid 3 3",
    )
    # The original interface, in the original order, names and defaults.
    parser.add_argument(
        "--color_coding",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.color_coding,
        help="Whether to use color coding in TensorBoard (each kernel tile tinted by its "
        f"nearest centroid; at most {MAX_COLORS} centroids). Off by default; the original "
        "flag could never be turned off",
    )
    parser.add_argument(
        "--centroid_grid",
        nargs=2,
        type=_number(int, minimum=1),
        default=DEFAULTS.centroid_grid,
        metavar="CENTROID_GRID",
        help="Grid in which the centroids are arranged at (rows cols; default: 2 2)",
    )
    parser.add_argument(
        "--n_centroids",
        type=_number(int, minimum=1),
        default=DEFAULTS.n_centroids,
        help="If n_centroids is given, the centroids are initialized randomly "
        "(overrides --centroid_grid)",
    )
    parser.add_argument(
        "--logdir",
        default=DEFAULTS.logdir,
        help="Specify dir for TensorFlow logs, defaults to ./tensorboard",
    )
    parser.add_argument(
        "--centroids_trainable",
        action="store_true",
        help="If given, the centroid positions will be trainable",
    )
    parser.add_argument(
        "--log_verbosity",
        type=_number(int, minimum=0, maximum=3),
        default=DEFAULTS.log_verbosity,
        help="TensorBoard log verbosity: 0 losses, accuracies and kernel images; "
        "1 adds gradients; 2 adds weight histograms; 3 adds activations (default: 0)",
    )
    parser.add_argument(
        "--n_filters",
        nargs=2,
        type=_number(int, minimum=1),
        default=DEFAULTS.n_filters,
        metavar="N_FILTERS",
        help="Number of filters in the conv layers (default: 24 48)",
    )
    parser.add_argument(
        "--n_epochs",
        type=_number(int, minimum=1),
        default=DEFAULTS.n_epochs,
        help="Number of training epochs (default: 10)",
    )

    more = parser.add_argument_group("further options")
    more.add_argument(
        "--dataset",
        default=DEFAULTS.dataset,
        help="A tensorflow-datasets image classification set with 'image' and 'label' "
        "features and fixed-size images (mnist, fashion_mnist, kmnist, emnist/letters, "
        "cifar10, cifar100, svhn_cropped, ...), or spatial_mnist: MNIST with a fixed "
        "rotation and inversion per quadrant (default: %(default)s)",
    )
    more.add_argument(
        "--val_split",
        help="Evaluate each epoch on this split (TFDS: e.g. validation; npz: the arrays "
        "x_NAME, y_NAME) instead of the test split (default: the test split)",
    )
    more.add_argument(
        "--data_dir",
        help="Data source: an npz with x_train, y_train, x_test, y_test (uint8 images "
        "(N, H, W) or (N, H, W, C), integer labels), a folder with the four MNIST IDX files "
        "(.gz or not) or DATASET.npz, or a TFDS data dir (default: TFDS's own data dir; "
        "for mnist offline, the copy bundled with this package)",
    )
    more.add_argument(
        "--batch_size",
        type=_number(int, minimum=1),
        default=DEFAULTS.batch_size,
        help="Images per training step, per replica (default: 64)",
    )
    more.add_argument(
        "--learning_rate",
        type=_number(float, minimum=0, exclusive_min=True),
        default=DEFAULTS.learning_rate,
        help="Adam's initial learning rate (default: 0.001; the original used 0.01)",
    )
    more.add_argument(
        "--lr_decay",
        type=_number(float, minimum=0, maximum=1, exclusive_min=True),
        default=DEFAULTS.lr_decay,
        help="Learning rate factor per epoch (default: 0.75; 1 keeps it constant, as the original)",
    )
    more.add_argument(
        "--max_shift",
        type=_number(int, minimum=0, maximum=14),
        default=DEFAULTS.max_shift,
        help="Training augmentation: random shifts of up to this many pixels per axis "
        "(default: 2; 0 turns it off, as the original)",
    )
    more.add_argument(
        "--seed",
        type=_number(int, minimum=0, maximum=2**31 - 1),
        default=DEFAULTS.seed,
        help="Random seed; makes runs repeatable (deterministic ops). Default: a fresh seed, "
        "recorded in metrics.json, without op determinism",
    )
    more.add_argument(
        "--run_name",
        type=_run_name,
        help="Folder of this run under --logdir (default: from the flags and the time)",
    )
    more.add_argument(
        "--layer",
        choices=LAYERS,
        default=DEFAULTS.layer,
        help="sws: soft weight sharing layers; conv: the same net with plain Conv2D, "
        "the hard-sharing baseline (default: sws)",
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
        help="Continue --run_name (default: the newest run in --logdir) from its last "
        "complete epoch",
    )
    more.add_argument(
        "--distribute",
        choices=DISTRIBUTE,
        default=DEFAULTS.distribute,
        help="none; mirrored: all local GPUs (tf.distribute.MirroredStrategy); multi_worker: "
        "MultiWorkerMirroredStrategy from TF_CONFIG (default: none)",
    )
    more.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help="Keras dtype policy; auto: mixed_float16 on GPU, float32 on CPU (default: auto)",
    )
    more.add_argument(
        "--jit_compile",
        choices=JIT,
        default=DEFAULTS.jit_compile,
        help="XLA compilation of the train step; auto: off (slower on CPU, and the shift "
        "augmentation has no XLA kernel; use with --max_shift 0) (default: auto)",
    )
    more.add_argument(
        "--quiet", action="store_true", help="No progress bars: one plain line per epoch"
    )
    more.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Parses and validates a command line; raises `UsageError` on anything wrong."""
    args = build_parser().parse_args(argv)
    config = Config(
        color_coding=args.color_coding,
        centroid_grid=tuple(args.centroid_grid),
        n_centroids=args.n_centroids,
        logdir=args.logdir,
        centroids_trainable=args.centroids_trainable,
        log_verbosity=args.log_verbosity,
        n_filters=tuple(args.n_filters),
        n_epochs=args.n_epochs,
        data_dir=args.data_dir,
        dataset=args.dataset,
        val_split=args.val_split,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_decay=args.lr_decay,
        max_shift=args.max_shift,
        seed=args.seed,
        run_name=args.run_name,
        layer=args.layer,
        max_train_examples=args.max_train_examples,
        max_test_examples=args.max_test_examples,
        quiet=args.quiet,
        resume=args.resume,
        distribute=args.distribute,
        precision=args.precision,
        jit_compile=args.jit_compile,
    )
    if config.color_coding and config.layer == "sws" and config.kcp_count > MAX_COLORS:
        raise UsageError(
            f"--color_coding supports at most {MAX_COLORS} centroids, got {config.kcp_count}; "
            "use fewer centroids or --no-color_coding"
        )
    if not config.logdir:
        raise UsageError("--logdir must not be empty")
    if config.distribute == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise UsageError(
            "--distribute multi_worker needs the TF_CONFIG environment variable "
            "(cluster and task of this worker); see the README"
        )
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: returns the exit status."""
    try:
        config = parse_args(argv)
    except UsageError as error:
        print(f"{PROG}: error: {error} (see {PROG} --help)", file=sys.stderr)
        return 2
    from swsl_cli.train import main as train_main

    return train_main(config)


if __name__ == "__main__":
    sys.exit(main())
