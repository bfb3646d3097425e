"""A data set in memory: uint8 images and int labels per split, and the data errors."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# `(max_train, max_test)`: how many examples of the training and of the test and validation
# splits to keep; None keeps them all.
Limits = tuple[int | None, int | None]


class DataError(Exception):
    """The data could not be loaded; the message says what to do."""


class DownloadError(DataError):
    """TFDS could not download or prepare a data set although the network answered."""


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """A data set as uint8 images `(N, H, W, C)` and int32 labels `0..num_classes-1`.

    `x_val`/`y_val` hold the `--val_split` split when one was asked for; the
    per-epoch evaluation uses them, else the test split.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    name: str = "mnist"
    num_classes: int = 10
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    val_split: str | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(height, width, channels)` of every image."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def splits(self) -> dict[str, np.ndarray]:
        """Every array by its npz name (`x_train`, ..., `x_<val_split>`)."""
        arrays = {"x_train": self.x_train, "y_train": self.y_train}
        arrays.update(x_test=self.x_test, y_test=self.y_test)
        if self.x_val is not None:
            arrays.update({f"x_{self.val_split}": self.x_val, f"y_{self.val_split}": self.y_val})
        return arrays

    def fingerprint(self) -> str:
        """16 hex digits that change with any image, label, shape or the class count.

        blake2b over the raw bytes: about 0.1 s for MNIST's 70,000 images.
        """
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"classes={self.num_classes}".encode())
        for key, array in self.splits().items():
            array = np.ascontiguousarray(array)
            digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()

    def save_npz(self, path: Path) -> Path:
        """Writes the arrays as an npz that `--data_dir` reads back."""
        np.savez(path, num_classes=self.num_classes, **self.splits())
        return path

    def limited(self, max_train: int | None, max_test: int | None) -> ImageArrays:
        """The first `max_train` training / `max_test` test and validation examples.

        A shortened split is a copy, so the full arrays can be freed.
        """
        return dataclasses.replace(
            self,
            x_train=_first(self.x_train, max_train),
            y_train=_first(self.y_train, max_train),
            x_test=_first(self.x_test, max_test),
            y_test=_first(self.y_test, max_test),
            x_val=None if self.x_val is None else _first(self.x_val, max_test),
            y_val=None if self.y_val is None else _first(self.y_val, max_test),
        )


def _first(array: np.ndarray, count: int | None) -> np.ndarray:
    """`array[:count]`, copied when that is shorter than `array`."""
    return array if count is None or count >= len(array) else array[:count].copy()
