"""Loading data from IDX files, npz archives, (mocked and tiny real) TFDS and the bundled MNIST;
every refusal; the spatial benchmark; the tf.data pipelines."""

import gzip
import io
import json
import logging
import os
import pickle
import re
import time
import zipfile

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from swsl_cli.runner import data, train
from swsl_cli.runner.config import Config
from tests.conftest import write_idx


class TinyTrainOnly(tfds.core.GeneratorBasedBuilder):
    """A real (prepared on disk) TFDS data set of 6 images that lacks a `test` split."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "validation": self._generate_examples(3)}

    def _generate_examples(self, count):
        for index in range(count):
            image = np.full((8, 8, 1), index * 10, np.uint8)
            yield index, {"image": image, "label": index % 3}


@pytest.fixture
def mocked_tfds(monkeypatch):
    """TFDS's mocked data, reached as if online: `with mocked_tfds(num_examples=12): ...`."""
    monkeypatch.setattr(data.tfds_sets, "network_available", lambda *a, **k: True)
    return tfds.testing.mock_data


def load(source, name="mnist", val_split=None):
    return data.load_dataset(name, str(source), val_split)


def save_npz(path, **arrays):
    rng = np.random.default_rng(1)
    splits = {
        "x_train": rng.integers(0, 256, (12, 20, 24), dtype=np.uint8),
        "y_train": rng.integers(0, 4, 12),
        "x_test": rng.integers(0, 256, (5, 20, 24), dtype=np.uint8),
        "y_test": rng.integers(0, 4, 5),
    }
    splits.update(arrays)
    np.savez(path, **{k: v for k, v in splits.items() if v is not None})
    return path


# ----------------------------------------------------------------------------- IDX, npz


def test_real_mnist_idx_files(mnist_dir):
    arrays = load(mnist_dir)
    assert arrays.x_train.shape == (60000, 28, 28, 1) and arrays.x_test.shape == (10000, 28, 28, 1)
    assert arrays.x_train.dtype == np.uint8 and arrays.y_train.dtype == np.int32
    assert (arrays.image_shape, arrays.num_classes, arrays.name) == ((28, 28, 1), 10, "mnist")
    assert sorted(np.unique(arrays.y_test)) == list(range(10))
    assert arrays.y_train[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's well-known first labels


def test_uncompressed_idx_and_limits(small_idx_dir, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in small_idx_dir.iterdir():
        (plain / path.name[:-3]).write_bytes(gzip.decompress(path.read_bytes()))
    gz, raw = load(small_idx_dir), load(plain)
    np.testing.assert_array_equal(gz.x_train, raw.x_train)
    limited = raw.limited(10, 5)
    assert len(limited.x_train) == 10 and len(limited.y_test) == 5


def test_npz_round_trip(small_idx_dir, tmp_path):
    arrays = load(small_idx_dir)
    path = arrays.save_npz(tmp_path / "mnist.npz")
    for source in (path, tmp_path):  # the file, or a folder holding <dataset>.npz
        loaded = load(source)
        np.testing.assert_array_equal(loaded.x_test, arrays.x_test)
        assert loaded.fingerprint() == arrays.fingerprint()


def test_npz_of_other_shapes_channels_and_classes(tmp_path):
    rng = np.random.default_rng(2)
    colour = save_npz(
        tmp_path / "faces.npz",
        x_train=rng.integers(0, 256, (7, 32, 30, 3), dtype=np.uint8),
        y_train=rng.integers(0, 5, (7, 1)),  # Keras' CIFAR labels are (N, 1)
        x_test=rng.integers(0, 256, (4, 32, 30, 3), dtype=np.uint8),
        y_test=np.array([0, 1, 2, 3], np.uint8),
        x_val=rng.integers(0, 256, (3, 32, 30, 3), dtype=np.uint8),
        y_val=np.array([4, 0, 1]),
        num_classes=np.array(6),
    )
    arrays = load(colour, val_split="val")
    assert arrays.x_train.shape == (7, 32, 30, 3) and arrays.y_train.shape == (7,)
    assert (arrays.image_shape, arrays.num_classes, arrays.name) == ((32, 30, 3), 6, "faces")
    assert arrays.x_val.shape == (3, 32, 30, 3) and arrays.y_val.tolist() == [4, 0, 1]
    assert arrays.source == f"npz {colour}"
    grey = load(save_npz(tmp_path / "grey.npz"))
    assert grey.x_train.shape == (12, 20, 24, 1) and grey.num_classes == 4  # largest label + 1


def test_validation_split_feeds_the_per_epoch_evaluation(tmp_path):
    path = save_npz(
        tmp_path / "a.npz", x_dev=np.full((3, 20, 24), 255, np.uint8), y_dev=np.array([1, 2, 3])
    )
    arrays = load(path, val_split="dev")
    batches = list(data.validation_dataset(arrays, 2).as_numpy_iterator())
    assert np.concatenate([b[1] for b in batches]).tolist() == [1, 2, 3]
    assert all(np.all(b[0] == 255.0) for b in batches)  # raw pixels: the model rescales
    plain = load(path)
    test_labels = np.concatenate([b[1] for b in data.validation_dataset(plain, 8)])
    assert test_labels.tolist() == plain.y_test.tolist()  # no --val_split: the test set
    with pytest.raises(data.DataError, match="lacks the arrays x_holdout, y_holdout"):
        load(path, val_split="holdout")
    for split in ("train", "test"):
        with pytest.raises(data.DataError, match=f"--val_split {split}: name a third split"):
            load(path, val_split=split)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x_train=np.zeros((12, 20), np.uint8)), r"shape \(12, 20\), expected \(N, H, W\)"),
        (dict(x_test=np.zeros((5, 1, 20, 24, 1), np.uint8)), "test images have shape"),
        (dict(x_test=np.zeros((5, 24, 20), np.uint8)), "image shapes differ between splits"),
        (
            dict(x_train=np.random.default_rng(0).random((12, 20, 24))),
            r"float64, not uint8; values in \[.*\] look scaled to \[0, 1\]: multiply by 255",
        ),
        (dict(x_train=np.full((12, 20, 24), 7)), r"int64, not uint8; cast them with .astype"),
        (dict(x_train=np.full((12, 20, 24), 300.0)), "rescale to 0-255"),
        (dict(y_train=np.array(["cat"] * 12)), r"train labels are strings \(<U3\)"),
        (dict(y_test=np.full(5, 1.0)), r"test labels are floats \(float64\)"),
        (dict(y_test=np.array([0, 1, -1, 2, 3])), "test labels include -1"),
        (dict(num_classes=np.array(3)), r"outside 0..2 \(3 classes\)"),
        (dict(num_classes=np.array(2.5)), "num_classes must be a positive integer scalar"),
        (
            dict(x_test=np.zeros((0, 20, 24), np.uint8), y_test=np.zeros(0, int)),
            "test split is empty",
        ),
        (dict(y_train=np.zeros(11, int)), r"12 train images but labels of shape \(11,\)"),
        (dict(y_test=None), "lacks the arrays y_test"),
        (dict(y_test=np.array([0, 1, 2, 3, 70000])), "70001 classes .* at most 65536"),
        (
            dict(x_train=np.zeros((12, 3, 3), np.uint8), x_test=np.zeros((5, 3, 3), np.uint8)),
            r"train images are 3x3 pixels with 1 channel\(s\); the network pools twice",
        ),
        (
            dict(x_train=np.zeros((12, 0, 24), np.uint8), x_test=np.zeros((5, 0, 24), np.uint8)),
            "train images are 0x24 pixels",
        ),
        (dict(x_train=np.zeros((12, 20, 24, 0), np.uint8)), "with 0 channel"),
    ],
    ids=[
        "ndim-2",
        "ndim-5",
        "shape-mismatch",
        "float-0-1",
        "int64",
        "float-255",
        "string-labels",
        "float-labels",
        "negative-label",
        "label-out-of-range",
        "bad-num-classes",
        "empty-split",
        "count-mismatch",
        "missing-array",
        "huge-label",
        "3x3-images",
        "zero-height",
        "zero-channels",
    ],
)
def test_npz_refusals(tmp_path, arrays, message):
    with pytest.raises(data.DataError, match=message) as error:
        load(save_npz(tmp_path / "bad.npz", **arrays))
    assert "\n" not in str(error.value)


def test_npz_with_objects_text_or_pickle_never_mentions_allow_pickle(tmp_path):
    objects = save_npz(tmp_path / "objects.npz", y_train=np.array([1, "a"] * 6, dtype=object))
    text = tmp_path / "text.npz"
    text.write_text("x_train,y_train\n1,2\n")
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"x_train": [1, 2]}))
    single = tmp_path / "single.npz"
    with open(single, "wb") as stream:
        np.save(stream, np.zeros(3))
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    raw_member = save_npz(tmp_path / "raw.npz")
    with zipfile.ZipFile(raw_member, "a") as archive:
        archive.writestr("x_val", "not an array")
        archive.writestr("y_val.npy", "nor this")
    gz = tmp_path / "images.gz"
    gz.write_bytes(gzip.compress(b"idx"))
    for path, message in (
        (objects, "array y_train holds Python objects"),
        (text, r"not an npz archive \(it is a text file\)"),
        (pickled, r"not an npz archive \(it is a Python pickle\)"),
        (single, r"a single .npy array"),
        (empty, r"it is empty"),
        (raw_member, "member x_val is not a .npy array"),
        (gz, "gzip-compressed; for IDX files give their folder"),
    ):
        with pytest.raises(data.DataError, match=message) as error:
            load(path, val_split="val" if path == raw_member else None)
        assert "allow_pickle" not in str(error.value)


def test_broken_npz(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(data.DataError, match="not a readable npz archive"):
        load(tmp_path / "broken.npz")


def test_npz_header_claiming_more_than_the_archive_holds_is_damaged_not_out_of_memory(tmp_path):
    path = save_npz(tmp_path / "huge.npz")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 20, 24)}
    )
    with zipfile.ZipFile(path, "a") as archive:  # a second x_train.npy: numpy reads the last
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("x_train.npy", header.getvalue() + b"\0" * 1000)
    with pytest.raises(data.DataError) as error:
        load(path)
    assert str(error.value) == (
        f"{path}: array x_train is damaged: its header claims shape (1000000000, 20, 24) of "
        "uint8 (480,000,000,000 bytes) but the archive holds 1,000 bytes of it"
    )


def test_idx_header_whose_sizes_overflow_int64_is_refused(small_idx_dir):
    (small_idx_dir / "train-images-idx3-ubyte.gz").unlink()
    header = b"".join(n.to_bytes(4, "big") for n in (2051, 65536, 2**24, 2**24))
    (small_idx_dir / "train-images-idx3-ubyte").write_bytes(header)  # 2^64 bytes: 0 in int64
    with pytest.raises(data.DataError, match=r"truncated or padded: 16 bytes, header says "):
        load(small_idx_dir)


@pytest.mark.parametrize("name", ["../../etc", "mnist[:10]", "MNIST", "mnist/", "a b", ""])
def test_a_malformed_dataset_name_is_refused_before_tfds(tmp_path, name):
    with pytest.raises(data.DataError, match=f"--dataset {re.escape(repr(name))} is not a data"):
        data.load_dataset(name, str(tmp_path))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: (d / "train-images-idx3-ubyte.gz").unlink(),
            "lacks MNIST IDX files: train-images-idx3-ubyte",
        ),
        (
            lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(
                gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20)
            ),
            "magic number 2051, expected 2049",
        ),
        (
            lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(
                gzip.compress(
                    gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())[:-100]
                )
            ),
            "truncated",
        ),
        (
            lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all"),
            "cannot read",
        ),
        (
            lambda d: (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00")),
            "not even an IDX header",
        ),
        (
            lambda d: write_idx(d / "train-labels-idx1-ubyte", np.zeros(39), 2049),
            "40 train images but labels of shape",
        ),
    ],
    ids=["missing", "wrong-magic", "truncated", "not-gzip", "header-cut", "count-mismatch"],
)
def test_damaged_idx_files_are_clear_errors(small_idx_dir, damage, message):
    damage(small_idx_dir)
    with pytest.raises(data.DataError, match=message):
        load(small_idx_dir)


def test_deflate_corrupt_gz_is_one_line(small_idx_dir):
    path = small_idx_dir / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[20:60] = bytes(range(200, 240))  # inside the deflate stream, after the gzip header
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=f"cannot read {path}") as error:
        load(small_idx_dir)
    assert "\n" not in str(error.value)


def test_missing_empty_unrelated_and_special_data_dirs(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(data.DataError, match="is empty"):
        load(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(data.DataError, match="holds neither IDX files, mnist.npz nor a TFDS"):
        load(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, kind in ((os.devnull, "character device"), (fifo, "named pipe")):
        with pytest.raises(data.DataError, match=f"is a {kind}, not a regular file") as error:
            load(path)
        assert "does not exist" not in str(error.value)


def test_fingerprint_is_stable_and_tracks_every_change(tmp_path):
    path = save_npz(tmp_path / "a.npz")
    first, again = load(path), load(path)
    assert first.fingerprint() == again.fingerprint()
    assert len(first.fingerprint()) == 16
    changed = first.x_test.copy()
    changed[4, 19, 23, 0] ^= 1
    variants = [
        save_npz(tmp_path / "pixel.npz", x_test=changed[..., 0]),
        save_npz(tmp_path / "label.npz", y_train=np.r_[first.y_train[:-1], 3 - first.y_train[-1]]),
        save_npz(tmp_path / "classes.npz", num_classes=np.array(9)),
    ]
    prints = {first.fingerprint()} | {load(v).fingerprint() for v in variants}
    prints.add(first.limited(11, None).fingerprint())
    assert len(prints) == 5


# ----------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize(
    "name, val_split, shape, classes",
    [
        ("fashion_mnist", None, (28, 28, 1), 10),
        ("cifar10", None, (32, 32, 3), 10),
        ("svhn_cropped", "extra", (32, 32, 3), 10),
        ("cifar100", None, (32, 32, 3), 100),
    ],
)
def test_mocked_tfds_sets(name, val_split, shape, classes, mocked_tfds):
    with mocked_tfds(num_examples=12):
        arrays = data.load_dataset(name, None, val_split)
    assert arrays.x_train.shape == (12, *shape) and arrays.x_test.shape == (12, *shape)
    assert arrays.x_train.dtype == np.uint8
    assert (arrays.image_shape, arrays.num_classes, arrays.name) == (shape, classes, name)
    assert 0 <= arrays.y_train.min() and arrays.y_train.max() < classes
    assert arrays.source.startswith(f"tensorflow-datasets {name} (")
    assert (arrays.x_val is not None) == (val_split is not None)


def mocked_celeb_a_split(split):
    """The images and `attributes/Male` of mocked celeb_a's `split`, read straight from TFDS."""
    examples = list(tfds.as_numpy(tfds.builder("celeb_a").as_dataset(split=split)))
    images = np.stack([e["image"] for e in examples])
    return images, np.array([e["attributes"]["Male"] for e in examples])


def test_label_key_reads_a_nested_boolean_feature_and_crops_as_lrlcs_celeba(mocked_tfds):
    crop = data.CropResize(size=32, crop=0.775)
    with mocked_tfds(num_examples=12):
        arrays = data.load_dataset("celeb_a", None, "validation", "attributes/Male", crop)
        images, male = mocked_celeb_a_split("train")
    assert images.shape == (12, 218, 178, 3)
    assert arrays.x_train.shape == (12, 32, 32, 3) and arrays.x_val.shape == (12, 32, 32, 3)
    assert arrays.x_train.dtype == np.uint8 and arrays.num_classes == 2
    np.testing.assert_array_equal(arrays.y_train, male.astype(np.int32))  # True is class 1
    assert crop.crop_box(218, 178) == (40, 20, 138)  # LRLC's crop: rows 40-177, cols 20-157
    expected = data.CropResize(size=32).arrays(images[:, 40:178, 20:158])
    np.testing.assert_array_equal(arrays.x_train, expected)
    assert arrays.source.endswith(
        ", labels attributes/Male, centre crop 0.775, resized to 32x32 (bicubic)"
    )


def test_an_unknown_label_key_lists_the_features_there_are(mocked_tfds):
    with mocked_tfds(num_examples=4):
        with pytest.raises(data.DataError) as error:
            data.load_dataset("celeb_a", None, None, "attributes/male")
    message = str(error.value)
    assert message.startswith("--label_key attributes/male: celeb_a has no such feature (it has")
    assert "attributes/Male" in message and message.count(",") < 20 and "\n" not in message


@pytest.mark.parametrize(
    "source, what",
    [("npz", "the npz"), ("idx", "the IDX files in"), ("spatial", "spatial_mnist")],
)
def test_label_key_is_refused_where_labels_have_no_names(tmp_path, small_idx_dir, source, what):
    where = {"npz": save_npz(tmp_path / "a.npz"), "idx": small_idx_dir, "spatial": small_idx_dir}
    name = "spatial_mnist" if source == "spatial" else "mnist"
    with pytest.raises(data.DataError, match=f"--label_key attributes/Male: {what}"):
        data.load_dataset(name, str(where[source]), None, "attributes/Male")


def test_crop_and_resize_of_arrays_from_any_source(tmp_path):
    rng = np.random.default_rng(3)
    x_train = rng.integers(0, 256, (5, 20, 24, 3), dtype=np.uint8)
    path = save_npz(
        tmp_path / "a.npz", x_train=x_train, y_train=np.arange(5), x_test=x_train[:2], y_test=[0, 1]
    )
    cropped = data.load_dataset("a", str(path), crop=data.CropResize(crop=0.5))
    np.testing.assert_array_equal(cropped.x_train, x_train[:, 5:15, 7:17])  # centred 10x10
    assert cropped.source.endswith(", centre crop 0.5")
    resized = data.load_dataset("a", str(path), crop=data.CropResize(size=8))
    assert resized.x_train.shape == (5, 8, 8, 3) and resized.x_test.shape == (2, 8, 8, 3)
    assert resized.source.endswith(", centre crop square, resized to 8x8 (bicubic)")
    flat = data.CropResize(size=6).arrays(np.full((2, 9, 12, 1), 77, np.uint8))
    np.testing.assert_array_equal(flat, np.full((2, 6, 6, 1), 77, np.uint8))
    grey = data.load_dataset("a", str(save_npz(tmp_path / "b.npz")), crop=data.CropResize(size=32))
    assert grey.image_shape == (32, 32, 1)  # enlarging works too
    assert data.CropResize().on(grey) is grey


def test_limits_apply_before_the_resize_and_keep_copies_not_views(small_idx_dir, monkeypatch):
    crop = data.CropResize(size=12)
    whole = data.load_dataset("mnist", str(small_idx_dir), crop=crop).limited(7, 3)
    resized = []
    arrays_of = data.CropResize.arrays
    monkeypatch.setattr(
        data.CropResize, "arrays", lambda self, x: resized.append(len(x)) or arrays_of(self, x)
    )
    limited = data.load_dataset("mnist", str(small_idx_dir), crop=crop, limits=(7, 3))
    assert resized == [7, 3]  # of the 40 train and 20 test images, only those kept
    assert whole.fingerprint() == limited.fingerprint()
    raw = load(small_idx_dir)
    short = raw.limited(7, None)
    assert short.x_train.base is None and short.y_train.base is None  # copies, not views
    assert short.x_test is raw.x_test  # a split kept whole is not copied
    empty = data.load_dataset("mnist", str(small_idx_dir), crop=crop, limits=(0, 0))
    assert empty.x_train.shape == (0, 12, 12, 1) and empty.x_test.shape == (0, 12, 12, 1)


def test_offline_without_prepared_tfds_fails_fast_naming_the_fix(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DataError, match="--data_dir") as error:
        data.load_tfds("cifar10", str(tmp_path / "tfds"))
    assert "tfds build cifar10" in str(error.value) and "network is unreachable" in str(error.value)
    assert time.monotonic() - start < 10


def test_real_tfds_folder_missing_split_and_broken_info(tmp_path):
    TinyTrainOnly(data_dir=str(tmp_path)).download_and_prepare()
    with pytest.raises(data.DataError, match=r"tiny_train_only has no 'test' split \(it has"):
        load(tmp_path, "tiny_train_only")
    with pytest.raises(data.DataError, match="has no 'test' and no 'holdout' split"):
        load(tmp_path, "tiny_train_only", val_split="holdout")
    info = next(tmp_path.glob("tiny_train_only/*/dataset_info.json"))
    info.write_text('{"name": "tiny_train_only", broken')
    with pytest.raises(data.DataError, match="TFDS folder in .* is damaged") as error:
        load(tmp_path, "tiny_train_only")
    assert "\n" not in str(error.value)


def test_unknown_dataset_name():
    with pytest.raises(data.DataError, match="unknown dataset 'no_such_set'"):
        data.load_dataset("no_such_set")


@pytest.mark.parametrize(
    "features, message",
    [
        (
            {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(num_classes=2),
            },
            r"images vary in size \(shape \(None, None, 3\)\)",
        ),
        (
            {
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.Tensor(shape=(), dtype=np.float32),
            },
            "not integer class labels",
        ),
        ({"image": tfds.features.Image(shape=(8, 8, 1))}, "lacks the feature 'label'"),
        (
            {
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.Tensor(shape=(3,), dtype=np.int64),
            },
            "not integer class labels",
        ),
        (
            {
                "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint16),
                "label": tfds.features.ClassLabel(num_classes=2),
            },
            "images are uint16",
        ),
    ],
    ids=["varying-size", "float-label", "no-label", "vector-label", "uint16"],
)
def test_tfds_metadata_refusals(features, message):
    with pytest.raises(data.DataError, match=f"some_set: .*{message}|some_set {message}"):
        data.tfds_metadata("some_set", tfds.features.FeaturesDict(features))


def test_tfds_metadata_of_boolean_and_integer_labels():
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "flags": {"smiling": tfds.features.Tensor(shape=(), dtype=np.bool_)},
            "count": tfds.features.Tensor(shape=(), dtype=np.int64),
        }
    )
    assert data.tfds_metadata("s", features, "flags/smiling") == ((8, 8, 3), 2)
    assert data.tfds_metadata("s", features, "count") == ((8, 8, 3), None)  # largest + 1
    assert data.feature_paths(features) == ["image", "flags/smiling", "count"]
    with pytest.raises(data.DataError, match="lacks the feature 'label'.*--label_key"):
        data.tfds_metadata("s", features)


def test_bundled_mnist_when_nothing_else_is_there_and_no_tfds_warning(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "no-tfds-here"))
    with caplog.at_level(logging.WARNING):
        arrays = data.load_dataset("mnist")
    assert arrays.source == f"bundled copy of MNIST in {data.BUNDLED_MNIST}"
    assert arrays.x_train.shape == (60000, 28, 28, 1) and arrays.y_train[:3].tolist() == [5, 0, 4]
    assert not [r for r in caplog.records if "dataset_info" in r.getMessage()]
    with pytest.raises(data.DataError, match="bundled MNIST holds train and test only"):
        data.load_dataset("mnist", None, "validation")
    with pytest.raises(data.DataError, match="--label_key digit: the bundled MNIST holds one"):
        data.load_dataset("mnist", None, None, "digit")


def test_bundled_mnist_when_the_tfds_download_fails(tmp_path, monkeypatch):
    def fail(self, *args, **kwargs):
        raise ConnectionError("the proxy said no")

    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "no-tfds-here"))
    monkeypatch.setattr(data.tfds_sets, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    assert data.load_dataset("mnist").source.startswith("bundled copy of MNIST in")
    with pytest.raises(data.DataError, match="cifar10: download or preparation failed: the proxy"):
        data.load_dataset("cifar10")


# ----------------------------------------------------------------------------- spatial MNIST


def test_spatial_mnist_rotates_and_inverts_each_quadrant(small_idx_dir):
    mnist = load(small_idx_dir)
    spatial = load(small_idx_dir, data.SPATIAL_MNIST)
    assert spatial.name == "spatial_mnist" and spatial.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(spatial.y_train, mnist.y_train)
    image, out = mnist.x_train[3, ..., 0].astype(int), spatial.x_train[3, ..., 0].astype(int)
    for r in range(14):
        for c in range(14):
            # np.rot90 by k quarter turns maps (r, c) of the result to these source pixels.
            assert out[r, c] == image[r, c]
            assert out[r, 14 + c] == 255 - image[c, 14 + 13 - r]
            assert out[14 + r, 14 + c] == image[14 + 13 - r, 14 + 13 - c]
            assert out[14 + r, c] == 255 - image[14 + 13 - c, r]
    assert spatial.fingerprint() == load(small_idx_dir, data.SPATIAL_MNIST).fingerprint()


# ----------------------------------------------------------------------------- pipelines


def test_network_probe_gives_up_on_refusal(monkeypatch):
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    # Port 9 on loopback: refused at once, no traffic leaves the machine.
    assert data.network_available(("127.0.0.1", 9), timeout=2) is False
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    assert data.network_available() is False


def test_train_pipeline_order_depends_only_on_seed_and_epoch(small_idx_dir):
    arrays = load(small_idx_dir)

    def epochs(start, stop, seed=5):
        batches = list(data.train_dataset(arrays, 16, seed, range(start, stop)).as_numpy_iterator())
        return [batches[i : i + 3] for i in range(0, len(batches), 3)]  # 40 images -> 3 batches

    full, resumed = epochs(0, 3), epochs(2, 3)
    assert len(full) == 3 and len(full[0]) == 3 and full[0][2][0].shape == (8, 28, 28, 1)
    for got, expected in zip(resumed[0], full[2]):
        np.testing.assert_array_equal(got[0], expected[0])
    assert not np.array_equal(full[0][0][1], full[1][0][1])  # reshuffled every epoch
    images, labels = (
        np.concatenate([b[0] for b in full[0]]),
        np.concatenate([b[1] for b in full[0]]),
    )
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() > 1  # 0-255
    assert sorted(labels.tolist()) == sorted(arrays.y_train.tolist())  # a permutation
    other = epochs(0, 1, seed=6)
    assert not np.array_equal(other[0][0][1], full[0][0][1])


def test_test_pipeline_keeps_raw_pixels_in_order(small_idx_dir):
    arrays = load(small_idx_dir)
    batches = list(data.test_dataset(arrays, 8).as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(images, arrays.x_test)  # the model rescales
    assert data.steps_per_epoch(arrays, 16) == 3


# ----------------------------------------------------------------------------- end to end


def test_short_run_on_mocked_cifar10(tmp_path, mocked_tfds):
    config = Config(
        dataset="cifar10",
        logdir=str(tmp_path),
        run_name="cifar",
        n_epochs=1,
        n_filters=(4, 6),
        batch_size=16,
        seed=3,
        quiet=True,
    )
    with mocked_tfds(num_examples=32), open(os.devnull, "w") as sink:
        assert train.run(config, stream=sink) == 0
    metrics = json.loads((tmp_path / "cifar" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["dataset"] == "cifar10"
    assert metrics["data"].startswith("tensorflow-datasets cifar10")
    model = keras.models.load_model(tmp_path / "cifar" / "model.keras")
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    assert len(list((tmp_path / "cifar" / "kernel_images").glob("sws1_*.png"))) >= 3


def test_short_run_on_mocked_celeb_a_with_its_label_and_crop(tmp_path, mocked_tfds):
    config = Config(
        dataset="celeb_a",
        label_key="attributes/Male",
        image_size=32,
        center_crop=0.775,
        layer="coordconv",
        head="gap",
        logdir=str(tmp_path),
        run_name="faces",
        n_epochs=1,
        n_filters=(4, 6),
        batch_size=16,
        seed=3,
        quiet=True,
    )
    with mocked_tfds(num_examples=32), open(os.devnull, "w") as sink:
        assert train.run(config, stream=sink) == 0
    metrics = json.loads((tmp_path / "faces" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["flags"]["label_key"] == "attributes/Male"
    assert "labels attributes/Male, centre crop 0.775, resized to 32x32" in metrics["data"]
    model = keras.models.load_model(tmp_path / "faces" / "model.keras")
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 2)
    # The first layer sees the colours and two coordinates; its picture shows the colours.
    assert (tmp_path / "faces" / "kernel_images" / "coordconv1_kernels_full.png").is_file()
