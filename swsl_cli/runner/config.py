"""The run configuration: every setting declared once.

Each setting of a run is a field of `Config`, declared with `setting()`: its
default, type, range or choices, help text, group, role and the value runs
saved before it existed trained with. Everything else is derived from those
declarations: the command-line parser (`swsl_cli.runner.cli`), the values of
old runs (`LEGACY_SETTINGS`), what `--resume` may change
(`RESUME_OVERRIDES`), which settings are HParams and which tell runs apart
(`HPARAMS`, `KEY_HPARAMS`), and `Config`'s own validation.

Imports nothing heavy, so `swsl-train --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass

PROG = "swsl-train"
LAYERS = ("sws", "conv", "local", "lrlc", "coordconv")
HEADS = ("dense", "gap")
COMBININGS = ("row_col", "free")
KCP_INITS = ("independent", "shared")
DISTRIBUTE = ("none", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT = ("off", "on")
LR_SCHEDULES = ("cosine", "exponential")
# Beyond these the network no longer fits a machine's memory (layer 2 alone has
# 9 * filters^2 * centroids weights); the limits turn an out-of-memory kill
# minutes into a run into a refusal at once.
MAX_FILTERS = 1024
MAX_CENTROIDS = 1024
MAX_RANK = 1024
# Sharper than this, the SWS similarity of any cell but the nearest centroid's underflows.
MAX_SCALING = 10.0
MAX_IMAGE_SIZE = 1024
MAX_EPOCHS = 100_000

ORIGINAL = "the original's flags"
DATA = "data"
NETWORK = "network"
TRAINING = "training"
RUN = "run and output"
SCALE = "devices and several machines"
GROUPS = (ORIGINAL, DATA, NETWORK, TRAINING, RUN, SCALE)

_UNSET = object()


class Role(enum.Enum):
    """What a setting is to a run."""

    # What the run is: an HParam, recorded, and `--resume` refuses another value.
    EXPERIMENT = "experiment"
    # Part of what the run is, but `--resume` may change it (a larger --n_epochs extends it).
    BUDGET = "budget"
    # Where the run and its data are, how it prints, how long it waits: not an HParam,
    # and `--resume` may be given another value.
    PLACE = "place"


@dataclass(frozen=True)
class Declaration:
    """Everything about one setting besides its default (the dataclass field holds that)."""

    help: str
    group: str
    role: Role = Role.EXPERIMENT
    kind: type = str  # int, float, str or bool
    pair: bool = False  # two values, e.g. `--n_filters 24 48`
    optional: bool = False  # None is a value: "not given"
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False  # the minimum itself is excluded
    metavar: str | None = None
    negatable: bool = False  # `--flag` / `--no-flag`
    folder_name: bool = False  # a plain folder name (no '/', not starting with '.')
    legacy: object = _UNSET  # what runs saved before the setting existed trained with
    key: bool = False  # tells runs apart: among the HParams tab's first columns
    # Whether the setting means anything for a config (e.g. the centroid grid for sws only).
    applies: Callable[[Config], bool] | None = None

    def problem(self, value) -> str | None:
        """Why `value` is not a valid value, as `"must be ..."`; None when it is valid.

        `value` is one parsed value: for a pair, each element on its own.
        """
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind is str:
            if not isinstance(value, str):
                return "must be a string"
            if self.choices and value not in self.choices:
                return f"must be one of {', '.join(self.choices)}"
            if not value.strip():
                return "must not be empty"
            if not value.isprintable() or not _utf8(value):
                return "must be printable UTF-8 text"
            if self.folder_name and (
                value in (".", "..")
                or "/" in value
                or "\\" in value
                or value.startswith((".", "-"))
            ):
                return "must be a plain folder name (no '/', not starting with '.' or '-')"
            return None
        number = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, number):
            return "must be an integer" if self.kind is int else "must be a number"
        if not math.isfinite(value):
            return "must be finite"
        low, high = self.minimum, self.maximum
        too_small = low is not None and (value <= low if self.above_minimum else value < low)
        if too_small or (high is not None and value > high):
            bounds = [
                f"{'>' if self.above_minimum else '>='} {low:g}" if low is not None else "",
                f"<= {high:g}" if high is not None else "",
            ]
            return f"must be {' and '.join(b for b in bounds if b)}"
        return None

    def normalized(self, name: str, value):
        """`value` checked and in its canonical type (pairs as tuples, numbers as floats).

        Raises `ValueError` naming the setting and the value received.
        """
        if value is None and self.optional:
            return None
        if self.pair:
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(
                    f"Invalid {name}: must be a pair of values. Received {name}={value!r}."
                )
            return tuple(self.normalized_one(name, item) for item in value)
        return self.normalized_one(name, value)

    def normalized_one(self, name: str, value):
        reason = self.problem(value)
        if reason is not None:
            raise ValueError(f"Invalid {name}: {reason}. Received {name}={value!r}.")
        return self.kind(value) if self.kind in (int, float) else value


def _utf8(text: str) -> bool:
    """Whether `text` is valid UTF-8 (a command line's undecodable bytes are not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def setting(default, help: str, group: str = TRAINING, **declared) -> dataclasses.Field:
    """A `Config` field with its declaration."""
    declaration = Declaration(help=help, group=group, **declared)
    return dataclasses.field(default=default, metadata={"declaration": declaration})


def _sws(config: Config) -> bool:
    return config.layer == "sws"


def _lrlc(config: Config) -> bool:
    return config.layer == "lrlc"


@dataclass(frozen=True)
class Config:
    """Everything one `swsl-train` run needs; the CLI builds it, the rest reads it.

    Every value is checked when the config is made: a bad one raises
    `ValueError` naming the setting and the value, from Python as from the
    command line.
    """

    # The original's eight flags, in the original's order, with its names and defaults.
    color_coding: bool = setting(
        False,
        "Whether to use color coding in TensorBoard (each kernel tile tinted by its nearest "
        "centroid). The original flag could never be turned off",
        ORIGINAL,
        kind=bool,
        negatable=True,
        applies=_sws,
    )
    centroid_grid: tuple[int, int] = setting(
        (2, 2),
        "Grid in which the centroids are arranged at (rows cols)",
        ORIGINAL,
        kind=int,
        pair=True,
        minimum=1,
        maximum=32,
        metavar="CENTROID_GRID",
        key=True,
        applies=lambda config: _sws(config) and config.n_centroids is None,
    )
    n_centroids: int | None = setting(
        None,
        "If n_centroids is given, the centroids are initialized randomly (overrides "
        "--centroid_grid)",
        ORIGINAL,
        kind=int,
        optional=True,
        minimum=1,
        maximum=MAX_CENTROIDS,
        key=True,
        applies=_sws,
    )
    logdir: str = setting(
        "tensorboard",
        "Specify dir for TensorFlow logs, one folder per run inside it",
        ORIGINAL,
        role=Role.PLACE,
    )
    centroids_trainable: bool = setting(
        False,
        "If given, the centroid positions will be trainable",
        ORIGINAL,
        kind=bool,
        applies=_sws,
    )
    log_verbosity: int = setting(
        0,
        "TensorBoard log verbosity: 0 losses, accuracies and kernel images; 1 adds gradients; "
        "2 adds weight histograms; 3 adds activations",
        ORIGINAL,
        kind=int,
        minimum=0,
        maximum=3,
    )
    n_filters: tuple[int, int] = setting(
        (24, 48),
        "Number of filters in the conv layers",
        ORIGINAL,
        kind=int,
        pair=True,
        minimum=1,
        maximum=MAX_FILTERS,
        metavar="N_FILTERS",
        key=True,
    )
    n_epochs: int = setting(
        10,
        "Number of training epochs",
        ORIGINAL,
        role=Role.BUDGET,
        kind=int,
        minimum=1,
        maximum=MAX_EPOCHS,
    )

    # Data.
    dataset: str = setting(
        "mnist",
        "A tensorflow-datasets image classification set with 'image' and 'label' (or "
        "--label_key) features and fixed-size images (mnist, fashion_mnist, kmnist, emnist/letters, cifar10, cifar100, "
        "svhn_cropped, ...), or spatial_mnist: MNIST with a fixed rotation and inversion per "
        "quadrant",
        DATA,
        key=True,
    )
    val_split: str | None = setting(
        None,
        "Evaluate each epoch on this split (TFDS: e.g. validation; npz: the arrays x_NAME, "
        "y_NAME) instead of the test split",
        DATA,
        optional=True,
        metavar="NAME",
    )
    data_dir: str | None = setting(
        None,
        "Data source: an npz with x_train, y_train, x_test, y_test (uint8 images (N, H, W) or "
        "(N, H, W, C), integer labels), a folder with the four MNIST IDX files (.gz or not) or "
        "DATASET.npz, or a TFDS data dir. Default: TFDS's own data dir when the set is prepared "
        "there or the network answers; for mnist, else the copy shipped with swsl-cli",
        DATA,
        role=Role.PLACE,
        optional=True,
        metavar="PATH",
    )
    max_train_examples: int | None = setting(
        None,
        "Train on the first N training images only (smoke runs)",
        DATA,
        kind=int,
        optional=True,
        minimum=1,
        metavar="N",
    )
    max_test_examples: int | None = setting(
        None,
        "Evaluate on the first N test images only (smoke runs)",
        DATA,
        kind=int,
        optional=True,
        minimum=1,
        metavar="N",
    )
    label_key: str = setting(
        "label",
        "The TFDS feature that holds the class, nested ones with '/' (e.g. attributes/Male for "
        "celeb_a); booleans become classes 0 and 1",
        DATA,
        metavar="KEY",
        legacy="label",
    )
    image_size: int | None = setting(
        None,
        "Resize every image to PIXELS x PIXELS (bicubic) after a centred square crop "
        "(--center_crop; default the largest centred square)",
        DATA,
        kind=int,
        optional=True,
        minimum=4,
        maximum=MAX_IMAGE_SIZE,
        metavar="PIXELS",
        legacy=None,
    )
    center_crop: float | None = setting(
        None,
        "Crop every image to its centred square of this fraction of the shorter side (CelebA "
        "as in LRLC: 0.775, 138 of 178 pixels)",
        DATA,
        kind=float,
        optional=True,
        minimum=0,
        maximum=1,
        above_minimum=True,
        metavar="FRACTION",
        legacy=None,
    )

    # The network.
    layer: str = setting(
        "sws",
        "sws: soft weight sharing layers; conv: plain Conv2D (hard sharing); local: "
        "LocallyConnected2D (no sharing); lrlc: LowRankLocallyConnected2D (--rank kernels mixed "
        "per location); coordconv: Conv2D on the input with two coordinate channels appended; "
        "the rest of the network is the same",
        NETWORK,
        choices=LAYERS,
        key=True,
    )
    head: str = setting(
        "dense",
        "dense: Flatten -> 128 -> 256 -> classes (the original's, position-specific itself); "
        "gap: global average pooling -> classes (as LRLC), so that only the conv layers can "
        "tell positions apart",
        NETWORK,
        choices=HEADS,
        legacy="dense",
    )
    scaling: float = setting(
        1.0,
        "SWS similarity sharpness: the side of the centroids' coordinate square, Sigma starts as "
        "scaling * I (the exponent grows as scaling^4); at a corner of the output a 2x2 grid's "
        "weights are 0.34/0.24/0.24/0.17 at 1 (the original's), 0.71/0.13/0.13/0.02 at 1.5, "
        "0.99/0.005/0.005/0.000 at 2",
        NETWORK,
        kind=float,
        minimum=0,
        maximum=MAX_SCALING,
        above_minimum=True,
        legacy=1.0,
        applies=_sws,
    )
    rank: int = setting(
        4,
        "--layer lrlc: the number of basis kernels each layer mixes per location",
        NETWORK,
        kind=int,
        minimum=1,
        maximum=MAX_RANK,
        metavar="K",
        applies=_lrlc,
    )
    combining: str = setting(
        "row_col",
        "--layer lrlc: the combining weights' logits, row_col (one per output row plus one per "
        "column, for each basis) or free (one per output cell and basis)",
        NETWORK,
        choices=COMBININGS,
        applies=_lrlc,
    )
    kcp_init: str = setting(
        "shared",
        "SWS kernels at step 0: shared (every KCP the same kernel, so the layer starts as a "
        "plain convolution and learns where to specialise) or independent (each KCP its own "
        "random kernel, as the original)",
        NETWORK,
        choices=KCP_INITS,
        legacy="independent",
        applies=_sws,
    )

    # Training.
    batch_size: int = setting(
        64, "Images per training step, per replica", kind=int, minimum=1, maximum=65536
    )
    lr_schedule: str = setting(
        "cosine",
        "cosine: linear warm-up over --warmup_epochs to --learning_rate, then a cosine decay "
        "to 0 at the last step of --n_epochs; exponential: --learning_rate times --lr_decay per "
        "epoch (the original: --lr_decay 1)",
        choices=LR_SCHEDULES,
        legacy="exponential",
    )
    learning_rate: float = setting(
        3e-3,
        "Adam's peak (cosine) or initial (exponential) learning rate (the original used 0.01, "
        "constant)",
        kind=float,
        minimum=0,
        above_minimum=True,
    )
    warmup_epochs: float = setting(
        0.2,
        "--lr_schedule cosine: epochs of linear warm-up from 0 (fractions allowed)",
        kind=float,
        minimum=0,
        maximum=MAX_EPOCHS,
        legacy=0.0,
        applies=lambda config: config.lr_schedule == "cosine",
    )
    lr_decay: float = setting(
        0.75,
        "--lr_schedule exponential: learning rate factor per epoch (1 keeps it constant, as the "
        "original)",
        kind=float,
        minimum=0,
        maximum=1,
        above_minimum=True,
        applies=lambda config: config.lr_schedule == "exponential",
    )
    ema: float = setting(
        0.99,
        "Evaluate and save an exponential moving average of the weights, updated every step "
        "with this momentum (Keras's use_ema); 0 turns it off, as the original",
        kind=float,
        minimum=0,
        # Beyond 0.9999 (an average over 10,000 steps) float32 rounds the momentum to 1.
        maximum=0.9999,
        metavar="MOMENTUM",
        legacy=0.0,
    )
    ema_warmup: bool = setting(
        True,
        "With --ema: warm the average up, its momentum at step t being min(MOMENTUM, (1 + t) / "
        "(20 + t)) (TensorFlow's ExponentialMovingAverage rule, twice as fast), so that a short "
        "run's average holds little of the random start; --no-ema_warmup: MOMENTUM from the "
        "second step",
        kind=bool,
        negatable=True,
        legacy=False,
        applies=lambda config: config.ema > 0,
    )
    max_shift: int = setting(
        2,
        "Training augmentation: random shifts of up to this many pixels per axis (0 turns it "
        "off, as the original)",
        kind=int,
        minimum=0,
        maximum=14,
        metavar="PIXELS",
    )
    max_rotation: float = setting(
        10.0,
        "Training augmentation: random rotations of up to this many degrees either way (0 "
        "turns it off, as the original)",
        kind=float,
        minimum=0,
        maximum=180,
        metavar="DEGREES",
        legacy=0.0,
    )
    max_zoom: float = setting(
        0.1,
        "Training augmentation: random zooms in or out by up to this fraction of the image (0 "
        "turns it off, as the original)",
        kind=float,
        minimum=0,
        maximum=0.5,
        metavar="FRACTION",
        legacy=0.0,
    )
    seed: int | None = setting(
        None,
        "Random seed; makes runs repeatable (deterministic ops). Default: a fresh seed, recorded "
        "in config.json, without op determinism",
        kind=int,
        optional=True,
        minimum=0,
        maximum=2**31 - 1,
    )

    # The run and its outputs.
    run_name: str | None = setting(
        None,
        "Folder of this run under --logdir (default: from the flags and the time)",
        RUN,
        role=Role.PLACE,
        optional=True,
        folder_name=True,
        metavar="NAME",
    )
    resume: bool = setting(
        False,
        "Continue --run_name (default: the newest run with a checkpoint in --logdir) where it "
        "stopped, with its saved settings; only --n_epochs (to extend it), --data_dir (the same "
        "data elsewhere), --quiet and --peer_timeout may be given with it",
        RUN,
        role=Role.PLACE,
        kind=bool,
    )
    quiet: bool = setting(
        False, "No progress bars: one plain line per epoch", RUN, role=Role.PLACE, kind=bool
    )

    # Devices and several machines.
    distribute: str = setting(
        "none",
        "none; mirrored: all local GPUs (tf.distribute.MirroredStrategy); multi_worker: "
        "MultiWorkerMirroredStrategy from TF_CONFIG",
        SCALE,
        choices=DISTRIBUTE,
    )
    peer_timeout: float = setting(
        300.0,
        "--distribute multi_worker: how long a worker waits for all the others of TF_CONFIG to "
        "come up before it gives up",
        SCALE,
        role=Role.PLACE,
        kind=float,
        minimum=0,
        maximum=7 * 24 * 3600,
        above_minimum=True,
        metavar="SECONDS",
    )
    precision: str = setting(
        "auto",
        "Keras dtype policy; auto: mixed_float16 on GPU, float32 on CPU",
        SCALE,
        choices=PRECISIONS,
    )
    jit_compile: str = setting(
        "off", "XLA compilation of the train step (measured slower on CPU)", SCALE, choices=JIT
    )

    # Not a flag. None: deterministic ops exactly when a seed was given (set when the
    # seed is drawn, `runs.with_seed`).
    deterministic: bool | None = None

    def __post_init__(self):
        for name, declaration in DECLARATIONS.items():
            value = declaration.normalized(name, getattr(self, name))
            object.__setattr__(self, name, value)
        if self.deterministic is not None and not isinstance(self.deterministic, bool):
            raise ValueError(
                f"Expected deterministic to be true, false or None. "
                f"Received deterministic={self.deterministic!r}."
            )

    @property
    def centroids(self) -> int | tuple[int, int]:
        """The layer's `centroids` argument: `n_centroids` (random) overrides the grid."""
        return self.n_centroids if self.n_centroids is not None else tuple(self.centroid_grid)

    def applies(self, name: str) -> bool:
        """Whether setting `name` means anything for this run (e.g. no centroid grid for conv)."""
        rule = DECLARATIONS[name].applies
        return rule is None or rule(self)

    def default_run_name(self, stamp: str) -> str:
        """A readable run name from the settings that shape the experiment, plus a time stamp."""
        if self.layer == "lrlc":
            arrangement = f"lrlc-k{self.rank}" + ("-free" if self.combining == "free" else "")
        elif self.layer != "sws":
            arrangement = self.layer
        elif self.n_centroids is not None:
            arrangement = f"sws-r{self.n_centroids}"
        else:
            arrangement = "sws-g{}x{}".format(*self.centroid_grid)
        if self.layer == "sws" and self.scaling != 1.0:
            arrangement += f"-s{self.scaling:g}"
        parts = [
            self.dataset.replace("/", "-") if self.dataset != "mnist" else None,
            self.label_key if self.label_key != "label" else None,
            f"{self.image_size}px" if self.image_size is not None else None,
            arrangement,
            "trainable" if self.centroids_trainable and self.layer == "sws" else None,
            "gap" if self.head == "gap" else None,
            "f{}-{}".format(*self.n_filters),
            f"e{self.n_epochs}",
            stamp,
        ]
        return "_".join(re.sub(r"[^\w.+-]", "-", p) for p in parts if p)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """A config from `to_dict` output (JSON lists back to tuples).

        Settings the saved run lacks get their legacy value (what the run
        trained with before the setting existed); unknown keys and bad values
        raise `ValueError`.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown settings {', '.join(unknown)}")
        return cls(**{**LEGACY_SETTINGS, **values})


DECLARATIONS: dict[str, Declaration] = {
    field.name: field.metadata["declaration"]
    for field in dataclasses.fields(Config)
    if "declaration" in field.metadata
}
DEFAULTS = {
    field.name: field.default for field in dataclasses.fields(Config) if field.name in DECLARATIONS
}
# Settings a saved `config.json` from before they existed lacks: such a run
# trained with these values, so resuming it keeps them (not today's defaults).
LEGACY_SETTINGS = {
    name: declaration.legacy
    for name, declaration in DECLARATIONS.items()
    if declaration.legacy is not _UNSET
}
# What `--resume` may take from the command line; every other setting comes back
# from the saved run, and giving it with another value is refused.
RESUME_OVERRIDES = tuple(
    name for name, declaration in DECLARATIONS.items() if declaration.role is not Role.EXPERIMENT
)
# The settings shown as HParams, and those among them that tell runs apart.
HPARAMS = tuple(
    name for name, declaration in DECLARATIONS.items() if declaration.role is not Role.PLACE
)
KEY_HPARAMS = tuple(name for name in HPARAMS if DECLARATIONS[name].key)
