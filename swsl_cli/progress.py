"""Console progress: a tqdm bar per epoch on a terminal, one summary line per epoch always."""

from __future__ import annotations

import sys

import keras
from tqdm.auto import tqdm


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float, images: int) -> str:
    """`epoch 3/10  loss 0.0412  accuracy 0.9871  val_loss ...  12.3 s  4870 img/s`."""
    metrics = "  ".join(
        f"{name} {logs[name]:.4f}"
        for name in ("loss", "accuracy", "val_loss", "val_accuracy")
        if name in logs
    )
    return f"epoch {epoch}/{epochs}  {metrics}  {seconds:.1f} s  {images / seconds:.0f} img/s"


class ProgressBar(keras.callbacks.Callback):
    """Per-epoch tqdm bar with live loss/accuracy; plain lines when not a terminal or quiet."""

    def __init__(self, epochs: int, steps: int, quiet: bool = False, stream=None):
        super().__init__()
        self.epochs = epochs
        self.steps = steps
        self.stream = stream or sys.stdout
        self.show_bar = not quiet and self.stream.isatty()
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.show_bar:
            self.bar = tqdm(
                total=self.steps,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="step",
                leave=False,
                file=self.stream,
                dynamic_ncols=True,
            )

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            self.bar.update(1)
            if logs and batch % 10 == 0:
                self.bar.set_postfix(
                    loss=f"{float(logs['loss']):.4f}",
                    accuracy=f"{float(logs['accuracy']):.4f}",
                    refresh=False,
                )

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def report(self, epoch: int, logs: dict, seconds: float, images: int) -> None:
        """Prints the epoch's summary line (called by the metrics recorder)."""
        print(
            epoch_line(epoch + 1, self.epochs, logs, seconds, images), file=self.stream, flush=True
        )
