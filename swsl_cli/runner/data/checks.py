"""What every source's arrays are checked for before they train: dtype, shape, labels."""

from __future__ import annotations

import numpy as np

from swsl_cli.runner.data.arrays import DataError, ImageArrays

MAX_CLASSES = 65536  # beyond this the labels are surely not class indices (and Dense would OOM)
# The network pools twice by 2x2: smaller images leave no pixel for the second pool.
MIN_IMAGE_SIDE = 4


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
    if len(images) == 0:
        raise DataError(f"{source}: the {split} split is empty")
    height, width = images.shape[1:3]
    channels = images.shape[3] if images.ndim == 4 else 1
    if min(height, width) < MIN_IMAGE_SIDE or channels == 0:
        raise DataError(
            f"{source}: {split} images are {height}x{width} pixels with {channels} channel(s); "
            f"the network pools twice by 2x2, so they must be at least {MIN_IMAGE_SIDE}x"
            f"{MIN_IMAGE_SIDE} with at least one channel"
        )
    if images.dtype != np.uint8:
        raise DataError(
            f"{source}: {split} images are {images.dtype}, not uint8; {_image_dtype_hint(images)}"
        )
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
