"""`CellPatches.apply` with TensorFlow's own kernels: the same numbers, less data moved.

`CellPatches.reference_apply` (`keras.ops`) is the definition; this module
computes the same products on TensorFlow, where two steps of the reference
cost more than they need to on a CPU:

- the patch gather's gradient (each pixel's sum of the patch rows that read
  it) pads the upstream gradient with a row of zeros, gathers a
  `(pixels, readers, C * batch)` tensor and sums it; here it is one
  `SparseSegmentSum` over the sorted readers, with no padding and no
  intermediate tensor;
- the cells' kernels arrive `(cells, K, F)` and `ops.matmul` has no transposed
  operands, so the reference transposes them (and their gradient) every step;
  `tf.linalg.matmul(..., adjoint_a=True)` reads them in place, and the
  product comes out `(cells, batch, F)`, one axis swap from the layer's output.

Where the compiled per-cell kernels can be built (`swsl_cli.layers.cell_ops`),
float32 products outside XLA take them instead: they read every patch where it
lies in the input, so neither the patches nor their gradient are written out.
Other dtypes (mixed precision) and XLA keep the ops above.

Imported only on TensorFlow (`CellPatches` decides, `cells.fast_path_measured_faster`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def in_xla_context() -> bool:
    """Whether the graph being built will be compiled by XLA (`jit_compile=True`)."""
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def compiled_kernels_for(*tensors):
    """The compiled kernels' op module for float32 `tensors` outside XLA, else None."""
    if any(t.dtype != tf.float32 for t in tensors) or in_xla_context():
        return None
    from swsl_cli.layers import cell_ops

    return cell_ops.library()


class TensorFlowCellPatches:
    """`CellPatches`'s gather and per-cell product on TensorFlow.

    Args:
        flat: int array, the flat input pixel read by each patch row, in
            `(cell, tap)` order; `pixels` (one past the last) reads zeros.
        pixels: the number of input pixels, `rows * cols`.
        output_size: `(H', W')`.
    """

    def __init__(self, flat: np.ndarray, pixels: int, output_size):
        flat = np.asarray(flat, dtype="int32")
        self.flat = flat
        self.pixels = pixels
        self.output_size = tuple(output_size)
        # The gradient's segments: each pixel's readers (patch rows), sorted by pixel;
        # rows in the padding read no pixel and are left out.
        # The compiled kernels' table: the pixel under each tap of each cell, -1 in the padding.
        self.table = (
            np.where(flat < pixels, flat, -1)
            .astype("int32")
            .reshape(int(np.prod(self.output_size)), -1)
        )
        order = np.argsort(flat, kind="stable")
        inside = flat[order] < pixels
        self.reader_rows = order[inside].astype("int32")
        self.reader_pixels = flat[order][inside].astype("int32")

    def gather(self, pixels):
        """`(pixels, n)` -> the patch rows `(len(flat), n)`; zeros in the padding."""

        @tf.custom_gradient
        def gather(values):
            def grad(upstream):
                if in_xla_context():  # XLA has no SparseSegmentSum kernel
                    return tf.math.unsorted_segment_sum(
                        tf.gather(upstream, self.reader_rows),
                        self.reader_pixels,
                        num_segments=self.pixels,
                    )
                return tf.sparse.segment_sum(
                    upstream, self.reader_rows, self.reader_pixels, num_segments=self.pixels
                )

            return tf.gather(tf.pad(values, ((0, 1), (0, 0))), self.flat), grad

        return gather(pixels)

    def apply(self, inputs, kernels):
        """`CellPatches.apply`: inputs `(batch, rows, cols, C)`, kernels `(cells, K, F)`."""
        rows, cols, _ = inputs.shape[1:]
        cells, size, filters = kernels.shape
        compiled = compiled_kernels_for(inputs, kernels)
        if compiled is not None:
            return self.compiled_apply(compiled, inputs, kernels)
        pixels = tf.reshape(tf.transpose(inputs, (1, 2, 3, 0)), (rows * cols, -1))
        patches = tf.reshape(self.gather(pixels), (cells, size, -1))  # (cells, K, batch)
        outputs = tf.linalg.matmul(patches, kernels, adjoint_a=True)  # (cells, batch, F)
        outputs = tf.transpose(outputs, (1, 0, 2))
        return tf.reshape(outputs, (-1, *self.output_size, filters))

    @staticmethod
    def mix_per_filter(coefficients, weights):
        """`CellPatches.mix_per_filter` by the compiled kernels, else None (other dtypes, XLA)."""
        compiled = compiled_kernels_for(coefficients, weights)
        return None if compiled is None else compiled.swsl_mix_kernels(coefficients, weights)

    def compiled_apply(self, compiled, inputs, kernels):
        """`apply` by the compiled kernels (`cell_matmul.cc`): no patch tensor, forward or back.

        The gradients are two ops, the kernels' and the input's, so a graph
        that needs only the kernels' (a first layer) runs only that one.
        """
        rows, cols, channels = inputs.shape[1:]
        table = tf.constant(self.table)

        @tf.custom_gradient
        def product(x, kernels):
            flat = tf.reshape(x, (-1, rows * cols, channels))
            outputs = compiled.swsl_cell_matmul(flat, kernels, table)  # (batch, cells, F)

            def grad(upstream):
                kernels_grad = compiled.swsl_cell_matmul_kernel_grad(flat, kernels, table, upstream)
                inputs_grad = compiled.swsl_cell_matmul_input_grad(flat, kernels, table, upstream)
                return tf.reshape(inputs_grad, tf.shape(x)), kernels_grad

            return outputs, grad

        outputs = product(inputs, tf.convert_to_tensor(kernels))
        return tf.reshape(outputs, (-1, *self.output_size, kernels.shape[2]))
