"""npz archives of x_train, y_train, x_test, y_test: a data set of one's own."""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from swsl_cli.runner.data.arrays import DataError, ImageArrays
from swsl_cli.runner.data.checks import checked_arrays
from swsl_cli.runner.data.idx import IDX_FILES

READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile)


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
                _check_member_size(archive, path, key)
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


def _check_member_size(archive, path: Path, key: str) -> None:
    """Refuses an array whose header claims more bytes than its member holds, before numpy
    allocates the claim (a damaged header of 10^9 images would ask for 784 GB)."""
    if f"{key}.npy" not in archive.zip.namelist():
        return  # not a .npy member: refused when read
    member = archive.zip.getinfo(f"{key}.npy")
    with archive.zip.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(stream)
        held = member.file_size - stream.tell()
    if dtype.hasobject:
        return  # refused when read, as Python objects
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > held:
        raise DataError(
            f"{path}: array {key} is damaged: its header claims shape {shape} of {dtype} "
            f"({claimed:,} bytes) but the archive holds {held:,} bytes of it"
        )


def _num_classes_scalar(path: Path, value: np.ndarray | None) -> int | None:
    if value is None:
        return None
    if value.shape != () or value.dtype.kind not in "iu" or int(value) < 1:
        raise DataError(
            f"{path}: num_classes must be a positive integer scalar, got {value!r} ({value.dtype})"
        )
    return int(value)
