"""TensorBoard summaries, HParams and PNG export of the convolution layers.

Scalars and weight histograms come from `keras.callbacks.TensorBoard` (runs
`train` and `validation`); the layer pictures, centroids, gradients and
activations are written here under the run `layers`, one step per epoch; the
run's flags and final metrics go to the run folder itself for the HParams tab.

Every kernel layer (`SoftWeightSharingConv2D`, `Conv2D`, and any layer with a
`local_kernels()` method returning its per-cell kernels `(H', W', kh, kw, C, F)`,
such as a locally connected layer) gets the same kernel picture, so that runs
of `--layer sws`, `conv` and `local` can be compared side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.hparams import plugin_data_pb2

from swsl_cli import visualize
from swsl_cli.layers import SoftWeightSharingConv2D
from swsl_cli.runner import runs
from swsl_cli.runner.config import DECLARATIONS, HPARAMS, KEY_HPARAMS, Config

LAYERS_RUN = "layers"
# Exported kernels are enlarged to about 8 pixels per weight (as far as MAX_SIDE allows).
PIXELS_PER_WEIGHT = 8
CENTROID_MAP_SIDE = 224  # pixels, about, of the exported centroid map
LEGEND_SIDE = 112  # pixels, about, of the TensorBoard legend

# The HParams tab's metric columns: (group, tag) -> title. Group "" is the run
# folder itself (written by `write_final_metrics`); `train` and `validation`
# are Keras's TensorBoard runs, whose last epoch's value is shown, so that
# runs still training have numbers too.
FINAL_METRICS = {
    "test_accuracy": "test accuracy",
    "test_loss": "test loss",
    "best_val_accuracy": "best validation accuracy",
    "parameters": "parameters",
    "images_per_second": "images/s (mean over epochs)",
}
EPOCH_METRICS = {
    ("validation", "epoch_accuracy"): "validation accuracy (last epoch)",
    ("validation", "epoch_loss"): "validation loss (last epoch)",
    ("train", "epoch_loss"): "train loss (last epoch)",
}


@dataclass(frozen=True)
class LayerView:
    """What one kernel layer's pictures are drawn from, as numpy.

    Attributes:
        name: the layer's name (the PNG prefix and the TensorBoard scope).
        cell_kernels: `(gy, gx, kh, kw, C, F)` kernels at every `step`-th output cell.
        rgb: the layer sees the red, green and blue channels of the input images.
        similarity: SWS only: `(H', W', G, S)` similarity map, every cell.
        centroids: SWS only: `(G, S, 2)` centroid positions.
        kcp_kernels: SWS only: `(kh, kw, C, F, S)` KCP kernels.
        scaling: SWS only: the side of the centroids' coordinate square.
        step: the cell sampling step of `cell_kernels`.
    """

    name: str
    cell_kernels: np.ndarray
    rgb: bool
    step: int
    similarity: np.ndarray | None = None
    centroids: np.ndarray | None = None
    kcp_kernels: np.ndarray | None = None
    scaling: float = 1.0

    @property
    def sampled_similarity(self) -> np.ndarray | None:
        if self.similarity is None:
            return None
        return visualize.sample_cells(self.similarity, self.step)


def is_kernel_layer(layer) -> bool:
    """Whether `layer` has a kernel per output cell to draw (SWS, Conv2D, locally connected)."""
    return isinstance(layer, (SoftWeightSharingConv2D, keras.layers.Conv2D)) or hasattr(
        layer, "local_kernels"
    )


def layer_view(layer, rgb: bool = False) -> LayerView:
    """The per-cell kernels (sampled) and, for SWS, the centroids of one kernel layer.

    SWS kernels are mixed only at the sampled cells, and a Conv2D kernel is a
    broadcast view, so a large output costs no memory.
    """
    if isinstance(layer, SoftWeightSharingConv2D):
        kcp = layer.kcp_kernels()
        similarity = keras.ops.convert_to_numpy(layer.similarity_map()).astype(np.float32)
        step = visualize.sample_step(*similarity.shape[:2])
        return LayerView(
            name=layer.name,
            cell_kernels=visualize.weighted_kernels(kcp, similarity[::step, ::step]),
            rgb=rgb,
            step=step,
            similarity=similarity,
            centroids=keras.ops.convert_to_numpy(layer.centroid_positions),
            kcp_kernels=kcp,
            scaling=layer.scaling,
        )
    if hasattr(layer, "local_kernels"):
        kernels = np.asarray(layer.local_kernels())
        step = visualize.sample_step(*kernels.shape[:2])
        return LayerView(layer.name, kernels[::step, ::step], rgb, step)
    rows, cols = layer.output.shape[1:3]
    step = visualize.sample_step(rows, cols)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    cells = visualize.shared_kernels(kernel, len(range(0, rows, step)), len(range(0, cols, step)))
    return LayerView(layer.name, cells, rgb, step)


def layer_views(model: keras.Model) -> list[LayerView]:
    """A `LayerView` of every kernel layer of `model`, in order.

    The first kernel layer of a model on 3-channel images is drawn in colour.
    """
    colour_input = model.inputs[0].shape[-1] == 3
    layers = [layer for layer in model.layers if is_kernel_layer(layer)]
    return [layer_view(layer, rgb=colour_input and i == 0) for i, layer in enumerate(layers)]


def layer_pictures(view: LayerView, color_coding: bool) -> dict[str, np.ndarray]:
    """The TensorBoard pictures of one kernel layer, as float images in [0, 1].

    Returns a dict of tag -> array: `weighted_kernels` `(F, h, w, 1)` (input
    channel 0, one image per filter; `(F, h, w, 3)` colour kernels for an RGB
    input); for SWS layers also `centroids` `(G, H', W', 3)`, and with
    `color_coding` `weighted_kernels_color` `(F, h, w, 3)` and `legend`.
    """
    tiles = visualize.kernel_tiles(view.cell_kernels, view.rgb)[0]
    pictures = {"weighted_kernels": tiles if view.rgb else tiles[..., None]}
    if view.similarity is None:
        return pictures
    pictures["centroids"] = np.stack(
        [
            visualize.centroid_map(view.similarity, view.centroids, view.scaling, group)
            for group in range(view.similarity.shape[2])
        ]
    )
    if color_coding:
        pictures["weighted_kernels_color"] = visualize.color_coded_tiles(
            view.cell_kernels, view.sampled_similarity
        )[0]
        factor = max(1, LEGEND_SIDE // len(view.similarity))
        pictures["legend"] = visualize.upscale(pictures["centroids"][0], factor)[None]
    return pictures


def png_pictures(view: LayerView, color_coding: bool) -> dict[str, np.ndarray]:
    """The exported pictures of one kernel layer, each at most `visualize.MAX_SIDE` a side.

    `weighted` (rows: input channels, columns: filters; one colour tile per
    filter for an RGB input) for every kernel layer; for SWS layers also `kcp`
    (rows: KCPs x input channels), `centroids`, and with colour coding
    `weighted_color`.
    """
    factor = max(1, PIXELS_PER_WEIGHT // view.cell_kernels.shape[2])
    tiles = visualize.kernel_tiles(view.cell_kernels, view.rgb)
    pictures = {"weighted": visualize.bounded_picture(tiles, factor)}
    if view.similarity is None:
        return pictures
    pictures["kcp"] = visualize.bounded_picture(visualize.kcp_tiles(view.kcp_kernels), factor)
    if color_coding:
        colored = visualize.color_coded_tiles(view.cell_kernels, view.sampled_similarity)
        pictures["weighted_color"] = visualize.bounded_picture(colored, factor)
    # The centroid map has one pixel per output cell: enlarge it to about 224 pixels.
    centroid_map = visualize.centroid_map(view.similarity, view.centroids, view.scaling)
    pictures["centroids"] = visualize.upscale(
        centroid_map, max(1, CENTROID_MAP_SIDE // len(centroid_map))
    )
    return pictures


def write_png(path: Path, image: np.ndarray) -> None:
    """Writes a float image in [0, 1] (`(h, w)` or `(h, w, c)`) as 8-bit PNG, atomically.

    The bytes go to a temporary name first and are renamed into place
    (`runs.atomic_write`), so a crash or a full disk never leaves a truncated
    PNG under `path`, and a killed process's temporary file is one that
    `--resume` removes.
    """
    if image.ndim == 2:
        image = image[..., None]
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    encoded = tf.io.encode_png(pixels).numpy()
    runs.atomic_write(path, lambda temporary: temporary.write_bytes(encoded))


def export_kernel_pngs(model: keras.Model, folder: Path, color_coding: bool) -> list[Path]:
    """Saves every kernel layer's pictures (`png_pictures`) as `<layer>_<kind>.png` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for view in layer_views(model):
        for kind, image in png_pictures(view, color_coding).items():
            path = folder / f"{view.name}_{kind}.png"
            write_png(path, image)
            written.append(path)
    return written


def hparam_values(config: Config) -> dict[str, bool | int | float | str]:
    """A run's settings as HParams values: pairs as `"24 48"`, unset values as `"none"`.

    Only the settings of `HPARAMS` (what the run is, not where it is) that
    apply to this run: a conv run has no centroid grid.
    """

    def value(item):
        if item is None:
            return "none"
        if isinstance(item, (list, tuple)):
            return " ".join(str(part) for part in item)
        return item

    return {name: value(getattr(config, name)) for name in HPARAMS if config.applies(name)}


def experiment_summary() -> summary_pb2.Summary:
    """The HParams experiment description: one column per setting of `HPARAMS`, the metrics.

    The same for every run, whichever settings apply to it. Boolean settings
    get their domain (so the tab can filter on them); the others are left
    without one, as their values vary from run to run. TensorBoard shows the
    first five hparams marked `differs` by default: the settings of
    `KEY_HPARAMS` are marked so, to be in view when the tab opens.
    """
    hparams = [
        hp.HParam(name, hp.Discrete([False, True]) if DECLARATIONS[name].kind is bool else None)
        for name in sorted(HPARAMS)
    ]
    metrics = [hp.Metric(tag, display_name=title) for tag, title in FINAL_METRICS.items()]
    metrics += [
        hp.Metric(tag, group=group, display_name=title)
        for (group, tag), title in EPOCH_METRICS.items()
    ]
    summary = hp.hparams_config_pb(hparams=hparams, metrics=metrics)
    plugin_data = summary.value[0].metadata.plugin_data
    content = plugin_data_pb2.HParamsPluginData.FromString(plugin_data.content)
    for info in content.experiment.hparam_infos:
        info.differs = info.name in KEY_HPARAMS
    plugin_data.content = content.SerializeToString()
    return summary


def write_hparams(run_root: Path, config: Config) -> None:
    """Records a run's flags for TensorBoard's HParams tab, in the run folder itself.

    Every run writes the same experiment description (`experiment_summary`),
    so the tab lists all runs of a logdir side by side; the run folder's name
    is the trial id, so that two runs with equal flags stay two rows. Call it
    once per start (a resumed run writing it again is harmless: the values
    are the same).
    """
    values = hparam_values(config)
    writer = tf.summary.create_file_writer(str(run_root))
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(experiment_summary().SerializeToString(), step=0)
        hp.hparams(values, trial_id=Path(run_root).name)
    writer.close()


def hparams_metrics(
    epochs: list[dict], test_loss: float, test_accuracy: float, parameters: int
) -> dict[str, float | int | None]:
    """The final metrics of a run from its `metrics.json` epoch records and its test result.

    `best_val_accuracy` is the highest `val_accuracy` of any epoch and
    `images_per_second` the mean over epochs (None without epochs).
    """
    accuracies = [epoch["val_accuracy"] for epoch in epochs if "val_accuracy" in epoch]
    speeds = [epoch["images_per_second"] for epoch in epochs if "images_per_second" in epoch]
    return {
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "best_val_accuracy": max(accuracies) if accuracies else None,
        "parameters": int(parameters),
        "images_per_second": sum(speeds) / len(speeds) if speeds else None,
    }


def write_final_metrics(run_root: Path, metrics: dict, step: int) -> None:
    """Writes a run's final metrics (keys of `FINAL_METRICS`) as scalars beside its HParams.

    `step` is the number of epochs trained; None values are skipped.
    """
    unknown = sorted(set(metrics) - set(FINAL_METRICS))
    if unknown:
        raise ValueError(
            f"Expected metrics among {sorted(FINAL_METRICS)}. Received unknown {unknown}."
        )
    writer = tf.summary.create_file_writer(str(run_root))
    with writer.as_default(step=step):
        for tag, value in metrics.items():
            if value is not None:
                tf.summary.scalar(tag, float(value))
    writer.close()


class LayerSummaries(keras.callbacks.Callback):
    """Writes the kernel layers' pictures every epoch, and per `log_verbosity` more.

    verbosity 0: kernel images (every kernel layer) and centroids (SWS); 1: + gradient histograms of a
    fixed probe batch; 3: + activation histograms of every layer. (Weight
    histograms, verbosity 2, come from `keras.callbacks.TensorBoard`.)
    """

    def __init__(self, log_dir: Path, color_coding: bool, verbosity: int, probe_batch):
        super().__init__()
        self.writer = tf.summary.create_file_writer(str(log_dir / LAYERS_RUN))
        self.color_coding = color_coding
        self.verbosity = verbosity
        self.probe_images, self.probe_labels = probe_batch

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default(step=epoch):
            for view in layer_views(self.model):
                self._write_layer(view)
            if self.verbosity >= 1:
                self._write_gradients()
            if self.verbosity >= 3:
                self._write_activations()
        self.writer.flush()

    def _write_layer(self, view: LayerView):
        with tf.name_scope(view.name):
            for tag, images in layer_pictures(view, self.color_coding).items():
                tf.summary.image(tag, images, max_outputs=len(images))
            if view.centroids is not None:
                tf.summary.histogram("centroid_y", view.centroids[..., 0])
                tf.summary.histogram("centroid_x", view.centroids[..., 1])

    def _write_gradients(self):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            predictions = self.model(self.probe_images, training=False)
            loss = keras.losses.sparse_categorical_crossentropy(self.probe_labels, predictions)
            loss = tf.reduce_mean(loss)
        gradients = tape.gradient(loss, variables)
        with tf.name_scope("gradients"):
            for variable, gradient in zip(variables, gradients):
                if gradient is not None:
                    tf.summary.histogram(variable.path.replace("/", "."), gradient)

    def _write_activations(self):
        probe = keras.Model(self.model.input, [layer.output for layer in self.model.layers[1:]])
        with tf.name_scope("activations"):
            for layer, output in zip(self.model.layers[1:], probe(self.probe_images)):
                tf.summary.histogram(layer.name, output)
                tf.summary.scalar(
                    f"{layer.name}_sparsity", tf.reduce_mean(tf.cast(output == 0, tf.float32))
                )

    def on_train_end(self, logs=None):
        self.writer.close()


def tensorboard_callback(log_dir: Path, verbosity: int) -> keras.callbacks.TensorBoard:
    """Keras's own TensorBoard callback: loss/accuracy per epoch, weights at verbosity >= 2."""
    return keras.callbacks.TensorBoard(
        log_dir=str(log_dir),
        histogram_freq=1 if verbosity >= 2 else 0,
        write_graph=False,
        update_freq="epoch",
    )
