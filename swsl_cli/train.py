"""`run(config)`: data, model, callbacks and outputs of one training run."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from swsl_cli import data, runs  # noqa: E402
from swsl_cli.config import PROG, Config  # noqa: E402
from swsl_cli.model import build_model  # noqa: E402
from swsl_cli.progress import ProgressBar  # noqa: E402
from swsl_cli.summaries import LayerSummaries, export_kernel_pngs, tensorboard_callback  # noqa: E402

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@dataclass
class RunState:
    """Why training stopped early, shared by the signal handlers and callbacks."""

    started: float
    signal_name: str | None = None
    nonfinite_at: tuple[int, int] | None = None
    first_step_s: float | None = None
    epochs: list = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.signal_name is not None or self.nonfinite_at is not None


class StopOnRequest(keras.callbacks.Callback):
    """Ends training at the next step boundary after a signal or a non-finite loss."""

    def __init__(self, state: RunState):
        super().__init__()
        self.state = state

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.state.first_step_s is None:
            self.state.first_step_s = round(time.perf_counter() - self.state.started, 3)
        if logs and not math.isfinite(float(logs["loss"])):
            self.state.nonfinite_at = (self.epoch, batch)
        if self.state.stopped:
            self.model.stop_training = True


class EpochSeededRandomness(keras.callbacks.Callback):
    """Restarts every seed generator (dropout) at a counter derived from the epoch.

    Keras checkpoints hold weights and optimizer state but not the seed
    generators' counters; deriving them from (seed, epoch) makes a resumed
    epoch draw the same dropout masks as an uninterrupted one.
    """

    STEPS_PER_EPOCH_BOUND = 2**20

    def on_epoch_begin(self, epoch, logs=None):
        for variable in self.model.non_trainable_variables:
            if variable.name == "seed_generator_state":
                state = keras.ops.convert_to_numpy(variable)
                state[1] = epoch * self.STEPS_PER_EPOCH_BOUND
                variable.assign(state)


class EpochRecorder(keras.callbacks.Callback):
    """After each complete epoch: times it, saves the checkpoint, writes `metrics.json`."""

    def __init__(self, run: runs.RunDir, state: RunState, report, images: int, write_metrics):
        super().__init__()
        self.run = run
        self.state = state
        self.report = report
        self.images = images
        self.write_metrics = write_metrics

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        self.train_seconds = None

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:
            self.train_seconds = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        if self.state.stopped:
            return
        seconds = self.train_seconds or (time.perf_counter() - self.start)
        record = {name: float(value) for name, value in (logs or {}).items()}
        record.update(
            epoch=epoch + 1,
            seconds=round(seconds, 3),
            images_per_second=round(self.images / seconds, 1),
        )
        self.state.epochs.append(record)
        self.report(epoch, record, seconds, self.images)
        self._checkpoint(epoch + 1)
        self.write_metrics(status="running")

    def _checkpoint(self, completed: int) -> None:
        folder = self.run.checkpoint_model.parent
        folder.mkdir(exist_ok=True)
        temporary = folder / ("partial-" + runs.CHECKPOINT_MODEL)
        self.model.save(temporary)
        os.replace(temporary, self.run.checkpoint_model)
        runs.write_json(
            self.run.checkpoint_state, {"epoch": completed, "epochs": self.state.epochs}
        )


def device_report() -> str:
    """The GPUs TensorFlow will use, or that it trains on the CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "no GPU: training on CPU"
    names = [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus
    ]
    return "GPU: " + ", ".join(f"{i}: {name}" for i, name in enumerate(names))


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """`none`: the default strategy; `mirrored`: every local GPU (or logical CPU device
    when there is no GPU); `multi_worker`: the workers of `TF_CONFIG`."""
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def configure(config: Config) -> dict:
    """Seeds, determinism, dtype policy and XLA; returns what was chosen."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    precision = config.precision
    if precision == "auto":
        precision = "mixed_float16" if on_gpu else "float32"
    keras.mixed_precision.set_global_policy(precision)
    # XLA measured slower on CPU, and RandomTranslation (the default augmentation) has
    # no XLA kernel, so Keras would drop it anyway: auto is off everywhere.
    jit = config.jit_compile == "on"
    return {"precision": precision, "jit_compile": jit, "deterministic": bool(config.deterministic)}


def compile_model(model: keras.Model, config: Config, steps: int, jit: bool) -> None:
    schedule = keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=steps, decay_rate=config.lr_decay, staircase=True
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit,
    )


def _install_signal_handlers(state: RunState) -> dict:
    def handle(signum, frame):
        name = signal.Signals(signum).name
        if state.signal_name is not None:
            print(f"\n{name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(EXIT_CODES.get(name, 1))
        state.signal_name = name
        print(
            f"\n{name}: stopping after the current step (again to quit at once)",
            file=sys.stderr,
            flush=True,
        )

    return {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}


def run(config: Config, stream=None) -> int:
    """Trains one run as `config` says; returns the exit status."""
    stream = stream or sys.stdout
    started = time.perf_counter()
    if config.resume:
        run_dir, config, saved = runs.resume(config)
        start_epoch = saved["epoch"]
    else:
        run_dir, saved, start_epoch = None, None, 0
        config = runs.with_seed(config)

    settings = configure(config)
    device = device_report()
    strategy = make_strategy(config.distribute)
    replicas = strategy.num_replicas_in_sync
    print(
        f"device: {device}; strategy {config.distribute} with {replicas} replica(s); "
        f"{settings['precision']}, XLA {'on' if settings['jit_compile'] else 'off'}",
        file=stream,
    )

    arrays = data.load_dataset(config.dataset, config.data_dir, config.val_split).limited(
        config.max_train_examples, config.max_test_examples
    )
    global_batch = config.batch_size * replicas
    steps = data.steps_per_epoch(arrays, global_batch)
    print(
        f"data: {arrays.source}: {len(arrays.x_train)} train, {len(arrays.x_test)} test images "
        f"{'x'.join(map(str, arrays.image_shape))}, {arrays.num_classes} classes; "
        f"batch {global_batch} ({config.batch_size} x {replicas}), {steps} steps per epoch",
        file=stream,
    )
    if run_dir is None:
        run_dir, config = runs.create(config)
    print(f"run: {run_dir.root}", file=stream)

    with strategy.scope():
        if saved is not None:
            model = keras.models.load_model(run_dir.checkpoint_model)
            print(
                f"resuming after epoch {start_epoch} from {run_dir.checkpoint_model}", file=stream
            )
        else:
            model = build_model(config, config.seed, arrays.image_shape, arrays.num_classes)
            compile_model(model, config, steps, settings["jit_compile"])

    state = RunState(started, epochs=list(saved["epochs"]) if saved else [])

    def write_metrics(status: str, **final) -> None:
        runs.write_json(
            run_dir.metrics,
            {
                "flags": config.to_dict(),
                "status": status,
                "device": device,
                "strategy": config.distribute,
                "replicas": replicas,
                **settings,
                "data": arrays.source,
                "dataset": arrays.name,
                "epochs": state.epochs,
                "wall_time_s": round(time.perf_counter() - started, 3),
                "time_to_first_step_s": state.first_step_s,
                **final,
            },
        )

    progress = ProgressBar(config.n_epochs, steps, quiet=config.quiet, stream=stream)
    probe = next(iter(data.test_dataset(arrays, 32)))
    callbacks = [
        StopOnRequest(state),
        EpochSeededRandomness(),
        progress,
        tensorboard_callback(run_dir.root, config.log_verbosity),
        LayerSummaries(run_dir.root, config.color_coding, config.log_verbosity, probe),
        EpochRecorder(run_dir, state, progress.report, len(arrays.x_train), write_metrics),
    ]
    write_metrics(status="running")
    handlers = _install_signal_handlers(state)
    try:
        model.fit(
            data.train_dataset(
                arrays, global_batch, config.seed, range(start_epoch, config.n_epochs)
            ),
            epochs=config.n_epochs,
            initial_epoch=start_epoch,
            steps_per_epoch=steps,
            validation_data=data.validation_dataset(arrays, global_batch),
            callbacks=callbacks,
            shuffle=False,
            verbose=0,
        )
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    done = len(state.epochs)
    if state.nonfinite_at is not None:
        epoch, batch = state.nonfinite_at
        write_metrics(status="nonfinite_loss")
        print(
            f"{PROG}: error: the loss became NaN/inf at epoch {epoch + 1}, step {batch + 1}; "
            f"the learning rate ({config.learning_rate}) is the likely cause: try a smaller "
            f"--learning_rate. Last good checkpoint: epoch {done} in {run_dir.checkpoint_model.parent}",
            file=sys.stderr,
        )
        return 1
    if state.signal_name is not None:
        write_metrics(status="interrupted")
        print(
            f"interrupted by {state.signal_name}; {done} complete epoch(s) saved. Resume with:\n"
            f"  {PROG} --resume --logdir {config.logdir} --run_name {config.run_name}",
            file=stream,
        )
        return EXIT_CODES[state.signal_name]

    test_loss, test_accuracy = model.evaluate(data.test_dataset(arrays, global_batch), verbose=0)
    model.save(run_dir.model)
    export_kernel_pngs(model, run_dir.kernel_images, config.color_coding)
    write_metrics(
        status="completed", test_loss=float(test_loss), test_accuracy=float(test_accuracy)
    )
    print(
        f"test accuracy {test_accuracy:.4f}, test loss {test_loss:.4f}; "
        f"wall time {time.perf_counter() - started:.1f} s\n"
        f"outputs in {run_dir.root}; see them with: tensorboard --logdir {config.logdir}",
        file=stream,
    )
    return 0


def main(config: Config) -> int:
    """`run` with every expected failure turned into one line and exit status 1."""
    try:
        return run(config)
    except (runs.RunError, data.DataError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    except OSError as error:
        print(
            f"{PROG}: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
    return 1
