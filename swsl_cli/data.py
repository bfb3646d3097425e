"""MNIST from tensorflow-datasets, IDX files or an npz, into `tf.data` pipelines.

Every source is read into uint8 arrays first (MNIST is 55 MB), then one
pipeline serves them all: a seeded permutation per epoch (so a resumed run
sees the same order as an uninterrupted one), batching, scaling to [0, 1] and
prefetching; the test set is scaled once and cached.
"""

from __future__ import annotations

import gzip
import os
import socket
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
TFDS_HOST = ("storage.googleapis.com", 443)  # where TFDS downloads MNIST from
NETWORK_PROBE_SECONDS = 5.0
OFFLINE_ENV = "SWSL_OFFLINE"


class DataError(Exception):
    """The data could not be loaded; the message says what to do."""


@dataclass(frozen=True)
class MnistArrays:
    """MNIST as uint8 images `(N, 28, 28)` and int labels `(N,)`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def save_npz(self, path: Path) -> Path:
        """Writes the arrays as a Keras-style `mnist.npz` (what `--data_dir` reads back)."""
        np.savez(
            path, x_train=self.x_train, y_train=self.y_train, x_test=self.x_test, y_test=self.y_test
        )
        return path

    def limited(self, max_train: int | None, max_test: int | None) -> MnistArrays:
        """The first `max_train` / `max_test` examples (all when None)."""
        return MnistArrays(
            self.x_train[:max_train],
            self.y_train[:max_train],
            self.x_test[:max_test],
            self.y_test[:max_test],
            self.source,
        )


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Reads one IDX file (gzip-compressed or not) and checks its header and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
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


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (
        stem + ".gz",
        stem,
        stem.replace("-idx", ".idx") + ".gz",
        stem.replace("-idx", ".idx"),
    ):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx_folder(folder: Path) -> MnistArrays:
    """The four MNIST IDX files of `folder`, checked for shape, count and label range."""
    paths = {key: _idx_path(folder, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise DataError(f"{folder} lacks MNIST IDX files: {', '.join(missing)} (.gz or not)")
    arrays = {
        key: read_idx(path, IMAGE_MAGIC if key.startswith("x") else LABEL_MAGIC)
        for key, path in paths.items()
    }
    return _checked(arrays, source=f"IDX files in {folder}")


def load_npz(path: Path) -> MnistArrays:
    """A Keras-style `mnist.npz` with x_train, y_train, x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in IDX_FILES if key not in archive.files]
            if missing:
                raise DataError(f"{path} lacks the arrays {', '.join(missing)}")
            arrays = {key: archive[key] for key in IDX_FILES}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path} is not a readable npz archive: {error}") from None
    return _checked(arrays, source=f"npz {path}")


def _checked(arrays: dict, source: str) -> MnistArrays:
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(
                f"{source}: {split} images have shape {images.shape}, expected (N, 28, 28)"
            )
        if labels.shape != (len(images),):
            raise DataError(
                f"{source}: {len(images)} {split} images but labels of shape {labels.shape}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{source}: {split} labels outside 0..9")
        if len(images) == 0:
            raise DataError(f"{source}: the {split} split is empty")
    return MnistArrays(
        np.asarray(arrays["x_train"], np.uint8),
        np.asarray(arrays["y_train"], np.int32),
        np.asarray(arrays["x_test"], np.uint8),
        np.asarray(arrays["y_test"], np.int32),
        source,
    )


def network_available(address=TFDS_HOST, timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """Whether TFDS's download host answers within `timeout` seconds (False when offline).

    The probe runs in a thread because name resolution ignores socket timeouts.
    """
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        return False
    result = []

    def probe():
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def load_tfds(data_dir: str | None) -> MnistArrays:
    """MNIST through tensorflow-datasets, downloading it only when the network answers."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("mnist", data_dir=data_dir)
    if not builder.is_prepared():
        if not network_available():
            where = data_dir or "TFDS's default data dir"
            raise DataError(
                f"MNIST is not prepared in {where} and the network is unreachable: run "
                "`tfds build mnist` where there is network, or pass --data_dir with the four "
                "MNIST IDX files or an mnist.npz"
            )
        builder.download_and_prepare()
    splits = {}
    for split in ("train", "test"):
        batches = list(
            tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(10000))
        )
        splits[f"x_{split}"] = np.concatenate([images for images, _ in batches]).reshape(-1, 28, 28)
        splits[f"y_{split}"] = np.concatenate([labels for _, labels in batches])
    return _checked(splits, source=f"tensorflow-datasets mnist ({builder.data_dir})")


def load_mnist(data_dir: str | None) -> MnistArrays:
    """MNIST from `--data_dir`: an npz file, an IDX folder, a TFDS data dir, or TFDS's default."""
    if data_dir is None:
        return load_tfds(None)
    path = Path(data_dir).expanduser()
    if path.is_file():
        return load_npz(path)
    if not path.is_dir():
        raise DataError(f"--data_dir {data_dir} does not exist")
    if any(_idx_path(path, stem) for stem in IDX_FILES.values()):
        return load_idx_folder(path)
    if (path / "mnist.npz").is_file():
        return load_npz(path / "mnist.npz")
    if (path / "mnist").is_dir():
        return load_tfds(str(path))
    if not any(path.iterdir()):
        raise DataError(
            f"--data_dir {data_dir} is empty: put the four MNIST IDX files or mnist.npz there, "
            "or a TFDS data dir (`tfds build mnist --data_dir ...`)"
        )
    raise DataError(
        f"--data_dir {data_dir} holds neither MNIST IDX files, mnist.npz nor a TFDS mnist folder"
    )


def _with_channel(images, labels):
    import tensorflow as tf

    # The model rescales to [0, 1] itself, so that a saved model takes images as stored.
    return tf.cast(images, tf.float32)[..., None], labels


def train_dataset(arrays: MnistArrays, batch_size: int, seed: int, epochs: range):
    """Batches of every epoch in `epochs`, each a fresh seeded permutation of the training set.

    Epoch `e` always uses the permutation drawn from `(seed, e)`, whichever
    epoch training starts at; each epoch has `ceil(N / batch_size)` batches.
    """
    import tensorflow as tf

    images = tf.constant(arrays.x_train)
    labels = tf.constant(arrays.y_train)
    count = len(arrays.x_train)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.stack([tf.cast(seed, tf.int64), epoch])
        )
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    dataset = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_batches)
    dataset = dataset.map(
        lambda index: _with_channel(tf.gather(images, index), tf.gather(labels, index)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def test_dataset(arrays: MnistArrays, batch_size: int):
    """The test set, scaled once, cached and batched."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((arrays.x_test, arrays.y_test))
    return dataset.batch(batch_size).map(_with_channel).cache().prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(arrays: MnistArrays, batch_size: int) -> int:
    return -(-len(arrays.x_train) // batch_size)
