"""MNIST-style IDX files, and the copy of MNIST bundled with the package."""

from __future__ import annotations

import gzip
import math
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


def _read_at_most(stream, count: int) -> bytes:
    """Up to `count` bytes of `stream`, read in blocks: a header that claims more than the
    file holds costs no allocation of its claim."""
    blocks = []
    while count > 0 and (block := stream.read(min(count, 1 << 24))):
        blocks.append(block)
        count -= len(block)
    return b"".join(blocks)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Reads one IDX file (gzip-compressed or not) and checks its header and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            head = _read_at_most(stream, 8)
            if len(head) < 8:
                raise DataError(f"{path} is truncated: {len(head)} bytes, not even an IDX header")
            found = int.from_bytes(head[:4], "big")
            if found != magic:
                raise DataError(
                    f"{path} is not an MNIST IDX file: magic number {found}, expected {magic}"
                )
            ndim = head[3]
            dims = head[4:] + _read_at_most(stream, 4 * ndim - 4)
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            header = 4 + 4 * ndim
            size = math.prod(shape)  # Python integers: a product beyond int64 stays exact
            body = _read_at_most(stream, size + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    if len(dims) != 4 * ndim or len(body) != size:
        found = header + len(body) if len(dims) == 4 * ndim else 4 + len(dims)
        more = "more than " if len(body) > size else ""
        raise DataError(
            f"{path} is truncated or padded: {more}{found} bytes, header says {header + size} "
            f"for shape {shape}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


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
