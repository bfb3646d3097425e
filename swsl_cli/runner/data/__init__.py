"""Image classification data from tensorflow-datasets, IDX files, an npz or the bundled MNIST.

Every source is read into uint8 arrays `(N, H, W, C)` and int labels first,
checked, then one pipeline serves them all: a seeded permutation per epoch (so
a resumed run sees the same order as an uninterrupted one), batching, the
training augmentation (seeded per batch, for the same reason) and prefetching;
the evaluation sets are converted once and cached.

Where `--dataset mnist` comes from, first match wins: `--data_dir` if given;
tensorflow-datasets if MNIST is prepared in its data dir or the network
answers; else the copy of MNIST bundled in this package (`swsl_cli/mnist`).
Every other TFDS name needs `--data_dir` or TFDS's own data dir to hold it
prepared, or the network to download it. `spatial_mnist` is MNIST with a
fixed distortion per image quadrant (see `spatial_mnist`).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import socket
import stat
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swsl_cli.runner.augment import Augmentation

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
# Second word of the augmentation's stateless key, before the epoch and the batch are
# folded in. (It equals the shuffle's key of epoch 4; folding in hashes it, so the
# draws share nothing usable with that shuffle.)
AUGMENTATION_STREAM = 4
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
BUNDLED_MNIST = Path(__file__).resolve().parents[2] / "mnist"
SPATIAL_MNIST = "spatial_mnist"
TFDS_HOST = ("storage.googleapis.com", 443)  # where TFDS downloads MNIST from
NETWORK_PROBE_SECONDS = 5.0
OFFLINE_ENV = "SWSL_OFFLINE"
MAX_CLASSES = 65536  # beyond this the labels are surely not class indices (and Dense would OOM)
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile)


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
        """The first `max_train` training / `max_test` test and validation examples."""
        return dataclasses.replace(
            self,
            x_train=self.x_train[:max_train],
            y_train=self.y_train[:max_train],
            x_test=self.x_test[:max_test],
            y_test=self.y_test[:max_test],
            x_val=None if self.x_val is None else self.x_val[:max_test],
            y_val=None if self.y_val is None else self.y_val[:max_test],
        )


def load_dataset(
    name: str = "mnist", data_dir: str | None = None, val_split: str | None = None
) -> ImageArrays:
    """The data set `name` (a TFDS name or `spatial_mnist`), from `data_dir` when given.

    `data_dir` may be an npz file, a folder with the four IDX files, a folder
    holding `<name>.npz`, or a TFDS data dir. `val_split` names a further
    split to evaluate on each epoch (TFDS: e.g. `validation`; npz: the arrays
    `x_<val_split>` and `y_<val_split>`).
    """
    if val_split in ("train", "test"):
        raise DataError(
            f"--val_split {val_split}: name a third split (e.g. validation); each epoch is "
            "evaluated on the test split when --val_split is not given"
        )
    if name == SPATIAL_MNIST:
        return spatial_mnist(load_dataset("mnist", data_dir, val_split))
    if data_dir is not None:
        return _load_data_dir(name, data_dir, val_split)
    if name == "mnist":
        return _load_mnist_default(val_split)
    return load_tfds(name, None, val_split)


def load_mnist(data_dir: str | None) -> ImageArrays:
    """MNIST in the order `--dataset mnist` looks for it."""
    return load_dataset("mnist", data_dir)


def _load_data_dir(name: str, data_dir: str, val_split: str | None) -> ImageArrays:
    path = Path(data_dir).expanduser()
    if path.is_file():
        return load_npz(path, val_split)
    if path.exists() and not path.is_dir():
        raise DataError(
            f"--data_dir {data_dir} is a {_file_kind(path)}, not a regular file or a folder: "
            "give an npz file or a folder"
        )
    if not path.exists():
        raise DataError(f"--data_dir {data_dir} does not exist")
    if any(_idx_path(path, stem) for stem in IDX_FILES.values()):
        if val_split:
            raise DataError(
                f"--val_split {val_split}: the IDX files in {path} hold train and test only"
            )
        return load_idx_folder(path, name=name)
    npz = path / f"{name.replace('/', '_')}.npz"
    if npz.is_file():
        return load_npz(npz, val_split, name=name)
    if (path / name.split("/")[0]).is_dir():
        return load_tfds(name, str(path), val_split)
    if not any(path.iterdir()):
        raise DataError(
            f"--data_dir {data_dir} is empty: put an npz, the four MNIST IDX files or a TFDS "
            f"data dir there (`tfds build {name} --data_dir ...`)"
        )
    raise DataError(
        f"--data_dir {data_dir} holds neither IDX files, {npz.name} nor a TFDS {name} folder"
    )


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    for test, kind in (
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return kind
    return "special file"


# ----------------------------------------------------------------------------- IDX files


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


def load_idx_folder(folder: Path, name: str = "mnist", source: str | None = None) -> ImageArrays:
    """The four MNIST-style IDX files of `folder`, checked for shape, count and label range."""
    paths = {key: _idx_path(folder, stem) for key, stem in IDX_FILES.items()}
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


# ----------------------------------------------------------------------------- npz archives


def _not_npz_reason(path: Path) -> str | None:
    """Why `path` is no npz archive, judged from its first bytes; None when it may be one."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(512)
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return None
    if not head:
        return "it is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array (save with np.savez instead)"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed; for IDX files give their folder"
    if head.startswith(b"\x80"):
        return "it is a Python pickle"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "it is neither a zip archive nor text"
    return "it is a text file"


def load_npz(path: Path, val_split: str | None = None, name: str | None = None) -> ImageArrays:
    """An npz with x_train, y_train, x_test, y_test (and x_/y_<val_split> when asked for).

    An optional scalar `num_classes` sets the class count; without it the
    count is the largest label + 1.
    """
    reason = _not_npz_reason(path)
    if reason:
        raise DataError(
            f"{path} is not an npz archive ({reason}): save x_train, y_train, x_test, y_test "
            "with numpy.savez"
        )
    keys = list(IDX_FILES) + ([f"x_{val_split}", f"y_{val_split}"] if val_split else [])
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DataError(f"{path} lacks the arrays {', '.join(missing)}")
            arrays = {}
            for key in keys + (["num_classes"] if "num_classes" in archive.files else []):
                try:
                    arrays[key] = archive[key]
                except ValueError as error:
                    if "pickle" not in str(error):
                        raise
                    raise DataError(
                        f"{path}: array {key} holds Python objects; store plain numbers "
                        "(uint8 images, integer labels)"
                    ) from None
                if not isinstance(arrays[key], np.ndarray):
                    raise DataError(f"{path}: member {key} is not a .npy array")
    except READ_ERRORS as error:
        raise DataError(f"{path} is not a readable npz archive: {error}") from None
    num_classes = arrays.pop("num_classes", None)
    if val_split:
        arrays["x_val"], arrays["y_val"] = (
            arrays.pop(f"x_{val_split}"),
            arrays.pop(f"y_{val_split}"),
        )
    return checked_arrays(
        arrays,
        source=f"npz {path}",
        name=name or path.stem,
        num_classes=_num_classes_scalar(path, num_classes),
        val_split=val_split,
    )


def _num_classes_scalar(path: Path, value: np.ndarray | None) -> int | None:
    if value is None:
        return None
    if value.shape != () or value.dtype.kind not in "iu" or int(value) < 1:
        raise DataError(
            f"{path}: num_classes must be a positive integer scalar, got {value!r} ({value.dtype})"
        )
    return int(value)


# ----------------------------------------------------------------------------- checks


def _image_dtype_hint(images: np.ndarray) -> str:
    if images.dtype.kind not in "iuf" or images.size == 0:
        return "store images as uint8 (0-255)"
    low, high = float(images.min()), float(images.max())
    if images.dtype.kind == "f" and low >= 0 and high <= 1:
        return (
            f"values in [{low:g}, {high:g}] look scaled to [0, 1]: multiply by 255 and cast, "
            "e.g. np.round(x * 255).astype(np.uint8)"
        )
    if low >= 0 and high <= 255:
        return "cast them with .astype(np.uint8)"
    return f"values in [{low:g}, {high:g}]: rescale to 0-255 and cast to uint8"


def _checked_split(source: str, split: str, images: np.ndarray, labels: np.ndarray):
    if images.ndim not in (3, 4):
        raise DataError(
            f"{source}: {split} images have shape {images.shape}, expected (N, H, W) or "
            "(N, H, W, C)"
        )
    if images.dtype != np.uint8:
        raise DataError(
            f"{source}: {split} images are {images.dtype}, not uint8; {_image_dtype_hint(images)}"
        )
    if len(images) == 0:
        raise DataError(f"{source}: the {split} split is empty")
    if labels.dtype.kind not in "iu":
        kind = {"U": "strings", "S": "strings", "f": "floats", "b": "booleans"}.get(
            labels.dtype.kind, str(labels.dtype)
        )
        raise DataError(
            f"{source}: {split} labels are {kind} ({labels.dtype}); integer class indices "
            "0..K-1 expected"
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]  # Keras' CIFAR arrays are (N, 1)
    if labels.shape != (len(images),):
        raise DataError(
            f"{source}: {len(images)} {split} images but labels of shape {labels.shape}"
        )
    if labels.min() < 0:
        raise DataError(f"{source}: {split} labels include {labels.min()}; 0..K-1 expected")
    return images if images.ndim == 4 else images[..., None], labels


def checked_arrays(
    arrays: dict,
    source: str,
    name: str,
    num_classes: int | None = None,
    val_split: str | None = None,
) -> ImageArrays:
    """Checks `x_train`, `y_train`, `x_test`, `y_test` (and `x_val`, `y_val`) into an ImageArrays.

    Images: uint8, `(N, H, W)` or `(N, H, W, C)`, the same `(H, W, C)` in
    every split. Labels: integers `0..num_classes-1` (`num_classes`: the
    largest label + 1 when not given).
    """
    splits = ["train", "test"] + (["val"] if "x_val" in arrays else [])
    checked = {}
    for split in splits:
        label = val_split if split == "val" and val_split else split
        images, labels = _checked_split(source, label, arrays[f"x_{split}"], arrays[f"y_{split}"])
        checked[f"x_{split}"], checked[f"y_{split}"] = images, labels
    shapes = {split: checked[f"x_{split}"].shape[1:] for split in splits}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{split} {shape}" for split, shape in shapes.items())
        raise DataError(f"{source}: image shapes differ between splits: {described}")
    largest = max(int(checked[f"y_{split}"].max()) for split in splits)
    if num_classes is None:
        num_classes = largest + 1
    if num_classes > MAX_CLASSES:
        raise DataError(
            f"{source}: {num_classes} classes (labels up to {largest}); at most {MAX_CLASSES} "
            "work: labels must be class indices 0..K-1"
        )
    if largest >= num_classes:
        raise DataError(
            f"{source}: a label is {largest}, outside 0..{num_classes - 1} ({num_classes} classes)"
        )
    return ImageArrays(
        np.ascontiguousarray(checked["x_train"]),
        checked["y_train"].astype(np.int32),
        np.ascontiguousarray(checked["x_test"]),
        checked["y_test"].astype(np.int32),
        source=source,
        name=name,
        num_classes=num_classes,
        x_val=checked.get("x_val"),
        y_val=None if "y_val" not in checked else checked["y_val"].astype(np.int32),
        val_split=val_split if "x_val" in checked else None,
    )


# ----------------------------------------------------------------------------- TFDS


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


def _tfds_builder(name: str, data_dir: str | None):
    """TFDS's builder for `name`, its errors turned into one line each."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_datasets as tfds

    where = data_dir or "TFDS's default data dir"
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset {name!r}: not a tensorflow-datasets name (see "
            "https://www.tensorflow.org/datasets/catalog); or pass --data_dir with an npz"
        ) from None
    except Exception as error:  # TFDS raises many kinds for a damaged folder
        # TFDS prefixes its reason with the builder's arguments: keep the reason only.
        lines = str(error).strip().splitlines() or [type(error).__name__]
        reason = lines[0].split('}": ', 1)[-1][:200]
        raise DataError(
            f"{name}: its TFDS folder in {where} is damaged ({reason}); delete it and "
            f"prepare it again (`tfds build {name}`)"
        ) from None


def tfds_metadata(name: str, features) -> tuple[tuple[int, int, int], int]:
    """`(image_shape, num_classes)` from a builder's `info.features`; refuses what cannot train.

    Needs an `image` feature of one fixed uint8 shape and a `label` ClassLabel.
    """
    import tensorflow_datasets as tfds

    keys = list(features.keys())
    if "image" not in keys or "label" not in keys:
        lacking = " and ".join(k for k in ("image", "label") if k not in keys)
        raise DataError(
            f"{name} lacks the feature {lacking!r} (it has {', '.join(keys)}); only image "
            "classification sets with 'image' and 'label' features work"
        )
    image, label = features["image"], features["label"]
    if not isinstance(image, tfds.features.Image):
        raise DataError(f"{name}: its 'image' feature is a {type(image).__name__}, not an Image")
    if any(d is None for d in image.shape):
        raise DataError(
            f"{name}: images vary in size (shape {image.shape}); only data sets of fixed-size "
            "images work"
        )
    if np.dtype(image.np_dtype) != np.uint8:
        raise DataError(f"{name}: images are {np.dtype(image.np_dtype)}, only uint8 images work")
    if not isinstance(label, tfds.features.ClassLabel):
        raise DataError(
            f"{name}: its 'label' feature is {label!r}, not integer class labels (a ClassLabel)"
        )
    return tuple(int(d) for d in image.shape), int(label.num_classes)


def _tfds_prepared(builder) -> bool:
    """`builder.is_prepared()`, without its warning about a folder that does not exist."""
    return (builder.data_path / "dataset_info.json").exists() and builder.is_prepared()


def _tfds_split(builder, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    dataset = builder.as_dataset(split=split).map(lambda e: (e["image"], e["label"]))
    try:
        batches = list(tfds.as_numpy(dataset.batch(10000)))
    except tf.errors.OpError as error:
        raise DataError(f"{name}: cannot read the {split} split: {error.message}") from None
    return (
        np.concatenate([images for images, _ in batches]),
        np.concatenate([labels for _, labels in batches]),
    )


def load_tfds(name: str, data_dir: str | None, val_split: str | None = None) -> ImageArrays:
    """`name` through tensorflow-datasets, downloading it only when the network answers.

    The features are checked before any data is read, so a data set that
    cannot train is refused at once.
    """
    builder = _tfds_builder(name, data_dir)
    image_shape, num_classes = tfds_metadata(name, builder.info.features)
    if not _tfds_prepared(builder):
        if not network_available():
            where = data_dir or "TFDS's default data dir"
            raise DataError(
                f"{name} is not prepared in {where} and the network is unreachable: run "
                f"`tfds build {name}` where there is network (then copy the data dir here), "
                "or pass --data_dir with an npz of the arrays"
            )
        try:
            builder.download_and_prepare()
        except Exception as error:  # downloads fail in many ways
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise DownloadError(f"{name}: download or preparation failed: {reason}") from None
    wanted = ["train", "test"] + ([val_split] if val_split else [])
    available = list(builder.info.splits.keys())  # empty only under tfds.testing.mock_data
    missing = [split for split in wanted if available and split not in available]
    if missing:
        raise DataError(
            f"{name} has no {' and no '.join(repr(s) for s in missing)} split "
            f"(it has {', '.join(available) or 'none'})"
        )
    arrays = {}
    for key, split in (("train", "train"), ("test", "test"), ("val", val_split)):
        if split:
            arrays[f"x_{key}"], arrays[f"y_{key}"] = _tfds_split(builder, name, split)
    loaded = checked_arrays(
        arrays,
        source=f"tensorflow-datasets {name} ({builder.data_dir})",
        name=name,
        num_classes=num_classes,
        val_split=val_split,
    )
    if loaded.image_shape != image_shape:
        raise DataError(f"{name}: images are {loaded.image_shape}, its metadata says {image_shape}")
    return loaded


def _load_mnist_default(val_split: str | None) -> ImageArrays:
    """MNIST from TFDS when prepared or downloadable, else the bundled copy."""
    builder = _tfds_builder("mnist", None)
    if _tfds_prepared(builder) or network_available():
        try:
            return load_tfds("mnist", None, val_split)
        except DownloadError:
            pass  # the network answered but the download failed: the bundled copy will do
    if val_split:
        raise DataError(f"--val_split {val_split}: the bundled MNIST holds train and test only")
    return load_bundled_mnist()


# ----------------------------------------------------------------------------- spatial MNIST


def spatial_mnist(mnist: ImageArrays) -> ImageArrays:
    """MNIST with a fixed distortion per quadrant: a benchmark for location-specific kernels.

    Each 14x14 quadrant of every image is rotated in place by its own multiple
    of 90 degrees (top-left 0, top-right 90, bottom-right 180, bottom-left
    270), and the top-right and bottom-left quadrants are inverted (255 - x).
    Labels stay the digits. The distortion is the same for every image, so the
    data stay spatially consistent: at any one position, strokes always have
    the same orientation and polarity. A location-specific kernel (the soft
    weight sharing or locally connected layer) only has to learn the one
    version that occurs where it sits; a shared convolution kernel sees four
    orientations and two polarities of every stroke and must spend filters on
    each, and strokes no longer continue across quadrant borders.
    """
    if mnist.image_shape != (28, 28, 1):
        raise DataError(f"{SPATIAL_MNIST} needs 28x28 MNIST images, got {mnist.image_shape}")
    arrays = {
        key: spatial_distortion(value) if key.startswith("x") else value
        for key, value in mnist.splits().items()
    }
    return dataclasses.replace(
        mnist,
        x_train=arrays["x_train"],
        x_test=arrays["x_test"],
        x_val=None if mnist.x_val is None else arrays[f"x_{mnist.val_split}"],
        name=SPATIAL_MNIST,
        source=f"{SPATIAL_MNIST} (quadrants rotated and inverted) from {mnist.source}",
    )


def spatial_distortion(images: np.ndarray) -> np.ndarray:
    """The fixed per-quadrant rotation and inversion of `spatial_mnist`, on `(N, H, W, C)`."""
    half_h, half_w = images.shape[1] // 2, images.shape[2] // 2
    out = images.copy()
    quadrants = (
        (slice(0, half_h), slice(0, half_w), 0, False),
        (slice(0, half_h), slice(half_w, None), 1, True),
        (slice(half_h, None), slice(half_w, None), 2, False),
        (slice(half_h, None), slice(0, half_w), 3, True),
    )
    for rows, cols, turns, invert in quadrants:
        block = np.rot90(images[:, rows, cols], k=turns, axes=(1, 2))
        out[:, rows, cols] = 255 - block if invert else block
    return out


# ----------------------------------------------------------------------------- pipelines


def _as_float(images, labels):
    """float32 pixels, still 0-255: the model rescales them, so a saved model takes raw images."""
    import tensorflow as tf

    return tf.cast(images, tf.float32), labels


def train_dataset(
    arrays: ImageArrays,
    batch_size: int,
    seed: int,
    epochs: range,
    augmentation: Augmentation | None = None,
):
    """Batches of every epoch in `epochs`, each a fresh seeded permutation of the training set.

    Epoch `e` always uses the permutation drawn from `(seed, e)`, whichever
    epoch training starts at; each epoch has `ceil(N / batch_size)` batches.
    With an `augmentation`, batch `b` of epoch `e` is moved by draws from
    `(seed, e, b)`: the same, too, whichever epoch training starts at.
    """
    import tensorflow as tf

    images = tf.constant(arrays.x_train)
    labels = tf.constant(arrays.y_train)
    count = len(arrays.x_train)
    fold_in = tf.random.experimental.stateless_fold_in

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count), seed=tf.stack([tf.cast(seed, tf.int64), epoch])
        )
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return batches.map(lambda step, index: (epoch, step, index))

    def load(epoch, step, index):
        batch = _as_float(tf.gather(images, index), tf.gather(labels, index))
        if not augmentation:
            return batch
        stream = tf.constant([seed, AUGMENTATION_STREAM], tf.int64)
        return augmentation(batch[0], fold_in(fold_in(stream, epoch), step)), batch[1]

    dataset = tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(epoch_batches)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _evaluation_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return dataset.batch(batch_size).map(_as_float).cache().prefetch(tf.data.AUTOTUNE)


def test_dataset(arrays: ImageArrays, batch_size: int):
    """The test set, as float, cached and batched."""
    return _evaluation_dataset(arrays.x_test, arrays.y_test, batch_size)


def validation_dataset(arrays: ImageArrays, batch_size: int):
    """What each epoch is evaluated on: the `--val_split` split, else the test set."""
    if arrays.x_val is None:
        return test_dataset(arrays, batch_size)
    return _evaluation_dataset(arrays.x_val, arrays.y_val, batch_size)


def steps_per_epoch(arrays: ImageArrays, batch_size: int) -> int:
    return math.ceil(len(arrays.x_train) / batch_size)
