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
fixed distortion per image quadrant (see `spatial_mnist`). A TFDS set's labels
may come from another feature than `label` (`--label_key`), and any source's
images may be cropped and resized (`CropResize`, `--center_crop`, `--image_size`).
"""

from __future__ import annotations

import stat
from pathlib import Path

from swsl_cli.runner.data.arrays import DataError, DownloadError, ImageArrays, Limits
from swsl_cli.runner.data.checks import MAX_CLASSES, checked_arrays
from swsl_cli.runner.data.crop import NO_CROP, CropResize
from swsl_cli.runner.data.idx import (
    BUNDLED_MNIST,
    IDX_FILES,
    IMAGE_MAGIC,
    LABEL_MAGIC,
    idx_path,
    load_bundled_mnist,
    load_idx_folder,
    read_idx,
)
from swsl_cli.runner.data.npz import load_npz
from swsl_cli.runner.data.pipelines import (
    AUGMENTATION_STREAM,
    steps_per_epoch,
    test_dataset,
    train_dataset,
    validation_dataset,
)
from swsl_cli.runner.data.spatial import SPATIAL_MNIST, spatial_distortion, spatial_mnist
from swsl_cli.runner.data.tfds_sets import (
    DEFAULT_LABEL_KEY,
    OFFLINE_ENV,
    check_dataset_name,
    feature_paths,
    load_mnist_default,
    load_tfds,
    network_available,
    refuse_label_key,
    tfds_metadata,
)

__all__ = [
    "AUGMENTATION_STREAM",
    "BUNDLED_MNIST",
    "CropResize",
    "DEFAULT_LABEL_KEY",
    "DataError",
    "DownloadError",
    "IDX_FILES",
    "IMAGE_MAGIC",
    "ImageArrays",
    "LABEL_MAGIC",
    "MAX_CLASSES",
    "OFFLINE_ENV",
    "SPATIAL_MNIST",
    "check_data_dir",
    "checked_arrays",
    "feature_paths",
    "load_bundled_mnist",
    "load_dataset",
    "load_idx_folder",
    "load_mnist",
    "load_npz",
    "load_tfds",
    "network_available",
    "read_idx",
    "spatial_distortion",
    "spatial_mnist",
    "steps_per_epoch",
    "test_dataset",
    "tfds_metadata",
    "train_dataset",
    "validation_dataset",
]


def load_dataset(
    name: str = "mnist",
    data_dir: str | None = None,
    val_split: str | None = None,
    label_key: str = DEFAULT_LABEL_KEY,
    crop: CropResize = NO_CROP,
    limits: Limits = (None, None),
) -> ImageArrays:
    """The data set `name` (a TFDS name or `spatial_mnist`), from `data_dir` when given.

    `data_dir` may be an npz file, a folder with the four IDX files, a folder
    holding `<name>.npz`, or a TFDS data dir. `val_split` names a further
    split to evaluate on each epoch (TFDS: e.g. `validation`; npz: the arrays
    `x_<val_split>` and `y_<val_split>`). `label_key` names the TFDS feature
    that holds the class (`attributes/Male`); other sources refuse any but
    `label`. `crop` crops and resizes every image. `limits` keeps the first
    `(max_train, max_test)` examples (test and validation); arrays read whole
    are shortened before `crop`, so it resizes only the images kept (a TFDS
    set is cropped as it is read, then shortened).
    """
    check_dataset_name(name)
    if val_split in ("train", "test"):
        raise DataError(
            f"--val_split {val_split}: name a third split (e.g. validation); each epoch is "
            "evaluated on the test split when --val_split is not given"
        )
    if name == SPATIAL_MNIST:
        refuse_label_key(label_key, SPATIAL_MNIST)
        return crop.on(spatial_mnist(load_dataset("mnist", data_dir, val_split)).limited(*limits))
    if data_dir is not None:
        return _load_data_dir(name, data_dir, val_split, label_key, crop, limits)
    if name == "mnist":
        return load_mnist_default(val_split, label_key, crop, limits)
    return load_tfds(name, None, val_split, label_key, crop).limited(*limits)


def load_mnist(data_dir: str | None) -> ImageArrays:
    """MNIST in the order `--dataset mnist` looks for it."""
    return load_dataset("mnist", data_dir)


def check_data_dir(data_dir: str | None) -> None:
    """Refuses a `--data_dir` that cannot hold data (missing, a device, a pipe); no TensorFlow,
    so the CLI says so before TensorFlow loads."""
    if data_dir is None:
        return
    path = Path(data_dir).expanduser()
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise DataError(
            f"--data_dir {data_dir} is a {_file_kind(path)}, not a regular file or a folder: "
            "give an npz file or a folder"
        )
    if not path.exists():
        raise DataError(f"--data_dir {data_dir} does not exist")


def _load_data_dir(
    name: str,
    data_dir: str,
    val_split: str | None,
    label_key: str,
    crop: CropResize,
    limits: Limits,
) -> ImageArrays:
    check_data_dir(data_dir)
    path = Path(data_dir).expanduser()
    if path.is_file():
        refuse_label_key(label_key, f"the npz {data_dir}")
        return crop.on(load_npz(path, val_split).limited(*limits))
    if any(idx_path(path, stem) for stem in IDX_FILES.values()):
        if val_split:
            raise DataError(
                f"--val_split {val_split}: the IDX files in {path} hold train and test only"
            )
        refuse_label_key(label_key, f"the IDX files in {path}")
        return crop.on(load_idx_folder(path, name=name).limited(*limits))
    npz = path / f"{name.replace('/', '_')}.npz"
    if npz.is_file():
        refuse_label_key(label_key, f"the npz {npz}")
        return crop.on(load_npz(npz, val_split, name=name).limited(*limits))
    if (path / name.split("/")[0]).is_dir():
        return load_tfds(name, str(path), val_split, label_key, crop).limited(*limits)
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
