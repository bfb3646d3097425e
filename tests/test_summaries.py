"""Layer pictures for every layer kind and input, PNG export, and HParams events read back."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import backend_context
from tensorboard.plugins.hparams import metadata as hparams_metadata

from swsl_cli import visualize
from swsl_cli.layers import (
    CoordinateChannels,
    LocallyConnected2D,
    LowRankLocallyConnected2D,
    SoftWeightSharingConv2D,
)
from swsl_cli.runner import runs, summaries
from swsl_cli.runner.config import Config


class PerCellKernels(keras.layers.Layer):
    """Stands in for a locally connected layer: only `local_kernels()` matters here."""

    def __init__(self, kernels, **kwargs):
        super().__init__(**kwargs)
        self.kernels = kernels

    def call(self, inputs):
        return inputs

    def local_kernels(self):
        return self.kernels


def three_kinds_with_one_kernel(kernel):
    """A Conv2D, a SWS layer whose 4 KCPs all hold `kernel`, and a per-cell layer: one model."""
    inputs = keras.Input((12, 12, kernel.shape[2]))
    conv = keras.layers.Conv2D(kernel.shape[3], 3, padding="same", name="conv")
    sws = SoftWeightSharingConv2D(kernel.shape[3], 3, centroids=(2, 2), name="sws")
    local = PerCellKernels(np.broadcast_to(kernel, (12, 12, *kernel.shape)), name="local")
    model = keras.Model(inputs, [conv(inputs), sws(inputs), local(inputs)])
    conv.kernel.assign(kernel)
    sws.kernel.assign(np.repeat(kernel[..., None], 4, axis=-1).reshape(*kernel.shape[:3], -1))
    return model


def test_conv_sws_and_locally_connected_layers_get_the_same_picture_of_the_same_kernels(rng):
    kernel = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    views = summaries.layer_views(three_kinds_with_one_kernel(kernel))
    assert [view.name for view in views] == ["conv", "sws", "local"]
    assert [view.cell_kernels.shape for view in views] == [(4, 4, 3, 3, 2, 4)] * 3
    assert [view.summary_kernels.shape for view in views] == [(4, 4, 3, 3, 2, 4)] * 3
    tb = [summaries.layer_pictures(view, color_coding=False) for view in views]
    png = [summaries.png_pictures(view, color_coding=False) for view in views]
    for pictures in (tb, png):  # (the SWS layer's specialisation picture marks its centroids)
        np.testing.assert_allclose(pictures[1]["kernels"], pictures[0]["kernels"], atol=1e-5)
        np.testing.assert_allclose(pictures[2]["kernels"], pictures[0]["kernels"], atol=1e-5)
        np.testing.assert_allclose(pictures[2]["specialisation"], pictures[0]["specialisation"])
    np.testing.assert_allclose(png[1]["kernels_full"], png[0]["kernels_full"], atol=1e-5)
    np.testing.assert_allclose(png[2]["kernels_full"], png[0]["kernels_full"], atol=1e-5)
    for view in views:  # one kernel everywhere: no specialisation
        np.testing.assert_allclose(view.specialisation, 0.0, atol=1e-6)
    # The summary: 4 filters in 2 x 2 tiles, each 4 x 4 kernels of (3 + 1) px + 1, times 3,
    # 3 px apart; filter 1's tile starts after one tile and two gaps.
    side = (4 * 4 + 1) * 3
    assert tb[0]["kernels"].shape == (2 * side + 3 * 3, 2 * side + 3 * 3, 3)
    strongest = int(np.abs(kernel[..., 1]).sum(axis=(0, 1)).argmax())
    expected = visualize.scale_kernels(kernel[None, None])[0, 0, :, :, strongest, 1]
    top, left = 3 + 3, 3 + side + 3 + 3  # gap, then the separator row/column (3 px)
    np.testing.assert_allclose(
        tb[0]["kernels"][top : top + 9 : 3, left : left + 9 : 3, 0], expected, atol=1e-6
    )
    # The full detail: 2 inputs x 4 filters, every 3rd cell of 12: 4 x 4 kernels, 3 px a weight.
    assert png[0]["kernels_full"].shape == (2 * 17 * 3, 4 * 17 * 3)


def test_the_real_locally_connected_layer_is_drawn_from_its_own_per_cell_kernels(rng):
    kernel = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    inputs = keras.Input((12, 12, 2))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")
    local = LocallyConnected2D(4, 3, padding="same", name="local")
    model = keras.Model(inputs, [conv(inputs), local(inputs)])
    conv.kernel.assign(kernel)
    local.kernel.assign(np.broadcast_to(kernel, (12, 12, *kernel.shape)))
    conv_view, local_view = summaries.layer_views(model)
    np.testing.assert_allclose(
        summaries.png_pictures(local_view, False)["kernels_full"],
        summaries.png_pictures(conv_view, False)["kernels_full"],
        atol=1e-5,
    )
    cells = np.array(local.kernel)
    cells[9, 6] = -cells[9, 6]  # one cell's own kernel shows in its own tile only
    cells[11, 11] = 2 * cells[11, 11]  # the last cell is a summary cell
    local.kernel.assign(cells)
    (_, local_view) = summaries.layer_views(model)
    np.testing.assert_allclose(local_view.cell_kernels[3, 2], -kernel)
    np.testing.assert_allclose(local_view.cell_kernels[3, 1], kernel)
    np.testing.assert_allclose(local_view.summary_kernels[3, 3], 2 * kernel)
    np.testing.assert_allclose(
        local_view.specialisation, visualize.specialisation_map(cells), rtol=1e-6
    )
    assert local_view.specialisation[9, 6] > local_view.specialisation[0, 0] > 0


def test_the_low_rank_layer_is_drawn_from_its_mixed_bases(rng):
    inputs = keras.Input((12, 12, 2))
    lrlc = LowRankLocallyConnected2D(4, 3, rank=3, padding="same", combining="free", name="lrlc")
    model = keras.Model(inputs, lrlc(inputs))
    (start,) = summaries.layer_views(model)
    np.testing.assert_allclose(start.specialisation, 0, atol=1e-6)  # a convolution at step 0
    lrlc.logits.assign(rng.normal(size=lrlc.logits.shape).astype("float32"))
    (view,) = summaries.layer_views(model)
    kernels = lrlc.local_kernels()
    assert view.name == "lrlc" and view.cell_kernels.shape == (4, 4, 3, 3, 2, 4)
    np.testing.assert_allclose(view.cell_kernels, kernels[::3, ::3])
    np.testing.assert_allclose(view.specialisation, visualize.specialisation_map(kernels))
    assert view.specialisation.min() > 0
    assert set(summaries.png_pictures(view, color_coding=True)) == {
        "kernels",
        "specialisation",
        "kernels_full",
    }


def test_a_coordconv_layer_on_colour_images_is_drawn_from_its_colour_channels():
    inputs = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(5, 3, padding="same", name="coordconv1")
    model = keras.Model(inputs, conv(CoordinateChannels()(inputs)))
    (view,) = summaries.layer_views(model)
    assert view.rgb and view.cell_kernels.shape[4:] == (3, 5)
    assert view.summary_kernels.shape[4:] == (3, 5)
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    np.testing.assert_allclose(view.cell_kernels[0, 0], kernel[..., :3, :])
    pictures = summaries.png_pictures(view, color_coding=False)
    assert pictures["kernels"].shape[-1] == 3 and pictures["kernels_full"].shape[-1] == 3


def test_sws_view_mixes_its_kcp_kernels_at_the_drawn_cells():
    inputs = keras.Input((28, 28, 1))
    layer = SoftWeightSharingConv2D(3, 5, centroids=7, per_feature=True, seed=2, name="sws")
    model = keras.Model(inputs, layer(inputs))
    (view,) = summaries.layer_views(model)
    similarity = keras.ops.convert_to_numpy(layer.similarity_map())
    np.testing.assert_allclose(view.similarity, similarity)
    expected = visualize.weighted_kernels(layer.kcp_kernels(), similarity[::3, ::3])
    np.testing.assert_allclose(view.cell_kernels, expected, rtol=1e-6)
    assert view.cell_kernels.shape == (10, 10, 5, 5, 1, 3) and not view.rgb
    corners = visualize.weighted_kernels(
        layer.kcp_kernels(), similarity[[0, 9, 18, 27]][:, [0, 9, 18, 27]]
    )
    np.testing.assert_allclose(view.summary_kernels, corners, rtol=1e-6)
    np.testing.assert_allclose(
        view.specialisation,
        visualize.specialisation_map(layer.local_kernels()),
        rtol=1e-4,
        atol=1e-6,
    )


def rgb_model(centroids=50, size=64):
    inputs = keras.Input((size, size, 3))
    x = SoftWeightSharingConv2D(24, 7, centroids=centroids, per_feature=True, seed=3, name="sws1")(
        inputs
    )
    return keras.Model(inputs, keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x))


def png_shape(path):
    return tf.io.decode_png(path.read_bytes(), channels=0).numpy().shape


def test_rgb_input_is_drawn_in_colour_and_every_picture_is_legible(tmp_path):
    model = rgb_model()
    written = summaries.export_kernel_pngs(model, tmp_path / "pngs", color_coding=True)
    names = [path.name for path in written]
    assert names == [
        "sws1_kernels.png",
        "sws1_specialisation.png",
        "sws1_centroids.png",
        "sws1_kernels_color.png",
        "sws1_kernels_full.png",
        "sws1_kcp.png",
        "sws1_kernels_color_full.png",
        "conv2_kernels.png",
        "conv2_specialisation.png",
        "conv2_kernels_full.png",
    ]
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == sorted(names)  # no temp files
    shapes = {path.name: png_shape(path) for path in written}
    # 24 filters in 5 x 5 tiles of 4 x 4 colour kernels of (7 + 1) px + 1, 3 px a weight.
    tile = (4 * 8 + 1) * 3
    assert shapes["sws1_kernels.png"] == (5 * (tile + 3) + 3, 5 * (tile + 3) + 3, 3)
    # 64 x 64 cells sampled every 7th: 10 x 10 kernels of 7 + 1 px; 24 filters in 5 x 5.
    assert shapes["sws1_kernels_full.png"] == (5 * 81 * 3, 5 * 81 * 3, 3)
    assert shapes["sws1_specialisation.png"][1] == 64 * 3  # 3 px a cell
    assert all(
        len(shape) == 3 and max(shape[:2]) <= visualize.MAX_SIDE for shape in shapes.values()
    )
    assert max(shapes["sws1_kernels.png"][:2] + shapes["conv2_kernels.png"][:2]) <= 600


def test_run_summaries_write_one_event_stream_in_the_run_folder(tmp_path):
    model = rgb_model(centroids=13, size=32)
    writer = summaries.RunSummaries(tmp_path, Config())
    callback = summaries.LayerSummaries(writer, color_coding=True, verbosity=0, probe_batch=(0, 0))
    callback.set_model(model)
    callback.on_epoch_end(0)
    writer.epoch(1, {"loss": 2.0, "accuracy": 0.5, "val_loss": 1.5, "val_accuracy": 0.6,
                     "images_per_second": 900.0}, learning_rate=0.003)  # fmt: skip
    writer.final(1, 1.5, 0.6)  # evaluated on the test split each epoch: nothing more
    writer.close()
    assert [p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir()] == [True]
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["tensors"])
    assert {
        "pictures/sws1/kernels",
        "pictures/sws1/specialisation",
        "pictures/sws1/centroids",
        "pictures/sws1/kernels_color",
    } <= tags
    assert {"pictures/conv2/kernels", "pictures/conv2/specialisation"} <= tags
    assert not any(t.startswith("pictures/conv2/cent") for t in tags)
    scalars = {"loss/train", "loss/test", "accuracy/train", "accuracy/test", "optimizer/learning_rate",
               "speed/images_per_second", "specialisation/sws1", "specialisation/conv2"}  # fmt: skip
    assert scalars <= tags
    (event,) = accumulator.Tensors("accuracy/test")
    assert event.step == 1 and float(tf.make_ndarray(event.tensor_proto)) == pytest.approx(0.6)
    (image,) = accumulator.Tensors("pictures/conv2/kernels")
    encoded = tf.make_ndarray(image.tensor_proto)
    assert len(encoded) == 3  # width, height, one PNG: one picture per layer
    assert tf.io.decode_png(encoded[2]).shape[2] == 3
    (conv2,) = accumulator.Tensors("specialisation/conv2")
    assert float(tf.make_ndarray(conv2.tensor_proto)) == 0.0  # a convolution shares everything


def test_a_validation_split_gets_its_own_curves_and_the_test_figures_once(tmp_path):
    writer = summaries.RunSummaries(tmp_path, Config(val_split="validation"))
    writer.epoch(2, {"val_loss": 1.5, "val_accuracy": 0.6}, learning_rate=0.001)
    writer.final(2, 1.25, 0.75)
    writer.close()
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["tensors"])
    assert {"loss/validation", "accuracy/validation", "loss/test", "accuracy/test"} <= tags
    (event,) = accumulator.Tensors("accuracy/test")
    assert event.step == 2 and float(tf.make_ndarray(event.tensor_proto)) == 0.75


def test_write_png_never_leaves_a_truncated_file(tmp_path, monkeypatch):
    path = tmp_path / "picture.png"
    summaries.write_png(path, np.zeros((4, 5)))
    before = path.read_bytes()

    def disk_full(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "replace", disk_full)
    with pytest.raises(runs.RunError, match="cannot write .*picture.png: No space left on device"):
        summaries.write_png(path, np.ones((4, 5, 3)))
    assert path.read_bytes() == before  # the old picture, whole
    assert [p.name for p in tmp_path.iterdir()] == ["picture.png"]


def hparams_content(run_root):
    accumulator = EventAccumulator(str(run_root), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator.PluginTagToContent("hparams")


def test_hparams_hold_the_settings_that_apply_and_tensorboard_finds_what_differs(tmp_path):
    runs_of = {
        "sws-run": Config(seed=3, max_train_examples=256),
        "trainable": Config(seed=3, max_train_examples=256, centroids_trainable=True),
        "conv-run": Config(seed=3, max_train_examples=256, layer="conv"),
    }
    contents = {}
    for name, config in runs_of.items():
        writer = summaries.RunSummaries(tmp_path / name, config)
        writer.hparams(config, parameters=1234, run_name=name)
        writer.close()
        contents[name] = hparams_content(tmp_path / name)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        contents["sws-run"][hparams_metadata.SESSION_START_INFO_TAG]
    )
    assert start.group_name == "sws-run"  # one row per run, even with equal settings
    values = {name: value.WhichOneof("kind") for name, value in start.hparams.items()}
    assert start.hparams["layer"].string_value == "sws"
    assert start.hparams["n_filters"].string_value == "24 48"
    assert start.hparams["n_centroids"].string_value == "none"
    assert start.hparams["seed"].number_value == 3 and values["seed"] == "number_value"
    assert start.hparams["parameters"].number_value == 1234
    assert start.hparams["color_coding"].bool_value is False
    assert not {"logdir", "run_name", "resume", "quiet", "data_dir", "peer_timeout"} & set(values)
    assert "lr_decay" not in values  # the cosine schedule has no decay factor
    assert start.hparams["scaling"].number_value == 1.0 and start.hparams["head"].string_value
    assert not {"rank", "combining"} & set(values)  # lrlc's only
    conv = hparams_metadata.parse_session_start_info_plugin_data(
        contents["conv-run"][hparams_metadata.SESSION_START_INFO_TAG]
    )
    assert not {"centroid_grid", "centroids_trainable", "kcp_init", "scaling"} & set(conv.hparams)
    # No experiment summary: TensorBoard infers the columns from the runs, with its own code,
    # and marks the settings whose values differ; they are the ones shown first.
    assert all(hparams_metadata.EXPERIMENT_TAG not in content for content in contents.values())
    infos = backend_context.Context(None)._compute_hparam_infos(
        {name: content for name, content in contents.items()}
    )
    assert {info.name for info in infos if info.differs} == {"layer", "centroids_trainable"}


def test_final_metrics_of_the_epoch_records():
    epochs = [
        {"val_accuracy": 0.5, "images_per_second": 100.0},
        {"val_accuracy": 0.75, "images_per_second": 300.0},
        {"val_accuracy": 0.625, "images_per_second": 200.0},
    ]
    assert summaries.final_metrics(epochs, test_loss=0.5, test_accuracy=0.625, parameters=1234) == {
        "test_accuracy": 0.625,
        "test_loss": 0.5,
        "best_val_accuracy": 0.75,
        "parameters": 1234,
        "images_per_second": 200.0,
    }
    assert summaries.final_metrics([], 0.5, 0.5, 1)["best_val_accuracy"] is None
