"""TensorBoard events and PNG pictures of a run.

Everything of one run goes to one event stream in the run folder itself, so
TensorBoard lists each run once and shows its train and test curves in one
colour. Tags are grouped by what they show, and TensorBoard sorts the groups
by name, so the curves come first: `accuracy/train`, `accuracy/test`,
`loss/train`, `loss/test` (`validation` instead of `test` with
`--val_split`), `optimizer/learning_rate`, then `pictures/<layer>/...`,
`specialisation/<layer>`, `speed/images_per_second` and, by verbosity,
`weights/...` and `outputs/...`; one point per epoch (step = the epoch
number). Each kernel layer (`SoftWeightSharingConv2D`, `Conv2D`, and any
layer with `local_kernels()`, as `LocallyConnected2D` and
`LowRankLocallyConnected2D`) gets the same pictures: `kernels` (the kernel
seen at 4 x 4 cells, per filter) and
`specialisation` (where and how much the kernel differs from the layer's
mean kernel), and for SWS `centroids`. The run's settings are its HParams;
its final figures are in `metrics.json` and, as the last points of those
curves, in the HParams tab.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from swsl_cli import visualize
from swsl_cli.layers import SoftWeightSharingConv2D
from swsl_cli.runner import runs
from swsl_cli.runner.config import HPARAMS, Config


@dataclass(frozen=True)
class LayerView:
    """What one kernel layer's pictures are drawn from, as numpy.

    Attributes:
        name: the layer's name (the PNG prefix and the TensorBoard group).
        cell_kernels: `(gy, gx, kh, kw, C, F)` kernels at every `step`-th output cell.
        summary_kernels: `(4, 4, kh, kw, C, F)` kernels at the summary cells
            (`visualize.summary_cells`: the corners and two cells between).
        specialisation: `(H', W')`, `visualize.specialisation_map` of every cell.
        rgb: the layer sees the red, green and blue channels of the input images.
        step: the cell sampling step of `cell_kernels`.
        similarity: SWS only: `(H', W', G, S)` similarity map, every cell.
        centroids: SWS only: `(G, S, 2)` centroid positions.
        kcp_kernels: SWS only: `(kh, kw, C, F, S)` KCP kernels.
        scaling: SWS only: the side of the centroids' coordinate square.
    """

    name: str
    cell_kernels: np.ndarray
    summary_kernels: np.ndarray
    specialisation: np.ndarray
    rgb: bool
    step: int
    similarity: np.ndarray | None = None
    centroids: np.ndarray | None = None
    kcp_kernels: np.ndarray | None = None
    scaling: float = 1.0

    @property
    def sampled_similarity(self) -> np.ndarray | None:
        return None if self.similarity is None else self.similarity[:: self.step, :: self.step]

    @property
    def summary_similarity(self) -> np.ndarray | None:
        return None if self.similarity is None else visualize.summary_cells(self.similarity)


def is_kernel_layer(layer) -> bool:
    """Whether `layer` has a kernel per output cell to draw (SWS, Conv2D, locally connected)."""
    return isinstance(layer, (SoftWeightSharingConv2D, keras.layers.Conv2D)) or hasattr(
        layer, "local_kernels"
    )


def layer_view(layer, rgb: bool = False) -> LayerView:
    """The per-cell kernels (sampled), the specialisation map and, for SWS, the centroids.

    SWS kernels are mixed only at the drawn cells (its specialisation comes
    from the KCP kernels' Gram matrices), and a Conv2D kernel is a broadcast
    view, so a large output costs little memory.
    """
    if isinstance(layer, SoftWeightSharingConv2D):
        kcp = layer.kcp_kernels()
        similarity = keras.ops.convert_to_numpy(layer.similarity_map()).astype(np.float32)
        step = visualize.sample_step(*similarity.shape[:2])
        return LayerView(
            name=layer.name,
            cell_kernels=visualize.weighted_kernels(kcp, similarity[::step, ::step]),
            summary_kernels=visualize.weighted_kernels(kcp, visualize.summary_cells(similarity)),
            specialisation=visualize.sws_specialisation_map(kcp, similarity),
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
        return LayerView(
            layer.name,
            kernels[::step, ::step],
            visualize.summary_cells(kernels),
            visualize.specialisation_map(kernels),
            rgb,
            step,
        )
    rows, cols = layer.output.shape[1:3]
    step = visualize.sample_step(rows, cols)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    sampled = visualize.shared_kernels(kernel, len(range(0, rows, step)), len(range(0, cols, step)))
    summary = visualize.shared_kernels(
        kernel, len(visualize.summary_indices(rows)), len(visualize.summary_indices(cols))
    )
    return LayerView(layer.name, sampled, summary, np.zeros((rows, cols), np.float32), rgb, step)


def layer_views(model: keras.Model) -> list[LayerView]:
    """A `LayerView` of every kernel layer of `model`, in order.

    The first kernel layer of a model on 3-channel images is drawn in colour.
    """
    colour_input = model.inputs[0].shape[-1] == 3
    layers = [layer for layer in model.layers if is_kernel_layer(layer)]
    views = [layer_view(layer, rgb=colour_input and i == 0) for i, layer in enumerate(layers)]
    if views and views[0].rgb and views[0].cell_kernels.shape[4] > 3:
        # A CoordConv layer sees two coordinate channels after the colours: draw the colours.
        views[0] = dataclasses.replace(
            views[0],
            cell_kernels=views[0].cell_kernels[..., :3, :],
            summary_kernels=views[0].summary_kernels[..., :3, :],
        )
    return views


def layer_pictures(view: LayerView, color_coding: bool) -> dict[str, np.ndarray]:
    """The TensorBoard pictures of one kernel layer, RGB float images `(h, w, 3)` in [0, 1].

    `kernels` (`visualize.summary_picture`) and `specialisation` for every
    kernel layer; for SWS layers also `centroids` (each cell coloured by its
    nearest centroid, one map per centroid set) and, with `color_coding`,
    `kernels_color` (the kernels tinted by their cell's nearest centroid).
    """
    pictures = {
        "kernels": visualize.summary_picture(view.summary_kernels, view.rgb),
        "specialisation": visualize.specialisation_picture(
            view.specialisation, view.centroids, view.scaling
        ),
    }
    if view.similarity is None:
        return pictures
    pictures["centroids"] = visualize.centroid_maps(view.similarity, view.centroids, view.scaling)
    if color_coding:
        pictures["kernels_color"] = visualize.summary_picture(
            view.summary_kernels, similarity=view.summary_similarity
        )
    return pictures


def png_pictures(view: LayerView, color_coding: bool) -> dict[str, np.ndarray]:
    """The exported pictures of one kernel layer: the TensorBoard ones, plus the full detail.

    `kernels_full`: every sampled cell's kernel for every input channel (rows)
    and filter (columns; one colour tile per filter for an RGB input); for SWS
    also `kcp` (each KCP's own kernel: rows KCPs x input channels, columns
    filters) and, with colour coding, `kernels_color_full`.
    """
    pictures = layer_pictures(view, color_coding)
    tiles = visualize.kernel_tiles(view.cell_kernels, view.rgb)
    pictures["kernels_full"] = visualize.full_picture(tiles)
    if view.similarity is None:
        return pictures
    pictures["kcp"] = visualize.full_picture(visualize.kcp_tiles(view.kcp_kernels))
    if color_coding:
        colored = visualize.color_coded_tiles(view.cell_kernels, view.sampled_similarity)
        pictures["kernels_color_full"] = visualize.full_picture(colored)
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


def hparam_values(config: Config, parameters: int | None = None) -> dict:
    """A run's settings as HParams values: pairs as `"24 48"`, unset values as `"none"`.

    Only the settings of `HPARAMS` (what the run is, not where it is) that
    apply to this run: a conv run has no centroid grid. `parameters`, the
    model's size, is shown beside them.
    """

    def value(item):
        if item is None:
            return "none"
        if isinstance(item, (list, tuple)):
            return " ".join(str(part) for part in item)
        return item

    values = {name: value(getattr(config, name)) for name in HPARAMS if config.applies(name)}
    if parameters is not None:
        values["parameters"] = int(parameters)
    return values


def evaluation_split(config: Config) -> str:
    """The name of the split each epoch is evaluated on: `validation` or, by default, `test`."""
    return "validation" if config.val_split else "test"


class RunSummaries:
    """The TensorBoard events of one run, written into its folder (one entry in the run list).

    HParams: the run's settings, written once; TensorBoard's HParams tab infers
    the columns from every run of the logdir, so the settings that differ
    between runs are the ones it shows first, and its metric columns are the
    last values of each run's scalars.
    """

    def __init__(self, run_root: Path, config: Config):
        self.writer = tf.summary.create_file_writer(str(run_root))
        self.evaluation = evaluation_split(config)

    def hparams(self, config: Config, parameters: int, run_name: str) -> None:
        """The run's settings and size; `run_name` is the trial id, so equal settings stay two rows."""
        with self.writer.as_default():
            hp.hparams(hparam_values(config, parameters), trial_id=run_name)
        self.writer.flush()

    def epoch(self, step: int, metrics: dict, learning_rate: float) -> None:
        """One completed epoch's scalars: `metrics` as `metrics.json` records them."""
        tags = {
            "loss": "loss/train",
            "accuracy": "accuracy/train",
            "val_loss": f"loss/{self.evaluation}",
            "val_accuracy": f"accuracy/{self.evaluation}",
            "images_per_second": "speed/images_per_second",
        }
        with self.writer.as_default(step=step):
            for name, tag in tags.items():
                if name in metrics:
                    tf.summary.scalar(tag, metrics[name])
            tf.summary.scalar("optimizer/learning_rate", learning_rate)
        self.writer.flush()

    def final(self, step: int, test_loss: float, test_accuracy: float) -> None:
        """The test split's figures, when the epochs were evaluated on another split:
        one point each at the last epoch (the test split is evaluated once, at the end)."""
        if self.evaluation == "test":
            return  # the last epoch's test points are these figures already
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss/test", test_loss)
            tf.summary.scalar("accuracy/test", test_accuracy)
        self.writer.flush()

    def layers(self, model: keras.Model, step: int, color_coding: bool) -> None:
        """Every kernel layer's pictures and specialisation, and the SWS centroids."""
        with self.writer.as_default(step=step):
            for view in layer_views(model):
                for tag, image in layer_pictures(view, color_coding).items():
                    tf.summary.image(f"pictures/{view.name}/{tag}", image[None], max_outputs=1)
                if view.centroids is not None:
                    tf.summary.histogram(f"weights/{view.name}.centroid_y", view.centroids[..., 0])
                    tf.summary.histogram(f"weights/{view.name}.centroid_x", view.centroids[..., 1])
                tf.summary.scalar(f"specialisation/{view.name}", float(view.specialisation.mean()))

    def weights(self, model: keras.Model, step: int) -> None:
        with self.writer.as_default(step=step):
            for variable in model.trainable_variables:
                tf.summary.histogram(f"weights/{variable.path.replace('/', '.')}", variable)

    def gradients(self, model: keras.Model, probe_batch, step: int) -> None:
        """Gradient histograms of a fixed probe batch."""
        images, labels = probe_batch
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            predictions = model(images, training=False)
            loss = keras.losses.sparse_categorical_crossentropy(labels, predictions)
            loss = tf.reduce_mean(loss)
        gradients = tape.gradient(loss, variables)
        with self.writer.as_default(step=step):
            for variable, gradient in zip(variables, gradients):
                if gradient is not None:
                    path = variable.path.replace("/", ".")
                    tf.summary.histogram(f"weights/{path}.gradient", gradient)

    def activations(self, model: keras.Model, probe_images, step: int) -> None:
        """Activation histograms and sparsity of every layer on the probe batch."""
        probe = keras.Model(model.input, [layer.output for layer in model.layers[1:]])
        with self.writer.as_default(step=step):
            for layer, output in zip(model.layers[1:], probe(probe_images)):
                tf.summary.histogram(f"outputs/{layer.name}", output)
                tf.summary.scalar(
                    f"outputs/{layer.name}_sparsity",
                    tf.reduce_mean(tf.cast(output == 0, tf.float32)),
                )

    def close(self) -> None:
        self.writer.close()


class LayerSummaries(keras.callbacks.Callback):
    """Writes the kernel layers' pictures every epoch, and per `log_verbosity` more.

    verbosity 0: pictures, specialisation and centroids; 1: + gradient
    histograms of a fixed probe batch; 2: + weight histograms; 3: +
    activation histograms and sparsity of every layer.
    """

    def __init__(self, summaries: RunSummaries, color_coding: bool, verbosity: int, probe_batch):
        super().__init__()
        self.summaries = summaries
        self.color_coding = color_coding
        self.verbosity = verbosity
        self.probe_batch = probe_batch

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        self.summaries.layers(self.model, step, self.color_coding)
        if self.verbosity >= 1:
            self.summaries.gradients(self.model, self.probe_batch, step)
        if self.verbosity >= 2:
            self.summaries.weights(self.model, step)
        if self.verbosity >= 3:
            self.summaries.activations(self.model, self.probe_batch[0], step)
        self.summaries.writer.flush()


def final_metrics(
    epochs: list[dict], test_loss: float, test_accuracy: float, parameters: int
) -> dict[str, float | int | None]:
    """The final figures of a run for `metrics.json`, from its epoch records and test result.

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
