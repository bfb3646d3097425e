"""Shared fixtures: offline, quiet, and the real MNIST files bundled with the package."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

os.environ["SWSL_OFFLINE"] = "1"  # no test may reach the network
os.environ.pop("SWSL_CELL_KERNELS", None)  # the tests choose the per-cell kernels themselves
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = ROOT / "swsl_cli" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    assert (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), (
        f"real MNIST expected in {MNIST_DIR}"
    )
    return MNIST_DIR


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> Path:
    """Writes `array` (uint8) as an IDX file, gzip-compressed when `compress`."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    """A generator seeded per test: no random state shared between tests."""
    return np.random.default_rng(0)


@pytest.fixture
def small_idx_dir(tmp_path) -> Path:
    """A tiny MNIST-shaped IDX folder: 40 train, 20 test random images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    for split, count in (("train", 40), ("t10k", 20)):
        write_idx(
            folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), 2051
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (count,)), 2049)
    return folder


@pytest.fixture(scope="session", autouse=True)
def compiled_cell_kernels():
    """The per-cell kernels built (or refused) once before any test on TensorFlow, so that
    no run's output depends on which test happened to compile them first."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        from swsl_cli.layers import cell_ops

        cell_ops.library()


@pytest.fixture
def cell_kernels_choice(monkeypatch):
    """`cell_ops` deciding again under a test's environment (set through the returned
    `monkeypatch`); the process's own answer is restored afterwards."""
    from swsl_cli.layers import cell_ops

    saved = dict(cell_ops._state)
    cell_ops.reset()
    yield monkeypatch
    cell_ops.reset()
    cell_ops._state.update(saved)
