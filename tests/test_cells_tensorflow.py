"""CellPatches' TensorFlow fast path against its `keras.ops` reference: outputs and gradients.

TensorFlow only (the fast path exists there); the reference itself is checked
against numpy on every backend by the layer tests. The fast path is tested both
ways it computes: with the compiled per-cell kernels (`cell_ops`, float32
outside XLA) and with TensorFlow's own ops (the other dtypes, XLA, machines
without a compiler).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from swsl_cli import LocallyConnected2D, LowRankLocallyConnected2D, SoftWeightSharingConv2D
from swsl_cli.layers import cell_ops
from swsl_cli.layers.cells import CellPatches, conv_output_size

GEOMETRIES = [
    # input (batch, rows, cols, C), kernel, strides, padding
    ((3, 9, 8, 2), (3, 3), (1, 1), "same"),
    ((3, 9, 8, 2), (3, 5), (2, 1), "same"),
    ((2, 10, 7, 3), (2, 4), (2, 2), "valid"),
    ((4, 7, 7, 1), (7, 7), (1, 1), "same"),  # the runner's first layer: every cell pads
    ((2, 5, 6, 4), (1, 1), (1, 1), "valid"),
    # batches and filter counts that do not fill the compiled kernels' vectors of 16
    ((17, 6, 5, 5), (3, 2), (2, 1), "same"),
    ((65, 4, 4, 7), (3, 3), (1, 1), "same"),
    ((1, 5, 7, 3), (4, 3), (3, 2), "valid"),
]
FILTERS = {(65, 4, 4, 7): 50, (17, 6, 5, 5): 17, (1, 5, 7, 3): 1}


@pytest.fixture(params=["compiled", "tensorflow ops"])
def kernels_kind(request, monkeypatch):
    """The fast path with the compiled per-cell kernels, or with TensorFlow's own ops."""
    if request.param == "compiled":
        assert cell_ops.library() is not None, cell_ops.status()
    else:
        monkeypatch.setattr(cell_ops, "library", lambda: None)
    return request.param


def patches_and_kernels(rng, shape, kernel_size, strides, padding, filters=None):
    filters = filters or FILTERS.get(shape, 5)
    output_size = conv_output_size(shape[1:3], kernel_size, strides, padding)
    fast = CellPatches(shape[1:3], output_size, kernel_size, strides, padding, fast_path=True)
    size = kernel_size[0] * kernel_size[1] * shape[3]
    cells = output_size[0] * output_size[1]
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    kernels = tf.constant(rng.normal(size=(cells, size, filters)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(shape[0], *output_size, filters)).astype("float32"))
    return fast, x, kernels, upstream


def outputs_and_gradients(apply, x, kernels, upstream):
    with tf.GradientTape() as tape:
        tape.watch([x, kernels])
        y = apply(x, kernels)
        loss = tf.reduce_sum(y * upstream)
    return [y, *tape.gradient(loss, [x, kernels])]


def as_numpy(tensors):
    return [t.numpy() for t in tensors]


@pytest.mark.parametrize("shape, kernel_size, strides, padding", GEOMETRIES)
def test_fast_path_equals_the_reference_in_outputs_and_gradients(
    rng, kernels_kind, shape, kernel_size, strides, padding
):
    fast, x, kernels, upstream = patches_and_kernels(rng, shape, kernel_size, strides, padding)
    assert fast.fast is not None
    got = as_numpy(outputs_and_gradients(fast.apply, x, kernels, upstream))
    expected = as_numpy(outputs_and_gradients(fast.reference_apply, x, kernels, upstream))
    for name, g, e in zip(("outputs", "input gradient", "kernel gradient"), got, expected):
        assert g.shape == e.shape, name
        # float32 sums of up to 65 * 63 terms, in another order: rounding relative to their size
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6 * np.abs(e).max(), err_msg=name)


def test_fast_path_inside_a_traced_function_and_in_bfloat16(rng, kernels_kind):
    fast, x, kernels, upstream = patches_and_kernels(rng, (3, 9, 8, 2), (3, 3), (1, 1), "same")
    traced = tf.function(lambda x, k: outputs_and_gradients(fast.apply, x, k, upstream))
    got = as_numpy(traced(x, kernels))
    expected = as_numpy(outputs_and_gradients(fast.reference_apply, x, kernels, upstream))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    half = [tf.cast(t, "bfloat16") for t in (x, kernels, upstream)]
    low = as_numpy(outputs_and_gradients(fast.apply, *half))
    for g, e in zip(low, expected):
        assert g.dtype == tf.bfloat16.as_numpy_dtype
        np.testing.assert_allclose(g.astype("float32"), e, rtol=0.05, atol=0.1)


def test_the_fast_path_is_taken_on_the_cpu_unless_refused():
    geometry = ((8, 8), (8, 8), (3, 3), (1, 1), "same")
    assert CellPatches(*geometry).fast is not None  # TensorFlow, no GPU
    assert CellPatches(*geometry, fast_path=False).fast is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: LocallyConnected2D(4, 3, padding="same", bias_initializer="random_normal"),
        lambda: SoftWeightSharingConv2D(4, 3, centroids=(2, 2), implementation="local"),
        lambda: SoftWeightSharingConv2D(
            4, 3, centroids=(2, 2), per_feature=True, centroids_trainable=True
        ),
        lambda: LowRankLocallyConnected2D(4, 3, rank=3, padding="same"),
    ],
)
def test_every_per_cell_layer_gives_the_same_numbers_on_either_path(rng, kernels_kind, make):
    x = tf.constant(rng.normal(size=(2, 8, 7, 3)).astype("float32"))
    results = []
    for fast_path in (True, False):
        keras.utils.set_random_seed(3)
        layer = make()
        layer.build(x.shape)
        layer._cell_patches.fast = None if not fast_path else layer._cell_patches.fast
        assert (layer._cell_patches.fast is not None) == fast_path
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x)))
        gradients = tape.gradient(loss, [x, *layer.trainable_variables])
        results.append([g.numpy() for g in gradients])
    for fast, reference in zip(*results):
        np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5)


def test_fast_path_compiles_under_xla_and_equals_the_reference(rng):
    """`--jit_compile on`: XLA has no SparseSegmentSum, so the gradient takes a segment sum
    XLA compiles; the numbers stay the reference's."""
    fast, x, kernels, upstream = patches_and_kernels(rng, (4, 7, 7, 1), (7, 7), (1, 1), "same")
    compiled = tf.function(
        lambda x, k: outputs_and_gradients(fast.apply, x, k, upstream), jit_compile=True
    )
    got = as_numpy(compiled(x, kernels))
    expected = as_numpy(outputs_and_gradients(fast.reference_apply, x, kernels, upstream))
    for name, g, e in zip(("outputs", "input gradient", "kernel gradient"), got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=name)


def graph_ops(function, *specs) -> set[str]:
    return {
        op.type for op in tf.function(function).get_concrete_function(*specs).graph.get_operations()
    }


def test_float32_outside_xla_takes_the_compiled_kernels_and_writes_no_patches(rng):
    fast, x, kernels, upstream = patches_and_kernels(rng, (4, 7, 7, 1), (7, 7), (1, 1), "same")
    assert cell_ops.library() is not None, cell_ops.status()
    specs = (tf.TensorSpec((None, 7, 7, 1)), tf.TensorSpec(kernels.shape))
    step = graph_ops(lambda x, k: outputs_and_gradients(fast.apply, x, k, upstream), *specs)
    assert {"SwslCellMatmul", "SwslCellMatmulKernelGrad", "SwslCellMatmulInputGrad"} <= step
    assert not step & {"GatherV2", "BatchMatMulV2", "SparseSegmentSumWithNumSegments"}
    half = graph_ops(
        fast.apply,
        tf.TensorSpec((None, 7, 7, 1), "bfloat16"),
        tf.TensorSpec(kernels.shape, "bfloat16"),
    )
    assert "BatchMatMulV2" in half and not any(op.startswith("Swsl") for op in half)


def test_the_compiled_kernels_give_the_reference_at_the_runners_shapes(rng):
    """Batch 64 and the runner's two layers: four full vectors of images a block."""
    assert cell_ops.library() is not None, cell_ops.status()
    for shape, kernel, filters in (((64, 28, 28, 1), (7, 7), 24), ((64, 14, 14, 24), (3, 3), 48)):
        fast, x, kernels, upstream = patches_and_kernels(
            rng, shape, kernel, (1, 1), "same", filters
        )
        got = as_numpy(outputs_and_gradients(fast.apply, x, kernels, upstream))
        expected = as_numpy(outputs_and_gradients(fast.reference_apply, x, kernels, upstream))
        for name, g, e in zip(("outputs", "input gradient", "kernel gradient"), got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4, err_msg=name)


def test_second_order_gradients_equal_the_reference(rng, kernels_kind):
    """A gradient of the gradients (a gradient penalty, a Hessian-vector product) through
    either path gives the reference's numbers."""
    fast, x, kernels, upstream = patches_and_kernels(rng, (3, 6, 5, 2), (3, 3), (2, 1), "same")

    def penalty(apply):
        with tf.GradientTape() as outer:
            outer.watch([x, kernels])
            with tf.GradientTape() as inner:
                inner.watch([x, kernels])
                loss = tf.reduce_sum(apply(x, kernels) * upstream)
            dx, dk = inner.gradient(loss, [x, kernels])
            second = tf.reduce_sum(tf.sin(dx)) + tf.reduce_sum(tf.sin(dk))
        return [t.numpy() for t in outer.gradient(second, [x, kernels])]

    for g, e in zip(penalty(fast.apply), penalty(fast.reference_apply)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def reference_mix(coefficients, weights):
    """`SoftWeightSharingConv2D`'s per-filter kernel mix as `keras.ops` writes it."""
    return tf.einsum("cfs,kfs->ckf", coefficients, weights)


@pytest.mark.parametrize(
    "cells, size, filters, centroids",
    [(12, 18, 5, 4), (7, 3, 17, 3), (1, 2, 1, 1), (196, 216, 48, 4)],
)
def test_the_compiled_kernel_mix_equals_the_reference_to_the_second_order(
    rng, cells, size, filters, centroids
):
    fast = CellPatches((5, 5), (5, 5), (3, 3), (1, 1), "same", fast_path=True)
    coefficients = tf.constant(rng.normal(size=(cells, filters, centroids)).astype("float32"))
    weights = tf.constant(rng.normal(size=(size, filters, centroids)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(cells, size, filters)).astype("float32"))

    def results(mix):
        with tf.GradientTape() as outer:
            outer.watch([coefficients, weights])
            with tf.GradientTape() as inner:
                inner.watch([coefficients, weights])
                mixed = mix(coefficients, weights)
                loss = tf.reduce_sum(mixed * upstream)
            first = inner.gradient(loss, [coefficients, weights])
            second = tf.reduce_sum(tf.square(first[0])) + tf.reduce_sum(first[0] * first[1][0])
        return [mixed, *first, *outer.gradient(second, [coefficients, weights])]

    assert fast.mix_per_filter(coefficients, weights) is not None, cell_ops.status()
    names = ("mixed", "coefficients' gradient", "weights' gradient", "second order", "second")
    for name, got, expected in zip(names, results(fast.mix_per_filter), results(reference_mix)):
        scale = np.abs(expected.numpy()).max()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * scale, err_msg=name)


def test_the_compiled_kernel_mix_is_float32_outside_xla_only(rng):
    fast = CellPatches((5, 5), (5, 5), (3, 3), (1, 1), "same", fast_path=True)
    coefficients, weights = tf.ones((4, 3, 2), "bfloat16"), tf.ones((9, 3, 2), "bfloat16")
    assert fast.mix_per_filter(coefficients, weights) is None
    traced = []

    @tf.function(jit_compile=True)
    def under_xla(a, w):
        traced.append(fast.mix_per_filter(a, w))
        return a

    under_xla(tf.ones((4, 3, 2)), tf.ones((9, 3, 2)))
    assert traced == [None]
    assert (
        CellPatches((5, 5), (5, 5), (3, 3), (1, 1), "same", fast_path=False).mix_per_filter(
            tf.ones((4, 3, 2)), tf.ones((9, 3, 2))
        )
        is None
    )


# A fixed grid of centroids is one shared set; randomly placed fixed centroids stay per filter.
@pytest.mark.parametrize("centroids, centroids_trainable", [((2, 2), True), (4, False)])
def test_a_per_feature_sws_layer_mixes_its_kernels_on_the_compiled_kernels(
    centroids, centroids_trainable
):
    layer = SoftWeightSharingConv2D(
        6,
        3,
        centroids=centroids,
        per_feature=True,
        centroids_trainable=centroids_trainable,
        implementation="local",
        seed=1,
    )
    layer.build((None, 8, 8, 3))

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x))
        return tape.gradient(loss, layer.trainable_variables)

    ops_in_step = graph_ops(step, tf.TensorSpec((None, 8, 8, 3)))
    assert {"SwslMixKernels", "SwslMixKernelsWeightsGrad", "SwslCellMatmul"} <= ops_in_step
    assert "BatchMatMulV2" not in ops_in_step
    assert layer.groups == 6
    # fixed centroids and Sigmas: constant coefficients, whose gradient is never computed
    assert ("SwslMixKernelsCoefficientsGrad" in ops_in_step) == centroids_trainable
