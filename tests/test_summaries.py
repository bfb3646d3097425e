"""Layer pictures for every layer kind and input, PNG export, and HParams events read back."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from swsl_cli import visualize
from swsl_cli.layers import SoftWeightSharingConv2D
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
    tb = [summaries.layer_pictures(view, color_coding=False)["weighted_kernels"] for view in views]
    png = [summaries.png_pictures(view, color_coding=False)["weighted"] for view in views]
    for pictures in (tb, png):
        np.testing.assert_allclose(pictures[1], pictures[0], atol=1e-5)
        np.testing.assert_allclose(pictures[2], pictures[0], atol=1e-5)
    expected = visualize.scale_kernels(kernel[None, None])[0, 0, :, :, 0, 1]
    np.testing.assert_allclose(tb[0][1, 1:4, 1:4, 0], expected, atol=1e-6)  # filter 1, channel 0
    np.testing.assert_allclose(tb[0][1, 13:16, 9:12, 0], expected, atol=1e-6)  # cell (9, 6)
    assert tb[0].shape == (4, 17, 17, 1)  # one image per filter, input channel 0
    assert png[0].shape == (2 * 17 * 2, 4 * 17 * 2)  # 2 inputs x 4 filters, 8 px per weight


def test_the_real_locally_connected_layer_is_drawn_from_its_own_per_cell_kernels(rng):
    local_module = pytest.importorskip(
        "swsl_cli.layers.locally_connected", reason="LocallyConnected2D is not on this branch yet"
    )
    kernel = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    inputs = keras.Input((12, 12, 2))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")
    local = local_module.LocallyConnected2D(4, 3, padding="same", name="local")
    model = keras.Model(inputs, [conv(inputs), local(inputs)])
    conv.kernel.assign(kernel)
    local.kernel.assign(np.broadcast_to(kernel, (12, 12, *kernel.shape)))
    conv_view, local_view = summaries.layer_views(model)
    np.testing.assert_allclose(
        summaries.png_pictures(local_view, False)["weighted"],
        summaries.png_pictures(conv_view, False)["weighted"],
        atol=1e-5,
    )
    cells = np.array(local.kernel)
    cells[9, 6] = -cells[9, 6]  # one cell's own kernel shows in its own tile only
    local.kernel.assign(cells)
    (_, local_view) = summaries.layer_views(model)
    np.testing.assert_allclose(local_view.cell_kernels[3, 2], -kernel)
    np.testing.assert_allclose(local_view.cell_kernels[3, 1], kernel)


def test_sws_view_mixes_its_kcp_kernels_at_the_sampled_cells():
    inputs = keras.Input((28, 28, 1))
    layer = SoftWeightSharingConv2D(3, 5, centroids=7, per_feature=True, seed=2, name="sws")
    model = keras.Model(inputs, layer(inputs))
    (view,) = summaries.layer_views(model)
    similarity = keras.ops.convert_to_numpy(layer.similarity_map())
    np.testing.assert_allclose(view.similarity, similarity)
    expected = visualize.weighted_kernels(layer.kcp_kernels(), similarity[::3, ::3])
    np.testing.assert_allclose(view.cell_kernels, expected, rtol=1e-6)
    assert view.cell_kernels.shape == (10, 10, 5, 5, 1, 3) and not view.rgb


def rgb_model(centroids=50, size=64):
    inputs = keras.Input((size, size, 3))
    x = SoftWeightSharingConv2D(24, 7, centroids=centroids, per_feature=True, seed=3, name="sws1")(
        inputs
    )
    return keras.Model(inputs, keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x))


def test_rgb_input_is_drawn_in_colour_and_every_picture_fits_1500_pixels(tmp_path):
    model = rgb_model()
    written = summaries.export_kernel_pngs(model, tmp_path / "pngs", color_coding=True)
    names = [path.name for path in written]
    assert names == [
        "sws1_weighted.png",
        "sws1_kcp.png",
        "sws1_weighted_color.png",
        "sws1_centroids.png",
        "conv2_weighted.png",
    ]
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == sorted(names)  # no temp files
    shapes = {
        path.name: tf.io.decode_png(path.read_bytes(), channels=0).numpy().shape for path in written
    }
    # 64 x 64 cells sampled every 7th: 10 x 10 kernels of 7 + 1 px; 24 filters in 5 x 5
    assert shapes["sws1_weighted.png"] == (5 * 81, 5 * 81, 3)
    assert shapes["sws1_weighted_color.png"][2] == 3 and shapes["conv2_weighted.png"][2] == 1
    assert shapes["sws1_centroids.png"] == (64 * 3, 64 * 3, 3)
    assert all(max(shape[:2]) <= visualize.MAX_SIDE for shape in shapes.values())
    pictures = summaries.layer_pictures(summaries.layer_views(model)[0], color_coding=True)
    assert pictures["weighted_kernels"].shape == (24, 81, 81, 3)  # colour kernels, per filter
    assert pictures["weighted_kernels_color"].shape == (24, 81, 81, 3)
    assert pictures["centroids"].shape == (24, 64, 64, 3)  # random centroids: one set per filter


def test_layer_summaries_write_images_for_every_kernel_layer(tmp_path):
    model = rgb_model(centroids=13, size=32)
    callback = summaries.LayerSummaries(
        tmp_path, color_coding=True, verbosity=0, probe_batch=(0, 0)
    )
    callback.set_model(model)
    callback.on_epoch_end(0)
    callback.on_train_end()
    accumulator = EventAccumulator(str(tmp_path / "layers"), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["tensors"])
    assert {"sws1/weighted_kernels", "sws1/weighted_kernels_color", "sws1/legend"} <= tags
    assert "conv2/weighted_kernels" in tags and not any(t.startswith("conv2/cent") for t in tags)
    encoded = tf.make_ndarray(accumulator.Tensors("conv2/weighted_kernels")[0].tensor_proto)
    assert len(encoded) - 2 == 16  # one image per filter
    # 32 x 32 cells sampled every 4th: 8 x 8 kernels of 3 + 1 px
    assert tf.io.decode_png(encoded[2]).shape == (8 * 4 + 1, 8 * 4 + 1, 1)


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


def hparams_events(run_root):
    accumulator = EventAccumulator(str(run_root), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def test_hparams_and_final_metrics_read_back_with_tensorboards_parsers(tmp_path):
    run_root = tmp_path / "tb" / "sws-g2x2_f24-48_e1_x"
    run_root.mkdir(parents=True)
    config = Config(seed=3, max_train_examples=256, logdir=str(tmp_path))
    summaries.write_hparams(run_root, config)
    epochs = [
        {"val_accuracy": 0.5, "images_per_second": 100.0},
        {"val_accuracy": 0.75, "images_per_second": 300.0},
        {"val_accuracy": 0.625, "images_per_second": 200.0},
    ]
    metrics = summaries.hparams_metrics(epochs, test_loss=0.5, test_accuracy=0.625, parameters=1234)
    assert metrics == {
        "test_accuracy": 0.625,
        "test_loss": 0.5,
        "best_val_accuracy": 0.75,
        "parameters": 1234,
        "images_per_second": 200.0,
    }
    summaries.write_final_metrics(run_root, metrics, step=3)

    accumulator = hparams_events(run_root)
    content = accumulator.PluginTagToContent("hparams")
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    assert start.group_name == run_root.name  # one row per run, even with equal flags
    values = {name: value.WhichOneof("kind") for name, value in start.hparams.items()}
    assert start.hparams["layer"].string_value == "sws"
    assert start.hparams["n_filters"].string_value == "24 48"
    assert start.hparams["n_centroids"].string_value == "none"
    assert start.hparams["seed"].number_value == 3 and values["seed"] == "number_value"
    assert start.hparams["color_coding"].bool_value is False
    assert not {"logdir", "run_name", "resume", "quiet", "data_dir", "peer_timeout"} & set(values)
    assert "lr_decay" not in values  # the cosine schedule has no decay factor
    experiment = hparams_metadata.parse_experiment_plugin_data(
        content[hparams_metadata.EXPERIMENT_TAG]
    )
    infos = {info.name: info for info in experiment.hparam_infos}
    assert set(infos) == set(values) | {"lr_decay"}  # the columns of every run
    assert {name for name, info in infos.items() if info.differs} == {
        "dataset",
        "layer",
        "centroid_grid",
        "n_centroids",
        "n_filters",
    }  # in view when the tab opens
    assert list(infos["color_coding"].domain_discrete) == [False, True]
    assert not infos["layer"].HasField("domain_discrete")  # values vary: no fixed domain
    assert [(m.name.group, m.name.tag) for m in experiment.metric_infos] == [
        ("", "test_accuracy"),
        ("", "test_loss"),
        ("", "best_val_accuracy"),
        ("", "parameters"),
        ("", "images_per_second"),
        ("validation", "epoch_accuracy"),
        ("validation", "epoch_loss"),
        ("train", "epoch_loss"),
    ]
    for tag, value in metrics.items():
        (event,) = accumulator.Tensors(tag)
        assert event.step == 3
        assert float(tf.make_ndarray(event.tensor_proto)) == pytest.approx(value)


def test_final_metrics_refuse_an_unknown_name_and_skip_missing_values(tmp_path):
    with pytest.raises(ValueError, match=r"Received unknown \['test_acc'\]"):
        summaries.write_final_metrics(tmp_path, {"test_acc": 0.5}, step=1)
    summaries.write_final_metrics(tmp_path, {"test_accuracy": 0.5, "best_val_accuracy": None}, 1)
    tags = hparams_events(tmp_path).Tags()["tensors"]
    assert tags == ["test_accuracy"]
