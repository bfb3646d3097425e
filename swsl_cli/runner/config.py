"""The run configuration: the single source of every default.

Imports nothing heavy, so `swsl-train --help` stays instant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

PROG = "swsl-train"
LAYERS = ("sws", "conv", "local")
KCP_INITS = ("independent", "shared")
DISTRIBUTE = ("none", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT = ("off", "on")
LR_SCHEDULES = ("cosine", "exponential")

# Settings a saved `config.json` from before they existed lacks: such a run
# trained with these values, so resuming it keeps them (not today's defaults).
LEGACY_SETTINGS = {
    "lr_schedule": "exponential",
    "warmup_epochs": 0.0,
    "ema": 0.0,
    "max_rotation": 0.0,
    "max_zoom": 0.0,
    "kcp_init": "independent",
}

# What `--resume` may take from the command line; every other flag comes back
# from the saved run, and giving it with another value is refused. `n_epochs`
# extends the run, `data_dir` may point at the same data elsewhere (checked by
# fingerprint), the rest only says where the run is or how much to print.
RESUME_OVERRIDES = (
    "n_epochs",
    "data_dir",
    "quiet",
    "logdir",
    "run_name",
    "resume",
    "peer_timeout",
)


@dataclass(frozen=True)
class Config:
    """Everything one `swsl-train` run needs; the CLI builds it, the rest reads it."""

    color_coding: bool = False
    centroid_grid: tuple[int, int] = (2, 2)
    n_centroids: int | None = None
    logdir: str = "tensorboard"
    centroids_trainable: bool = False
    log_verbosity: int = 0
    n_filters: tuple[int, int] = (24, 48)
    n_epochs: int = 10
    data_dir: str | None = None
    dataset: str = "mnist"
    val_split: str | None = None
    batch_size: int = 64
    lr_schedule: str = "cosine"
    learning_rate: float = 3e-3
    warmup_epochs: float = 0.2
    lr_decay: float = 0.75
    ema: float = 0.99
    max_shift: int = 2
    max_rotation: float = 10.0
    max_zoom: float = 0.1
    seed: int | None = None
    # None: deterministic ops exactly when a seed was given (set when the seed is drawn).
    deterministic: bool | None = None
    run_name: str | None = None
    layer: str = "sws"
    kcp_init: str = "shared"
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    quiet: bool = False
    resume: bool = False
    distribute: str = "none"
    precision: str = "auto"
    jit_compile: str = "off"
    # Seconds a multi-worker run waits for every worker of TF_CONFIG to join.
    peer_timeout: float = 300.0

    @property
    def centroids(self) -> int | tuple[int, int]:
        """The layer's `centroids` argument: `n_centroids` (random) overrides the grid."""
        return self.n_centroids if self.n_centroids is not None else tuple(self.centroid_grid)

    def default_run_name(self, stamp: str) -> str:
        """A readable run name from the flags that shape the experiment, plus a time stamp."""
        if self.layer != "sws":
            arrangement = self.layer
        elif self.n_centroids is not None:
            arrangement = f"sws-r{self.n_centroids}"
        else:
            arrangement = "sws-g{}x{}".format(*self.centroid_grid)
        parts = [
            arrangement,
            "trainable" if self.centroids_trainable and self.layer == "sws" else None,
            "f{}-{}".format(*self.n_filters),
            f"e{self.n_epochs}",
            stamp,
        ]
        return "_".join(p for p in parts if p)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """A config from `to_dict` output (JSON lists back to tuples); unknown keys are refused."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown settings {', '.join(unknown)}")
        values = {**LEGACY_SETTINGS, **values}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
