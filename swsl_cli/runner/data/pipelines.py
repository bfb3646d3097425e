"""The tf.data pipelines every source feeds: seeded epoch order, batches, augmentation."""

from __future__ import annotations

import math

import numpy as np

from swsl_cli.runner.augment import Augmentation
from swsl_cli.runner.data.arrays import ImageArrays

# Second word of the augmentation's stateless key, before the epoch and the batch are
# folded in. (It equals the shuffle's key of epoch 4; folding in hashes it, so the
# draws share nothing usable with that shuffle.)
AUGMENTATION_STREAM = 4


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
