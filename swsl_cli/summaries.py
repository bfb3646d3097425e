"""TensorBoard summaries and PNG export of the soft weight sharing layers.

Scalars and weight histograms come from `keras.callbacks.TensorBoard` (runs
`train` and `validation`); the layer pictures, centroids, gradients and
activations are written here under the run `layers`, one step per epoch.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from swsl_cli import visualize
from swsl_cli.model import sws_layers

LAYERS_RUN = "layers"
PNG_DIR = "kernel_images"


def layer_arrays(layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A SWS layer's KCP kernels, similarity map and centroids, as numpy."""
    return (
        layer.kcp_kernels(),
        keras.ops.convert_to_numpy(layer.similarity_map()),
        keras.ops.convert_to_numpy(layer.centroid_positions),
    )


def layer_pictures(layer, color_coding: bool) -> dict[str, np.ndarray]:
    """The pictures of one SWS layer, as float images in [0, 1].

    Returns a dict of tag -> array: `weighted_kernels` `(F, h, w, 1)` (input
    channel 0, one image per filter), `centroids` `(G, H', W', 3)`, and with
    `color_coding` `weighted_kernels_color` `(F, h, w, 3)` and `legend`.
    """
    kernels, similarity, centroids = layer_arrays(layer)
    pictures = {"weighted_kernels": visualize.kernel_tiles(kernels, similarity)[0][..., None]}
    pictures["centroids"] = np.stack(
        [
            visualize.centroid_map(similarity, centroids, layer.scaling, group)
            for group in range(similarity.shape[2])
        ]
    )
    if color_coding:
        pictures["weighted_kernels_color"] = visualize.color_coded_tiles(kernels, similarity)[0]
        pictures["legend"] = visualize.upscale(pictures["centroids"][0], 4)[None]
    return pictures


def write_png(path: Path, image: np.ndarray) -> None:
    """Writes a float image in [0, 1] (`(h, w)` or `(h, w, c)`) as 8-bit PNG."""
    if image.ndim == 2:
        image = image[..., None]
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    path.write_bytes(tf.io.encode_png(pixels).numpy())


def export_kernel_pngs(model: keras.Model, folder: Path, color_coding: bool) -> list[Path]:
    """Saves every SWS layer's weighted and per-KCP kernels as PNG files in `folder`.

    Per layer: `<layer>_weighted.png` (rows: input channels, columns: filters),
    `<layer>_kcp.png` (rows: KCPs x input channels), `<layer>_centroids.png`,
    and with colour coding `<layer>_weighted_color.png`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for layer in sws_layers(model):
        kernels, similarity, centroids = layer_arrays(layer)
        factor = max(1, 8 // kernels.shape[0])
        images = {
            "weighted": visualize.mosaic(visualize.kernel_tiles(kernels, similarity)),
            "kcp": visualize.mosaic(visualize.kcp_tiles(kernels)),
        }
        if color_coding:
            images["weighted_color"] = visualize.mosaic(
                visualize.color_coded_tiles(kernels, similarity)
            )
        images = {kind: visualize.upscale(image, factor) for kind, image in images.items()}
        # The centroid map has one pixel per output cell: enlarge it to about 224 pixels.
        centroid_map = visualize.centroid_map(similarity, centroids, layer.scaling)
        images["centroids"] = visualize.upscale(centroid_map, max(1, 224 // len(centroid_map)))
        for kind, image in images.items():
            path = folder / f"{layer.name}_{kind}.png"
            write_png(path, image)
            written.append(path)
    return written


class LayerSummaries(keras.callbacks.Callback):
    """Writes the SWS layers' pictures every epoch, and per `log_verbosity` more.

    verbosity 0: kernel images and centroids; 1: + gradient histograms of a
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
            for layer in sws_layers(self.model):
                self._write_layer(layer)
            if self.verbosity >= 1:
                self._write_gradients()
            if self.verbosity >= 3:
                self._write_activations()
        self.writer.flush()

    def _write_layer(self, layer):
        with tf.name_scope(layer.name):
            for tag, images in layer_pictures(layer, self.color_coding).items():
                tf.summary.image(tag, images, max_outputs=len(images))
            centroids = keras.ops.convert_to_numpy(layer.centroid_positions)
            tf.summary.histogram("centroid_y", centroids[..., 0])
            tf.summary.histogram("centroid_x", centroids[..., 1])

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
        probe = keras.Model(self.model.inputs, [layer.output for layer in self.model.layers[1:]])
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
