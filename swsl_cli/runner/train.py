"""`run(config)`: one training run in four phases, each safe to stop and resume.

1. prepare: the run folder (new, or the one `--resume` continues), seeds,
   device, strategy and data;
2. build or restore: a new model, or the last complete epoch's checkpoint;
3. fit: the remaining epochs, each committed as one atomic checkpoint;
4. finish: test evaluation, final model, PNGs, `metrics.json` "completed".

A run stopped anywhere resumes at the phase it stopped in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field


@contextlib.contextmanager
def native_stderr_hidden():
    """Hides file descriptor 2 while TensorFlow's C++ libraries load.

    They log oneDNN and CUDA probing lines before any log level applies
    (TF_CPP_MIN_LOG_LEVEL does not reach them); none is actionable. Python
    errors still surface: they are raised, not printed, inside the block.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The runner is TensorFlow's (tf.data, tf.distribute, tf.summary); a KERAS_BACKEND set
# for other work does not apply to it. The layers alone run on every backend.
if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "tensorflow"
with native_stderr_hidden():
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

from swsl_cli.layers import cell_ops  # noqa: E402
from swsl_cli.layers.optimizers import FusedAdam  # noqa: E402
from swsl_cli.runner import data, distribute, memory, runs  # noqa: E402
from swsl_cli.runner.augment import Augmentation  # noqa: E402
from swsl_cli.runner.config import PROG, Config  # noqa: E402
from swsl_cli.runner.console import Console, epoch_line  # noqa: E402
from swsl_cli.runner.interrupts import (  # noqa: E402
    EXIT_CODES,
    Interrupted,
    handled_by,
    raise_if_interrupted,
)
from swsl_cli.runner.model import (  # noqa: E402
    activation_values,
    augments_itself,
    build_model,
    parameter_counts,
)
from swsl_cli.runner.progress import ProgressBar  # noqa: E402
from swsl_cli.runner.summaries import (  # noqa: E402
    LayerSummaries,
    RunSummaries,
    export_kernel_pngs,
    final_metrics,
)


@dataclass(frozen=True)
class Settings:
    """What `configure` chose for this machine."""

    precision: str
    jit_compile: bool
    deterministic: bool


@dataclass
class Session:
    """A prepared run: everything the later phases read."""

    config: Config
    run: runs.RunDir
    arrays: data.ImageArrays
    strategy: tf.distribute.Strategy
    settings: Settings
    device: str
    console: Console
    started: float
    checkpoint: runs.Checkpoint | None
    fresh: bool  # the run folder was created by this process
    data_fingerprint: str
    summaries: RunSummaries
    resume_command: str = ""  # on every worker, the chief's

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.replicas

    @property
    def steps(self) -> int:
        return data.steps_per_epoch(self.arrays, self.global_batch)

    @property
    def start_epoch(self) -> int:
        return self.checkpoint.epoch if self.checkpoint else 0


@dataclass
class RunRecord:
    """`metrics.json`: the run's status and figures, rewritten after every change."""

    session: Session
    epochs: list = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    first_step_s: float | None = None
    nonfinite_at: tuple[int, int] | None = None
    signal_name: str | None = None

    @property
    def stopped(self) -> bool:
        return self.signal_name is not None or self.nonfinite_at is not None

    def write(self, status: str, **final) -> None:
        session = self.session
        session.run.write_metrics(
            {
                "flags": session.config.to_dict(),
                "status": status,
                "device": session.device,
                "strategy": session.config.distribute,
                "replicas": session.replicas,
                **dataclasses.asdict(session.settings),
                "dataset": session.arrays.name,
                "data": session.arrays.source,
                "data_fingerprint": session.data_fingerprint,
                "parameters": self.parameters,
                "epochs": self.epochs,
                "wall_time_s": round(time.perf_counter() - session.started, 3),
                "time_to_first_step_s": self.first_step_s,
                **final,
            }
        )


class StopOnRequest(keras.callbacks.Callback):
    """Ends training at the next step boundary after a signal or a non-finite loss."""

    def __init__(self, record: RunRecord):
        super().__init__()
        self.record = record

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        record = self.record
        if record.first_step_s is None:
            record.first_step_s = round(time.perf_counter() - record.session.started, 3)
        if logs and not math.isfinite(float(logs["loss"])):
            record.nonfinite_at = (self.epoch, batch)
        # multi-worker: all workers stop at the same step, once one of them got a signal
        agreed = distribute.signal_on_any_worker(self.model.distribute_strategy, record.signal_name)
        if agreed is not None or record.nonfinite_at is not None:
            record.signal_name = record.signal_name or agreed
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
    """After each complete epoch: times it, commits the checkpoint, then reports it."""

    def __init__(self, record: RunRecord):
        super().__init__()
        self.record = record
        self.images = len(record.session.arrays.x_train)

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
        self.train_seconds = None

    def on_test_begin(self, logs=None):
        if self.train_seconds is None:
            self.train_seconds = time.perf_counter() - self.start

    def on_epoch_end(self, epoch, logs=None):
        record = self.record
        if record.stopped:
            return
        seconds = self.train_seconds or (time.perf_counter() - self.start)
        entry = {name: float(value) for name, value in (logs or {}).items()}
        entry.update(
            epoch=epoch + 1,
            seconds=round(seconds, 3),
            images_per_second=round(self.images / seconds, 1),
        )
        session = record.session
        session.checkpoint = session.run.save_checkpoint(
            self.model.save,
            {
                "epoch": epoch + 1,
                "epochs": [*record.epochs, entry],
                "data_fingerprint": session.data_fingerprint,
                "global_batch": session.global_batch,
                "architecture": runs.architecture(session.config, record.parameters["total"]),
            },
        )
        record.epochs.append(entry)  # once saved: metrics.json lists what --resume keeps
        record.write(status="running")
        learning_rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        session.summaries.epoch(epoch + 1, entry, float(learning_rate))
        session.console.line(
            epoch_line(epoch + 1, session.config.n_epochs, entry, seconds, self.images)
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


def cell_kernels_report(config: Config, settings: Settings, console: Console) -> str:
    """Which kernels the per-cell layers use on the CPU, as `"; compiled per-cell kernels"`.

    Compiles them first where this machine has not yet (`cell_ops`), after a
    line saying so. Under mixed precision or XLA the layers take TensorFlow's
    ops, and nothing is compiled; empty for the conv layers and on GPUs.
    """
    if config.layer not in ("sws", "local", "lrlc") or tf.config.list_physical_devices("GPU"):
        return ""
    xla = settings.jit_compile and not settings.deterministic  # Keras keeps XLA off with --seed
    if settings.precision != "float32" or xla:
        return f"; TensorFlow's per-cell kernels ({'XLA' if xla else settings.precision})"
    try:
        if not cell_ops.is_cached():
            console.line(
                "compiling the per-cell layers' kernels for this CPU "
                f"(once per machine, about {cell_ops.COMPILE_SECONDS} s)"
            )
        return f"; {cell_ops.status()}"
    except cell_ops.BuildError as error:  # SWSL_CELL_KERNELS=compiled, or a bad value
        raise runs.RunError(f"the per-cell kernels: {error}") from None


def configure(config: Config) -> Settings:
    """Seeds, determinism and dtype policy; returns what was chosen."""
    keras.utils.set_random_seed(config.seed)
    # Per run, not per process: an earlier seeded run in this process (the Python
    # API) must not leave a later one deterministic, which also turns XLA off.
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()  # TensorFlow has no public switch back
    precision = config.precision
    if precision == "auto":
        on_gpu = bool(tf.config.list_physical_devices("GPU"))
        precision = "mixed_float16" if on_gpu else "float32"
    keras.mixed_precision.set_global_policy(precision)
    return Settings(precision, config.jit_compile == "on", bool(config.deterministic))


def learning_rate_schedule(
    config: Config, steps: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate as a function of the step, for `steps` steps per epoch.

    A function of the optimizer's step count alone, which checkpoints hold, so
    a resumed run follows the uninterrupted run's rates exactly.
    """
    if config.lr_schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, decay_steps=steps, decay_rate=config.lr_decay, staircase=True
        )
    total = config.n_epochs * steps
    warmup = min(round(config.warmup_epochs * steps), total - 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=total - warmup,
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def compile_model(model: keras.Model, config: Config, steps: int, jit: bool) -> None:
    optimizer = FusedAdam(
        learning_rate_schedule(config, steps),
        use_ema=config.ema > 0,
        ema_momentum=config.ema or 0.99,
        ema_warmup=config.ema_warmup,
    )
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit,
    )


def prepare(opened: runs.OpenedRun, stack: contextlib.ExitStack, console: Console) -> Session:
    """Phase 1: settings, device, strategy and data; then a new run's folder, or the
    resumed run's last checks."""
    started = time.perf_counter()
    config = opened.config
    with native_stderr_hidden():  # CUDA probing logs "failed call to cuInit" on CPU machines
        settings = configure(config)
        device = device_report()
    device += cell_kernels_report(config, settings, console)
    strategy = distribute.make_strategy(config.distribute, config.peer_timeout)
    arrays = data.load_dataset(
        config.dataset,
        config.data_dir,
        config.val_split,
        config.label_key,
        data.CropResize(config.image_size, config.center_crop),
        (config.max_train_examples, config.max_test_examples),
    )
    fingerprint = arrays.fingerprint()
    raise_if_interrupted()  # a signal that a library swallowed while loading
    # multi-worker: every worker has the same settings, data and checkpoint, or none starts
    distribute.check_same_run(strategy, runs.run_identity(opened, fingerprint))
    if opened.resumed:
        runs.check_resumable(opened, fingerprint, arrays.source, strategy.num_replicas_in_sync)
        run = opened.run
        run.remove_partial_files()
        run.write_config(config)
    else:
        run = opened.create(stack)
    summaries = RunSummaries(run.root, config)
    stack.callback(summaries.close)
    session = Session(
        opened.config,
        run,
        arrays,
        strategy,
        settings,
        device,
        console,
        started,
        opened.checkpoint,
        fresh=not opened.resumed,
        data_fingerprint=fingerprint,
        summaries=summaries,
        resume_command=opened.resume_command(),
    )
    console.line(
        f"device: {device}; strategy {config.distribute} with {session.replicas} replica(s); "
        f"{settings.precision}"
    )
    console.line(
        f"data: {arrays.source}: {len(arrays.x_train)} train, {len(arrays.x_test)} test images "
        f"{'x'.join(map(str, arrays.image_shape))}, {arrays.num_classes} classes; "
        f"batch {session.global_batch} ({config.batch_size} x {session.replicas}), "
        f"{session.steps} steps per epoch"
    )
    console.line(f"run: {run.root}")
    return session


def build_or_restore(session: Session) -> keras.Model:
    """Phase 2: a new compiled model, or the last complete epoch's checkpoint."""
    config = session.config
    with session.strategy.scope():
        if session.checkpoint is not None:
            model = keras.models.load_model(session.checkpoint.model)
            raise_if_interrupted()  # a signal that Keras's loading swallowed
            # The same function of the step, over the run's (possibly extended) epochs.
            model.optimizer.learning_rate = learning_rate_schedule(config, session.steps)
            session.console.line(
                f"resuming after epoch {session.start_epoch} from {session.checkpoint.folder}"
            )
        else:
            arrays = session.arrays
            model = build_model(config, config.seed, arrays.image_shape, arrays.num_classes)
            compile_model(model, config, session.steps, session.settings.jit_compile)
    distribute.prepare_model_for_fit(model, session.strategy)  # Keras bug with several workers
    # Keras turns XLA off for layers without an XLA kernel: record what it kept.
    session.settings = dataclasses.replace(session.settings, jit_compile=bool(model.jit_compile))
    return model


def model_line(counts: dict[str, int], jit_compile: bool) -> str:
    """`model: 383,290 parameters (sws1 4,824, ...); XLA off`."""
    layers = ", ".join(f"{name} {count:,}" for name, count in counts.items() if name != "total")
    return f"model: {counts['total']:,} parameters ({layers}); XLA {'on' if jit_compile else 'off'}"


def fit(session: Session, model: keras.Model, record: RunRecord) -> None:
    """Phase 3: the remaining epochs; a signal stops at the next step boundary."""
    config = session.config
    arrays = session.arrays
    progress = ProgressBar(
        config.n_epochs, session.steps, quiet=config.quiet, console=session.console
    )
    # A fixed batch for gradient and activation summaries, straight from the arrays: a
    # partial read of the cached test pipeline makes TensorFlow log a warning.
    probe = (arrays.x_test[:32].astype("float32"), arrays.y_test[:32])
    callbacks = [
        StopOnRequest(record),
        EpochSeededRandomness(),
        progress,
        LayerSummaries(session.summaries, config.color_coding, config.log_verbosity, probe),
        EpochRecorder(record),
    ]
    if config.ema:  # validate with the averaged weights; checkpoints keep both
        callbacks.insert(0, keras.callbacks.SwapEMAWeights())

    with handled_by(stop_after_step(record)):
        model.fit(
            distribute.sharded(
                data.train_dataset(
                    arrays,
                    session.global_batch,
                    config.seed,
                    range(session.start_epoch, config.n_epochs),
                    None if augments_itself(model) else Augmentation.from_config(config),
                )
            ),
            epochs=config.n_epochs,
            initial_epoch=session.start_epoch,
            steps_per_epoch=session.steps,
            validation_data=distribute.sharded(
                data.validation_dataset(arrays, session.global_batch)
            ),
            callbacks=callbacks,
            shuffle=False,
            verbose=0,
        )


def stop_after_step(record: RunRecord):
    """The training loop's signal handler: the first signal stops at the next step
    boundary (the epoch in progress is not saved), a second one exits at once."""

    def handle(signum, frame):
        name = signal.Signals(signum).name
        if record.signal_name is not None:
            record.session.console.error(f"{name} again: exiting now")
            os._exit(EXIT_CODES[name])
        record.signal_name = name
        record.session.console.error(
            f"{name}: stopping after the current step (again to quit at once)"
        )

    return handle


def exit_now(signum, frame):
    """The handler while a stop is reported: another signal exits at once."""
    name = signal.Signals(signum).name
    Console.error(f"{name} again: exiting now")
    os._exit(EXIT_CODES[name])


def finish(session: Session, model: keras.Model, record: RunRecord) -> None:
    """Phase 4: test evaluation, final model and PNGs, then status "completed"."""
    record.write(status="finishing")
    # The averaged weights are the final ones. `fit` ends by copying them in; a run
    # resumed into this phase comes from a checkpoint, which holds both.
    model.optimizer.finalize_variable_values(model.trainable_variables)
    test_loss, test_accuracy = model.evaluate(
        distribute.sharded(data.test_dataset(session.arrays, session.global_batch)), verbose=0
    )
    if distribute.in_multi_worker_mode(session.strategy):  # every worker: the same weights
        session.console.line(f"final weights: sha256 {distribute.weights_digest(model)}")
    session.run.save_model(model.save)
    export_kernel_pngs(model, session.run.kernel_images, session.config.color_coding)
    final = final_metrics(record.epochs, test_loss, test_accuracy, record.parameters["total"])
    session.summaries.final(len(record.epochs), float(test_loss), float(test_accuracy))
    record.write(
        status="completed",
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        best_val_accuracy=final["best_val_accuracy"],
    )
    session.console.line(
        f"test accuracy {test_accuracy:.4f}, test loss {test_loss:.4f}; "
        f"wall time {time.perf_counter() - session.started:.1f} s\n"
        f"outputs in {session.run.root}; see them with: tensorboard --logdir "
        f"{shlex.quote(session.config.logdir)}"
    )


def discard(session: Session) -> bool:
    """Removes what this process wrote into a run folder it started when no epoch was
    saved (the folder too, unless it holds other files); True if it did."""
    if session.fresh and session.checkpoint is None:
        session.run.remove_own_files()
        return True
    return False


def stopped(session: Session, record: RunRecord, signal_name: str, phase: str) -> int:
    """Reports a run stopped by a signal, keeping what is resumable; returns the exit status."""
    if discard(session):
        removed = "removed" if not session.run.root.exists() else "removed its files from"
        session.console.error(
            f"{PROG}: interrupted by {signal_name} {phase}, before any epoch was saved; "
            f"{removed} {session.run.root}"
        )
        return EXIT_CODES[signal_name]
    record.write(status="interrupted")
    session.console.error(
        f"{PROG}: interrupted by {signal_name} {phase}; {session.start_epoch} complete epoch(s) saved"
    )
    session.console.line(f"Resume with:\n  {session.resume_command}")
    return EXIT_CODES[signal_name]


def nonfinite(session: Session, record: RunRecord) -> int:
    epoch, batch = record.nonfinite_at
    record.write(status="nonfinite_loss")
    saved = (
        f"last good checkpoint: epoch {session.start_epoch} in {session.checkpoint.folder}"
        if session.checkpoint
        else "no epoch was saved"
    )
    session.console.error(
        f"{PROG}: error: the loss became NaN/inf at epoch {epoch + 1}, step {batch + 1}; "
        f"the learning rate ({session.config.learning_rate}) is the likely cause: try a smaller "
        f"--learning_rate ({saved})"
    )
    return 1


def run(config: Config, given: frozenset[str] = frozenset(), stream=None) -> int:
    """Trains one run as `config` says (`given`: the flags given); returns the exit status."""
    with contextlib.ExitStack() as stack:
        return run_opened(runs.open_run(config, given, stack), stack, stream)


def run_opened(opened: runs.OpenedRun, stack: contextlib.ExitStack, stream=None) -> int:
    """Trains the run `runs.open_run` resolved: prepare, build or restore, fit, finish.

    Returns the exit status. Locks and temporary folders stay with `stack`.
    """
    console = Console(stream if stream is not None else sys.stdout)
    if keras.backend.backend() != "tensorflow":
        console.error(
            f"{PROG}: error: training needs Keras's TensorFlow backend, and this process "
            f"imported Keras with {keras.backend.backend()}: set KERAS_BACKEND=tensorflow "
            "before importing keras"
        )
        return 1
    if opened.writes_scratch:
        console.line(
            f"{opened.cluster.name}: the chief writes the run; this worker's copy goes to a "
            "temporary folder, removed at the end"
        )
    for note in opened.notes:
        console.error(f"{PROG}: warning: {note}")
    session = prepare(opened, stack, console)
    with distribute.peer_failures(session.strategy, lambda: session.start_epoch):
        return phases(session)


def warn_if_short_of_memory(session: Session, model: keras.Model, parameters: int) -> None:
    """One warning line when training on the CPU may not fit in the free memory."""
    if tf.config.list_physical_devices("GPU"):
        return  # the weights live on the GPUs; TensorFlow reports their memory running out
    optimizer = getattr(model, "optimizer", None)
    held = (  # a restored model's Adam moments and weight average are allocated already
        sum(math.prod(v.shape) for v in optimizer.variables if len(v.shape))
        if optimizer is not None and optimizer.built
        else 0
    )
    warning = memory.shortfall(
        parameters,
        activation_values(model) * session.config.batch_size,
        session.config.ema > 0,
        memory.available_bytes(),
        held=held,
        activation_bytes=tf.as_dtype(keras.mixed_precision.global_policy().compute_dtype).size,
    )
    if warning:
        session.console.error(f"{PROG}: warning: {warning}")


def phases(session: Session) -> int:
    """Build or restore, fit, finish; a stop (signal, non-finite loss) ends in its report."""
    record = RunRecord(
        session, epochs=list(session.checkpoint.state["epochs"]) if session.checkpoint else []
    )
    phase = "while building the model"
    try:
        model = build_or_restore(session)
        record.parameters = parameter_counts(model)
        if session.checkpoint is not None:
            runs.check_restored(session.checkpoint, record.parameters["total"])
        session.console.line(model_line(record.parameters, session.settings.jit_compile))
        if session.start_epoch < session.config.n_epochs:
            warn_if_short_of_memory(session, model, record.parameters["total"])
            phase = "while training"
            record.write(status="running")
            if session.fresh:
                session.summaries.hparams(
                    session.config, record.parameters["total"], session.run.root.name
                )
            fit(session, model, record)
            record.signal_name = distribute.signal_on_any_worker(  # multi-worker
                session.strategy, record.signal_name
            )
        if record.nonfinite_at is not None:
            return nonfinite(session, record)
        if record.signal_name is not None:
            return stopped(session, record, record.signal_name, phase)
        phase = "while finishing (test evaluation, model, pictures)"
        finish(session, model, record)
    except Interrupted as interrupt:
        with handled_by(exit_now):  # the report is written; another signal ends it at once
            return stopped(session, record, interrupt.signal_name, phase)
    except runs.ForeignCheckpoint:
        raise  # refused before anything was trained: the run's files stay as they were
    except BaseException:
        if not discard(session):
            with contextlib.suppress(Exception):
                record.write(status="failed")
        raise
    return 0


OUT_OF_MEMORY = (
    "out of memory: the network or batch does not fit; try smaller --n_filters, "
    "--batch_size or fewer centroids"
)


def describe_op_error(error: tf.errors.OpError) -> str:
    """One line for a TensorFlow runtime error; a full disk names the file it could not write."""
    text = error.message or str(error)
    disk_full = re.search(r"(\S+); No space left on device", text)
    if disk_full:
        return f"cannot write {disk_full.group(1)}: No space left on device"
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return OUT_OF_MEMORY
    return "TensorFlow: " + re.sub(r"\{\{[^}]*\}\}\s*", "", text).splitlines()[0]


def main(config: Config, given: frozenset[str] = frozenset()) -> int:
    """`run` with every expected failure turned into one line and exit status 1."""
    return reported(run, config, given)


def main_opened(opened: runs.OpenedRun, stack: contextlib.ExitStack) -> int:
    """`run_opened` with every expected failure turned into one line and exit status 1:
    the CLI, which opened the run before TensorFlow loaded."""
    return reported(run_opened, opened, stack)


def reported(train, *args) -> int:
    """`train(*args)`'s exit status; an expected failure is one line on stderr and status 1."""
    try:
        return train(*args)
    except (runs.RunError, data.DataError, distribute.ClusterError, distribute.PeerError) as error:
        message = str(error)
    except MemoryError:
        message = OUT_OF_MEMORY
    except OSError as error:
        message = f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")
    except tf.errors.OpError as error:
        message = describe_op_error(error)
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1
