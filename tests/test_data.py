"""Loading MNIST from IDX files, npz archives and (mocked) TFDS; the tf.data pipelines."""

import gzip
import time

import numpy as np
import pytest

from swsl_cli import data
from tests.conftest import write_idx


def test_real_mnist_idx_files(mnist_dir):
    arrays = data.load_mnist(str(mnist_dir))
    assert arrays.x_train.shape == (60000, 28, 28) and arrays.x_test.shape == (10000, 28, 28)
    assert arrays.x_train.dtype == np.uint8 and arrays.y_train.dtype == np.int32
    assert sorted(np.unique(arrays.y_test)) == list(range(10))
    assert arrays.y_train[:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's well-known first labels


def test_uncompressed_idx_and_limits(small_idx_dir, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in small_idx_dir.iterdir():
        (plain / path.name[:-3]).write_bytes(gzip.decompress(path.read_bytes()))
    gz, raw = data.load_mnist(str(small_idx_dir)), data.load_mnist(str(plain))
    np.testing.assert_array_equal(gz.x_train, raw.x_train)
    limited = raw.limited(10, 5)
    assert len(limited.x_train) == 10 and len(limited.y_test) == 5


def test_npz(small_idx_dir, tmp_path):
    arrays = data.load_mnist(str(small_idx_dir))
    path = arrays.save_npz(tmp_path / "mnist.npz")
    for source in (path, tmp_path):  # the file, or a folder holding mnist.npz
        loaded = data.load_mnist(str(source))
        np.testing.assert_array_equal(loaded.x_test, arrays.x_test)


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
            lambda d: write_idx(d / "train-labels-idx1-ubyte", np.full(40, 12), 2049),
            "labels outside 0..9",
        ),
        (
            lambda d: write_idx(d / "train-labels-idx1-ubyte", np.zeros(39), 2049),
            "40 train images but labels of shape",
        ),
    ],
    ids=[
        "missing",
        "wrong-magic",
        "truncated",
        "not-gzip",
        "header-cut",
        "bad-labels",
        "count-mismatch",
    ],
)
def test_damaged_idx_files_are_clear_errors(small_idx_dir, damage, message):
    damage(small_idx_dir)
    with pytest.raises(data.DataError, match=message):
        data.load_mnist(str(small_idx_dir))


def test_broken_npz(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(data.DataError, match="not a readable npz archive"):
        data.load_mnist(str(tmp_path / "broken.npz"))
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((1, 28, 28)))
    with pytest.raises(data.DataError, match="lacks the arrays y_train, x_test, y_test"):
        data.load_mnist(str(tmp_path / "partial.npz"))


def test_missing_empty_and_unrelated_data_dirs(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_mnist(str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match="is empty"):
        data.load_mnist(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(data.DataError, match="holds neither"):
        data.load_mnist(str(tmp_path))


def test_offline_without_prepared_tfds_fails_fast_naming_the_fix(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DataError, match="--data_dir") as error:
        data.load_tfds(str(tmp_path / "tfds"))
    assert "tfds build mnist" in str(error.value)
    assert time.monotonic() - start < 10


def test_network_probe_gives_up_on_refusal(monkeypatch):
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    # Port 9 on loopback: refused at once, no traffic leaves the machine.
    assert data.network_available(("127.0.0.1", 9), timeout=2) is False
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    assert data.network_available() is False


def test_mock_tfds(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(data, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=24):
        arrays = data.load_mnist(None)
    assert arrays.x_train.shape == (24, 28, 28) and arrays.x_test.shape == (24, 28, 28)
    assert arrays.source.startswith("tensorflow-datasets")


def test_train_pipeline_order_depends_only_on_seed_and_epoch(small_idx_dir):
    arrays = data.load_mnist(str(small_idx_dir))

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
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
    assert sorted(labels.tolist()) == sorted(arrays.y_train.tolist())  # a permutation
    other = epochs(0, 1, seed=6)
    assert not np.array_equal(other[0][0][1], full[0][0][1])


def test_test_pipeline_scales_in_order(small_idx_dir):
    arrays = data.load_mnist(str(small_idx_dir))
    batches = list(data.test_dataset(arrays, 8).as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches])
    np.testing.assert_allclose(images[..., 0], arrays.x_test / 255.0, rtol=1e-6)
    assert data.steps_per_epoch(arrays, 16) == 3
