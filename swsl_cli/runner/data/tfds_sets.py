"""Data sets of tensorflow-datasets, downloaded only when the network answers."""

from __future__ import annotations

import os
import re
import socket
import threading

import numpy as np

from swsl_cli.runner.data.arrays import DataError, DownloadError, ImageArrays, Limits
from swsl_cli.runner.data.checks import checked_arrays
from swsl_cli.runner.data.crop import NO_CROP, CropResize
from swsl_cli.runner.data.idx import load_bundled_mnist

TFDS_HOST = ("storage.googleapis.com", 443)  # where TFDS downloads MNIST from
NETWORK_PROBE_SECONDS = 5.0
OFFLINE_ENV = "SWSL_OFFLINE"
DEFAULT_LABEL_KEY = "label"
LISTED_FEATURES = 12  # feature names listed in a refusal at most
# TFDS's grammar: [namespace:]name[/config][:version], names in snake case.
_NAME = r"[a-z][a-z0-9_]*"
DATASET_NAME = re.compile(
    rf"(?:{_NAME}:)?{_NAME}(?:/[A-Za-z0-9_.+-]+)?(?::\d+(?:\.(?:\d+|\*)){{0,2}})?"
)


def check_dataset_name(name: str) -> None:
    """Refuses a `--dataset` that cannot be a tensorflow-datasets name (`../x`, `mnist[:10]`)
    before it reaches TFDS, or a path."""
    if not DATASET_NAME.fullmatch(name):
        raise DataError(
            f"--dataset {name!r} is not a data set name: tensorflow-datasets names are "
            "lowercase letters, digits and '_', optionally /CONFIG and :VERSION (fashion_mnist, "
            "emnist/letters, cifar10:3.0.2); for your own data pass --data_dir FILE.npz"
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


def feature_paths(features, prefix: str = "") -> list[str]:
    """Every leaf feature's path in a (nested) `FeaturesDict`: `image`, `attributes/Male`, ..."""
    import tensorflow_datasets as tfds

    paths = []
    for key in features.keys():
        feature = features[key]
        if isinstance(feature, tfds.features.FeaturesDict):
            paths += feature_paths(feature, f"{prefix}{key}/")
        else:
            paths.append(f"{prefix}{key}")
    return paths


def _feature_at(features, path: str):
    """The feature at `path` (`a/b` for nested ones), or None when there is none."""
    import tensorflow_datasets as tfds

    feature = features
    for part in path.split("/"):
        if not isinstance(feature, tfds.features.FeaturesDict) or part not in feature.keys():
            return None
        feature = feature[part]
    return feature


def _class_count(name: str, label_key: str, label) -> int | None:
    """The classes a label feature names: a ClassLabel's count, 2 for a boolean, None for an
    integer scalar (then the largest label + 1); refuses any other feature."""
    import tensorflow_datasets as tfds

    if isinstance(label, tfds.features.ClassLabel):
        return int(label.num_classes)
    if isinstance(label, tfds.features.Tensor) and tuple(label.shape) == ():
        kind = np.dtype(label.np_dtype).kind
        if kind == "b":
            return 2
        if kind in "iu":
            return None
    raise DataError(
        f"{name}: its {label_key!r} feature is {label!r}, not integer class labels (a "
        "ClassLabel, or one boolean or integer per example)"
    )


def tfds_metadata(
    name: str, features, label_key: str = DEFAULT_LABEL_KEY
) -> tuple[tuple[int, int, int], int | None]:
    """`(image_shape, num_classes)` from a builder's `info.features`; refuses what cannot train.

    Needs an `image` feature of one fixed uint8 shape and class labels in the
    feature `label_key` (`a/b` for a nested one): a ClassLabel, a boolean
    (classes 0 and 1) or an integer (`num_classes` None: the largest label + 1).
    """
    import tensorflow_datasets as tfds

    keys = list(features.keys())
    label = _feature_at(features, label_key)
    if label_key == DEFAULT_LABEL_KEY and ("image" not in keys or label is None):
        lacking = " and ".join(k for k in ("image", "label") if k not in keys)
        raise DataError(
            f"{name} lacks the feature {lacking!r} (it has {', '.join(keys)}); only image "
            "classification sets with 'image' and 'label' features work, or name the label "
            "with --label_key"
        )
    if "image" not in keys:
        raise DataError(f"{name} lacks the feature 'image' (it has {', '.join(keys)})")
    if label is None:
        paths = [path for path in feature_paths(features) if path != "image"]
        listed = ", ".join(paths[:LISTED_FEATURES]) + (
            ", ..." if len(paths) > LISTED_FEATURES else ""
        )
        raise DataError(
            f"--label_key {label_key}: {name} has no such feature (it has {listed}); nested "
            "features are named with '/', e.g. attributes/Male"
        )
    image = features["image"]
    if not isinstance(image, tfds.features.Image):
        raise DataError(f"{name}: its 'image' feature is a {type(image).__name__}, not an Image")
    if any(d is None for d in image.shape):
        raise DataError(
            f"{name}: images vary in size (shape {image.shape}); only data sets of fixed-size "
            "images work"
        )
    if np.dtype(image.np_dtype) != np.uint8:
        raise DataError(f"{name}: images are {np.dtype(image.np_dtype)}, only uint8 images work")
    return tuple(int(d) for d in image.shape), _class_count(name, label_key, label)


def _tfds_prepared(builder) -> bool:
    """`builder.is_prepared()`, without its warning about a folder that does not exist."""
    return (builder.data_path / "dataset_info.json").exists() and builder.is_prepared()


def _tfds_split(
    builder, name: str, split: str, label_key: str, crop: CropResize
) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def image_and_label(example):
        label = example
        for part in label_key.split("/"):
            label = label[part]
        if label.dtype == tf.bool:
            label = tf.cast(label, tf.int32)
        # Cropped and resized one by one as read: CelebA's full-size images would not fit.
        image = crop.tensor(example["image"]) if crop.active else example["image"]
        return image, label

    dataset = builder.as_dataset(split=split).map(image_and_label)
    try:
        batches = list(tfds.as_numpy(dataset.batch(10000)))
    except tf.errors.OpError as error:
        raise DataError(f"{name}: cannot read the {split} split: {error.message}") from None
    return (
        np.concatenate([images for images, _ in batches]),
        np.concatenate([labels for _, labels in batches]),
    )


def load_tfds(
    name: str,
    data_dir: str | None,
    val_split: str | None = None,
    label_key: str = DEFAULT_LABEL_KEY,
    crop: CropResize = NO_CROP,
) -> ImageArrays:
    """`name` through tensorflow-datasets, downloading it only when the network answers.

    The features are checked before any data is read, so a data set that
    cannot train is refused at once. The labels are the feature `label_key`;
    `crop` crops and resizes each image as it is read.
    """
    builder = _tfds_builder(name, data_dir)
    image_shape, num_classes = tfds_metadata(name, builder.info.features, label_key)
    image_shape = crop.output_shape(image_shape)
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
            arrays[f"x_{key}"], arrays[f"y_{key}"] = _tfds_split(
                builder, name, split, label_key, crop
            )
    labels = "" if label_key == DEFAULT_LABEL_KEY else f", labels {label_key}"
    loaded = checked_arrays(
        arrays,
        source=f"tensorflow-datasets {name} ({builder.data_dir}){labels}{crop.describe()}",
        name=name,
        num_classes=num_classes,
        val_split=val_split,
    )
    if loaded.image_shape != image_shape:
        raise DataError(f"{name}: images are {loaded.image_shape}, its metadata says {image_shape}")
    return loaded


def refuse_label_key(label_key: str, source: str) -> None:
    """Refuses a `--label_key` other than `label` for a source whose labels have no names."""
    if label_key != DEFAULT_LABEL_KEY:
        raise DataError(
            f"--label_key {label_key}: {source} holds one label per image, not named features; "
            "--label_key applies to tensorflow-datasets sets"
        )


def load_mnist_default(
    val_split: str | None,
    label_key: str = DEFAULT_LABEL_KEY,
    crop: CropResize = NO_CROP,
    limits: Limits = (None, None),
) -> ImageArrays:
    """MNIST from TFDS when prepared or downloadable, else the bundled copy (`load_dataset`)."""
    builder = _tfds_builder("mnist", None)
    if _tfds_prepared(builder) or network_available():
        try:
            return load_tfds("mnist", None, val_split, label_key, crop).limited(*limits)
        except DownloadError:
            pass  # the network answered but the download failed: the bundled copy will do
    if val_split:
        raise DataError(f"--val_split {val_split}: the bundled MNIST holds train and test only")
    refuse_label_key(label_key, "the bundled MNIST")
    return crop.on(load_bundled_mnist().limited(*limits))
