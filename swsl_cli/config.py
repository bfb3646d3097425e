"""The run configuration: the single source of every default.

Imports nothing heavy, so `swsl-train --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

PROG = "swsl-train"
MAX_COLORS = 12
LAYERS = ("sws", "conv")
DISTRIBUTE = ("none", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT = ("auto", "on", "off")

# Flags whose change makes a saved run a different experiment: `--resume`
# refuses to continue a run under other values of these.
EXPERIMENT_FIELDS = (
    "centroid_grid",
    "n_centroids",
    "centroids_trainable",
    "n_filters",
    "layer",
    "batch_size",
    "learning_rate",
    "seed",
    "max_train_examples",
    "max_test_examples",
    "max_shift",
    "distribute",
    "dataset",
    "val_split",
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
    learning_rate: float = 1e-3
    lr_decay: float = 0.75
    max_shift: int = 2
    seed: int | None = None
    # None: deterministic ops exactly when a seed was given (set when the seed is drawn).
    deterministic: bool | None = None
    run_name: str | None = None
    layer: str = "sws"
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    quiet: bool = False
    resume: bool = False
    distribute: str = "none"
    precision: str = "auto"
    jit_compile: str = "auto"

    @property
    def centroids(self) -> int | tuple[int, int]:
        """The layer's `centroids` argument: `n_centroids` (random) overrides the grid."""
        return self.n_centroids if self.n_centroids is not None else tuple(self.centroid_grid)

    @property
    def kcp_count(self) -> int:
        """Number of kernel-centroid pairs per SWS layer."""
        if self.n_centroids is not None:
            return self.n_centroids
        return self.centroid_grid[0] * self.centroid_grid[1]

    def default_run_name(self, stamp: str) -> str:
        """A readable run name from the flags that shape the experiment, plus a time stamp."""
        if self.layer == "conv":
            arrangement = "conv"
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

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
