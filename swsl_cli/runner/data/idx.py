"""MNIST-style IDX files, and the copy of MNIST bundled with the package."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from swsl_cli.runner.data.arrays import DataError, ImageArrays
from swsl_cli.runner.data.checks import checked_arrays

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
BUNDLED_MNIST = Path(__file__).resolve().parents[2] / "mnist"


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Reads one IDX file (gzip-compressed or not) and checks its header and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if len(raw) < 8:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, not even an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path} is not an MNIST IDX file: magic number {found}, expected {magic}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path} is truncated or padded: {len(raw)} bytes, header says {expected} "
            f"for shape {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def idx_path(folder: Path, stem: str) -> Path | None:
    for name in (
        stem + ".gz",
        stem,
        stem.replace("-idx", ".idx") + ".gz",
        stem.replace("-idx", ".idx"),
    ):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx_folder(folder: Path, name: str = "mnist", source: str | None = None) -> ImageArrays:
    """The four MNIST-style IDX files of `folder`, checked for shape, count and label range."""
    paths = {key: idx_path(folder, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise DataError(f"{folder} lacks MNIST IDX files: {', '.join(missing)} (.gz or not)")
    arrays = {
        key: read_idx(path, IMAGE_MAGIC if key.startswith("x") else LABEL_MAGIC)
        for key, path in paths.items()
    }
    return checked_arrays(arrays, source=source or f"IDX files in {folder}", name=name)


def load_bundled_mnist() -> ImageArrays:
    """The copy of MNIST shipped inside this package."""
    return load_idx_folder(BUNDLED_MNIST, source=f"bundled copy of MNIST in {BUNDLED_MNIST}")
