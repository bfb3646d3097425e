"""The training augmentation: its geometry, its bounds, and its seeding in the pipeline."""

import math

import numpy as np
import tensorflow as tf

from swsl_cli.runner import data
from swsl_cli.runner.augment import Augmentation
from swsl_cli.runner.config import Config
from swsl_cli.runner.data import ImageArrays


def augmented(augmentation, images, seed=(0, 0)):
    return augmentation(tf.constant(images, tf.float32), tf.constant(seed, tf.int64)).numpy()


def dots(count, row=14, col=20):
    images = np.zeros((count, 28, 28, 1), "float32")
    images[:, row, col] = 255.0
    return images


def test_nothing_asked_nothing_done():
    images = dots(3)
    assert not Augmentation.from_config(Config(max_shift=0, max_rotation=0, max_zoom=0))
    np.testing.assert_array_equal(augmented(Augmentation(), images), images)
    assert Augmentation.from_config(Config()) == Augmentation(10.0, 0.1, 2)


def test_shifts_alone_move_whole_pixels_as_keras_random_translation():
    moved = augmented(Augmentation(max_shift=2), dots(4000))
    assert set(np.unique(moved)) == {0.0, 255.0}  # whole pixels, black border
    assert (moved.sum(axis=(1, 2, 3)) == 255).all()  # the dot is never lost or smeared
    rows, cols = np.nonzero(moved[..., 0])[1:]
    assert {(dy, dx) for dy, dx in zip(rows - 14, cols - 20)} == {
        (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
    }
    # A shift uniform in [-2, 2] rounded to whole pixels, per axis: 0 and +-1
    # a quarter of the time each, +-2 an eighth.
    for offsets in (rows - 14, cols - 20):
        share = np.bincount(offsets + 2, minlength=5) / len(offsets)
        np.testing.assert_allclose(share, [0.125, 0.25, 0.25, 0.25, 0.125], atol=0.025)


def test_rotation_turns_about_the_centre_by_the_drawn_angle():
    # The largest draw (u = 1) is +max_rotation: 90 degrees turns the dot at
    # (row 14, col 20) about the centre (13.5, 13.5) to (row 7, col 14): output
    # (x, y) samples the input at (27 - y, x).
    augmentation = Augmentation(max_rotation=90)
    draws = tf.constant([[1.0, 0.5, 0.5, 0.5], [0.0, 0.5, 0.5, 0.5]])
    transforms = augmentation.transforms(draws, 28, 28)
    image = tf.constant(np.repeat(dots(1), 2, axis=0))
    turned = tf.raw_ops.ImageProjectiveTransformV3(
        images=image,
        transforms=transforms,
        output_shape=[28, 28],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    ).numpy()
    assert np.unravel_index(turned[0, ..., 0].argmax(), (28, 28)) == (7, 14)
    assert np.unravel_index(turned[1, ..., 0].argmax(), (28, 28)) == (20, 13)  # -90 degrees
    np.testing.assert_allclose(turned.sum(axis=(1, 2, 3)), 255, rtol=1e-5)


def test_rotations_and_zooms_stay_within_their_bounds():
    augmentation = Augmentation(max_rotation=10, max_zoom=0.1)
    draws = tf.constant([[0.0, 0.0, 0.5, 0.5], [1.0, 1.0, 0.5, 0.5]])
    matrix = augmentation.transforms(draws, 28, 28).numpy()
    for row, (angle, scale) in zip(matrix, [(-10, 0.9), (10, 1.1)]):
        a0, a1, a2, b0, b1, b2 = row[:6]
        np.testing.assert_allclose(
            [a0, a1],
            [scale * math.cos(math.radians(angle)), -scale * math.sin(math.radians(angle))],
            atol=1e-6,
        )
        np.testing.assert_allclose([b0, b1], [-a1, a0], atol=1e-6)
        # The centre maps to itself (no shift drawn at u = 0.5 for max_shift 0).
        np.testing.assert_allclose(
            [a0 * 13.5 + a1 * 13.5 + a2, b0 * 13.5 + b1 * 13.5 + b2], [13.5, 13.5], atol=1e-5
        )
    bar = np.zeros((200, 28, 28, 1), "float32")
    bar[:, 6:22, 12:16] = 255.0  # an upright bar
    moved = augmented(augmentation, bar)
    assert moved.min() >= 0 and moved.max() <= 255  # bilinear, black border
    # A 10 degree turn and a 10 % zoom move the bar's ends by less than 2.5 pixels.
    assert moved[:, :3].max() == 0 and moved[:, 25:].max() == 0
    assert len({m.tobytes() for m in moved}) == 200  # every image its own draws


def test_pipeline_augments_each_batch_from_seed_epoch_and_step_only():
    # 48 copies of one image: the shuffle changes nothing, so every difference
    # between batches is the augmentation's.
    rng = np.random.default_rng(0)
    same = np.repeat(rng.integers(0, 256, (1, 28, 28, 1), dtype=np.uint8), 48, axis=0)
    labels = np.zeros(48, "int32")
    arrays = ImageArrays(same, labels, same[:8], labels[:8], source="synthetic")
    augmentation = Augmentation(max_rotation=10, max_zoom=0.1, max_shift=2)

    def images(start, stop, seed=5, how=augmentation):
        batches = data.train_dataset(arrays, 16, seed, range(start, stop), how)
        return [b[0] for b in batches.as_numpy_iterator()]  # 3 batches per epoch

    full = images(0, 3)
    for got, expected in zip(images(2, 3), full[6:]):  # epoch 2 is the same when resumed there
        np.testing.assert_array_equal(got, expected)
    for again, first in zip(images(0, 3), full):  # and on every read
        np.testing.assert_array_equal(again, first)
    # Every image of every batch of every epoch has its own draws, and the seed changes them.
    images_drawn = np.concatenate(full + images(0, 1, seed=6))
    assert len({image.tobytes() for image in images_drawn}) == 48 * 4
    np.testing.assert_array_equal(np.concatenate(images(0, 3, how=None)), np.repeat(same, 3, 0))
