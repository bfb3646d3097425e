"""`make bench`: speed of the SWS net, the runner and the start-up, as one markdown table.

Every figure in a table comes from this one run on this machine; ratios
compare figures measured back to back. Warm-up (tracing, the first steps) is
excluded from every throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"  # the runner's pipeline and tf.function timings

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from swsl_cli.layers import (  # noqa: E402
    LocallyConnected2D,
    LowRankLocallyConnected2D,
    SoftWeightSharingConv2D,
)
from swsl_cli.runner import compare, data, train  # noqa: E402
from swsl_cli.runner.augment import Augmentation  # noqa: E402
from swsl_cli.runner.config import Config  # noqa: E402
from swsl_cli.runner.model import build_model  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch, from its first step to its last.

    Timing epochs inside one `fit` leaves out `fit`'s own set-up and tear-down:
    destroying its input iterator can stall for seconds on this machine.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.seconds = []


def fit_throughput(
    config: Config,
    arrays: data.ImageArrays,
    jit: bool = False,
    repeats: int = 3,
    shift_in_model: bool = False,
) -> float:
    """Best-of-`repeats` epoch images per second of `model.fit` on the runner's pipeline.

    One `fit` runs `repeats + 1` epochs of `arrays`' training images through
    `data.train_dataset` (the runner's, with the config's augmentation); the
    first epoch (tracing, warm-up) is left out, and the best of the rest
    filters out interference from other work on a shared machine. Every model
    gets the same treatment. `shift_in_model` is how 0.2.x shifted: Keras's
    `RandomTranslation` inside the model, none in the pipeline.
    """
    keras.utils.set_random_seed(0)
    model = build_model(config, seed=0)
    augmentation = Augmentation.from_config(config)
    if shift_in_model:
        inputs = keras.Input(model.input_shape[1:])
        shift = config.max_shift / model.input_shape[1]
        moved = keras.layers.RandomTranslation(
            shift, shift, fill_mode="constant", interpolation="nearest", seed=4
        )(inputs)
        model, augmentation = keras.Model(inputs, model(moved)), None
    train.compile_model(model, config, steps=100, jit=jit)
    timer = EpochTimer()
    model.fit(
        data.train_dataset(arrays, config.batch_size, 0, range(repeats + 1), augmentation),
        epochs=repeats + 1,
        steps_per_epoch=data.steps_per_epoch(arrays, config.batch_size),
        verbose=0,
        shuffle=False,
        callbacks=[timer],
    )
    return len(arrays.x_train) / min(timer.seconds[1:])


# Each layer kind of the table; for an SWS layer its (implementation, centroids_trainable),
# for an LRLC layer (rank 4, row and column logits) its implementation.
LAYER_KINDS = {
    "Conv2D": None,
    "SWS conv": ("conv", True),
    "SWS local": ("local", True),
    "SWS local, fixed centroids": ("local", False),
    "LocallyConnected2D": None,
    "LRLC conv": "conv",
    "LRLC local": "local",
    "per-cell matmuls alone": None,
}


def layer_step(kind: str, shape, filters: int, kernel: int, input_gradient: bool, jit=False):
    """One forward + backward of a layer as the model trains it, as a traced callable.

    `kind` is one of `LAYER_KINDS`: the baseline `Conv2D`, an SWS
    implementation with 2x2 per-feature centroids (trainable, or fixed as in
    the default network), `LocallyConnected2D`, or an implementation of
    `LowRankLocallyConnected2D` (rank 4, as `--layer lrlc`); all pad "same".
    The input gradient is taken only where the model needs it (not for the
    first layer). `"per-cell matmuls alone"` is the floor of the per-cell
    layers on TensorFlow's kernels (`per_cell_matmuls`). `jit` compiles the
    step with XLA.
    """
    if kind == "per-cell matmuls alone":
        return per_cell_matmuls(shape, filters, kernel, input_gradient, jit)[0]
    if kind == "Conv2D":
        layer = keras.layers.Conv2D(filters, kernel, padding="same")
    elif kind == "LocallyConnected2D":
        layer = LocallyConnected2D(filters, kernel, padding="same")
    elif kind.startswith("LRLC"):
        layer = LowRankLocallyConnected2D(
            filters, kernel, rank=4, padding="same", implementation=LAYER_KINDS[kind]
        )
    else:
        implementation, trainable = LAYER_KINDS[kind]
        layer = SoftWeightSharingConv2D(
            filters,
            kernel,
            centroids=(2, 2),
            padding="same",
            per_feature=True,
            centroids_trainable=trainable,
            implementation=implementation,
        )
    layer.build(shape)
    inputs = tf.random.uniform(shape)

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        sources = [x] if input_gradient else []
        return tape.gradient(loss, sources + layer.trainable_variables)

    step(inputs)
    return lambda: step(inputs)


def per_cell_matmuls(shape, filters: int, kernel: int, input_gradient: bool, jit=False):
    """`LocallyConnected2D`'s per-cell products alone, forward and backward, as a traced callable.

    The patches are gathered once, outside the step, already laid out
    `(cells, K, batch)`, and the output stays `(cells, batch, F)`: the step
    is the forward matmul and its gradients (the kernels', and the patches'
    where the layer takes an input gradient) as `CellPatches`'s TensorFlow
    path computes them, with no gather, transpose or patch-gradient sum. It
    is what a per-cell layer would cost if those cost nothing.

    Returns `(step, gradients, layer, inputs)`: the gradients of
    `sum(outputs ** 2)` (the patches' where taken, then the kernels' laid
    out `(cells, K, F)`) are those of the `LocallyConnected2D` layer without
    bias at `inputs`, which a test checks.
    """
    layer = LocallyConnected2D(filters, kernel, padding="same", use_bias=False)
    layer.build(shape)
    inputs = tf.random.uniform(shape, seed=0)
    cells = shape[1] * shape[2]
    patches = tf.image.extract_patches(
        inputs, (1, kernel, kernel, 1), (1, 1, 1, 1), (1, 1, 1, 1), "SAME"
    )  # (batch, rows, cols, K), in (kh, kw, C) order
    patches = tf.Variable(tf.transpose(tf.reshape(patches, (shape[0], cells, -1)), (1, 2, 0)))
    kernels = tf.Variable(tf.reshape(layer.kernel, (cells, -1, filters)))

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            outputs = tf.linalg.matmul(patches, kernels, adjoint_a=True)  # (cells, batch, F)
            loss = tf.reduce_sum(tf.square(outputs))
        return tape.gradient(loss, ([patches] if input_gradient else []) + [kernels])

    gradients = step()
    return step, gradients, layer, inputs


def best_step_ms(steps: dict, rounds: int = 5, repeats: int = 10) -> dict:
    """Each step's best, over `rounds`, of its median time over `repeats` calls, in ms.

    The rounds take the steps in turn, so a change in the machine's load
    reaches every step alike instead of the ones measured last.
    """
    medians = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times) * 1000)
    return {name: min(values) for name, values in medians.items()}


def runner_throughput(arrays: data.ImageArrays, epochs: int) -> tuple[float, float]:
    """`swsl-train`'s own images/s (best epoch after the first) and its time to the first step.

    The run is given no `--seed`, as a user's default run: no op determinism,
    like the bare `fit` it is compared with (`determinism_cost` measures that).
    """
    with tempfile.TemporaryDirectory() as logdir:
        config = Config(
            logdir=logdir,
            run_name="bench",
            n_epochs=epochs,
            quiet=True,
            max_train_examples=len(arrays.x_train),
            max_test_examples=len(arrays.x_test),
            data_dir=str(arrays.save_npz(Path(logdir) / "mnist.npz")),
        )
        with open(os.devnull, "w") as sink:
            train.run(config, stream=sink)
        metrics = json.loads((Path(logdir) / "bench" / "metrics.json").read_text())
    best = max(epoch["images_per_second"] for epoch in metrics["epochs"][1:])
    return best, metrics["time_to_first_step_s"]


def runner_overhead(arrays: data.ImageArrays, rounds: int, epochs: int) -> tuple:
    """A bare `fit` and `swsl-train` of the default net, taking turns for `rounds` rounds.

    Both train `epochs` epochs of `arrays` (the full 60,000 images by default)
    through the same pipeline and recipe; each side keeps its best epoch after
    the first. The runner's epoch time ends where its validation begins.
    Returns (bare img/s, runner img/s, runner's time to the first step).
    """
    bare = runner = 0.0
    for _ in range(rounds):
        bare = max(bare, fit_throughput(Config(), arrays, repeats=epochs - 1))
        speed, first_step = runner_throughput(arrays, epochs)
        runner = max(runner, speed)
    return bare, runner, first_step


def determinism_cost(arrays: data.ImageArrays) -> float:
    """The default net's bare `fit` throughput with TensorFlow's op determinism on
    (what `--seed` turns on), as a fraction of the throughput without it."""
    from tensorflow.python.framework import config as tf_config

    free = fit_throughput(Config(), arrays)
    tf.config.experimental.enable_op_determinism()
    try:
        fixed = fit_throughput(Config(), arrays)
    finally:
        tf_config.disable_op_determinism()
    return fixed / free


def help_seconds(repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).parent / "swsl-train"), "--help"],
            capture_output=True,
            check=True,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data_dir", help="MNIST source, as swsl-train --data_dir (default: the bundled copy)"
    )
    parser.add_argument("--images", type=int, default=3200, help="images per timed fit")
    parser.add_argument(
        "--runner_images",
        type=int,
        default=60000,
        help="training images of the runner against bare fit comparison (full epochs)",
    )
    parser.add_argument("--runner_rounds", type=int, default=2)
    parser.add_argument("--out", default="bench-out/bench.md")
    parser.add_argument(
        "--layer_steps_only",
        action="store_true",
        help="only the layer steps (forward + backward of each layer kind at the net's shapes)",
    )
    parser.add_argument(
        "--layer_steps_xla",
        action="store_true",
        help="the layer steps compiled with XLA as well as without, taking turns",
    )
    args = parser.parse_args()
    try:
        # Found out before minutes of measuring: where the table cannot be written, the data.
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(out))
        partial_table(out).open("w").close()  # as write_table will
        partial_table(out).unlink()
        source = data.load_mnist(args.data_dir) if args.data_dir else data.load_bundled_mnist()
    except (OSError, data.DataError) as error:
        detail = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) else error
        print(f"bench.py: error: {detail}", file=sys.stderr)
        return 1
    arrays = source.limited(args.images, 1000)
    rows = []

    def add(name, value, unit, note=""):
        rows.append((name, value, unit, note))
        say(f"{name}: {value:.3f} {unit} {note}")

    if not args.layer_steps_only:
        net_figures(arrays, add)
        runner_figures(source.limited(args.runner_images, 10000), args.runner_rounds, add)
    layer_step_figures(add, args.layer_steps_xla)
    try:
        write_table(rows, out)
    except OSError as error:  # a disk that filled up while measuring
        print(f"bench.py: error: cannot write {args.out}: {error.strerror}", file=sys.stderr)
        return 1
    return 0


def net_figures(arrays: data.ImageArrays, add) -> None:
    """The nets' fit throughputs, the runner's overhead and the start-up times."""
    # The three nets take turns for two rounds, so a change in the machine's
    # load reaches each alike; each keeps its best.
    nets = {layer: 0.0 for layer in ("sws", "conv", "local")}
    for _ in range(2):
        for layer in nets:
            nets[layer] = max(nets[layer], fit_throughput(Config(layer=layer), arrays))
    sws, conv, local = nets.values()
    note = "batch 64, float32; best of 2 rounds"
    add("fit throughput, SWS 2x2 (24, 48)", sws, "img/s", note)
    add("fit throughput, conv baseline (24, 48)", conv, "img/s", note)
    add("SWS / conv", sws / conv, "x", "goal >= 0.85")
    add("fit throughput, LocallyConnected2D (24, 48)", local, "img/s", note)
    add("local / conv", local / conv, "x", "goal >= 0.75")
    # The recipe against the previous one (0.2's): plain Adam, exponential
    # decay, shifts as a layer in the model.
    previous = fit_throughput(
        Config(lr_schedule="exponential", learning_rate=1e-3, ema=0, max_rotation=0, max_zoom=0),
        arrays,
        shift_in_model=True,
    )
    add(
        "fit throughput, SWS 2x2, previous recipe",
        previous,
        "img/s",
        f"default recipe at {sws / previous:.3f} x",
    )
    trainable = fit_throughput(Config(centroids_trainable=True, centroid_grid=(3, 3)), arrays)
    add("fit throughput, SWS 3x3 trainable", trainable, "img/s")
    xla = fit_throughput(Config(), arrays, jit=True)
    add("fit throughput, SWS 2x2, XLA", xla, "img/s", f"{xla / sws:.2f} x without XLA")
    xla_conv = fit_throughput(Config(layer="conv"), arrays, jit=True)
    add(
        "fit throughput, conv baseline, XLA",
        xla_conv,
        "img/s",
        f"{xla_conv / conv:.2f} x without XLA",
    )
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    bf16 = fit_throughput(Config(), arrays)
    keras.mixed_precision.set_global_policy("float32")
    add("fit throughput, SWS 2x2, mixed_bfloat16", bf16, "img/s", f"{bf16 / sws:.2f} x float32")

    add(
        "op determinism (--seed), SWS 2x2",
        determinism_cost(arrays),
        "x",
        "bare fit with it against without",
    )
    add("swsl-train --help", help_seconds(), "s", "median of 5; goal <= 0.3")


def runner_figures(arrays: data.ImageArrays, rounds: int, add) -> None:
    """`swsl-train` against a bare `fit` of the same net, pipeline and recipe."""
    bare, runner, first_step = runner_overhead(arrays, rounds, epochs=3)
    note = f"{len(arrays.x_train):,} images an epoch, best of epochs 2-3, {rounds} rounds"
    add("bare fit throughput, SWS 2x2", bare, "img/s", note)
    add("swsl-train throughput", runner, "img/s", f"{note}; TensorBoard, checkpoints on")
    add("runner overhead vs bare fit", 1 - runner / bare, "fraction", "goal <= 0.05")
    add("time to first training step", first_step, "s", "from run() start, data loaded")


def layer_step_figures(add, xla: bool = False) -> None:
    """Forward + backward of every layer kind at the net's two layers' shapes.

    With `xla`, every kind is also timed compiled by XLA, in the same turns,
    and compared with itself without XLA.
    """
    for name, shape, filters, kernel, input_gradient in (
        ("layer 1", (64, 28, 28, 1), 24, 7, False),
        ("layer 2", (64, 14, 14, 24), 48, 3, True),
    ):
        steps = {
            (kind, jit): layer_step(kind, shape, filters, kernel, input_gradient, jit)
            for kind in LAYER_KINDS
            for jit in ((False, True) if xla else (False,))
        }
        times = best_step_ms(steps)
        note = f"input {shape}" + ("" if input_gradient else ", no input gradient")
        for (kind, jit), ms in times.items():
            if jit:
                ratio = f"{ms / times[kind, False]:.2f} x the time without XLA; "
                kind += ", XLA"
            else:
                ratio = "" if kind == "Conv2D" else f"{ms / times['Conv2D', False]:.2f} x Conv2D; "
            add(f"{name} fwd+bwd, {kind}", ms, "ms", ratio + note)


def say(text: str) -> None:
    """Prints a line of progress; a reader that left (`| head -2`) or a closed stdout does not
    stop the measuring, whose table still goes to `--out`."""
    if sys.stdout is not None:
        compare._write(text + "\n", sys.stdout)


def machine_name() -> str:
    """The CPU's model and its bfloat16 instructions (they decide `mixed_bfloat16`'s speed)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = f"{value.strip()} ({platform.machine()})"
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    bf16 = [
        name
        for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"))
        if flag in flags
    ]
    return f"{model}, {os.cpu_count()} cores{''.join(', ' + name for name in bf16)}"


def partial_table(out: Path) -> Path:
    """Where `write_table` writes the table before renaming it to `out`."""
    return out.with_name(out.name + ".partial")


def write_table(rows: list, out: Path) -> None:
    """The figures as one markdown table in `out`, printed too."""
    machine = f"{machine_name()}, TF {tf.__version__}"
    command = (
        " ".join(["python benchmarks/bench.py", *sys.argv[1:]]) if sys.argv[1:] else "make bench"
    )
    table = [
        f"Measured by `{command}` on {machine}.",
        "",
        "| measure | value | unit | note |",
        "| --- | ---: | --- | --- |",
    ]
    table += [f"| {n} | {v:.3f} | {u} | {note} |" for n, v, u, note in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a full disk leaves the earlier table whole.
    partial = partial_table(out)
    try:
        partial.write_text("\n".join(table) + "\n")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    say("\n".join(table))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the table is written only at the end: an earlier one stays
        print("bench.py: interrupted", file=sys.stderr)
        sys.exit(130)
