"""The per-epoch progress bar (tqdm) on a terminal."""

from __future__ import annotations

import sys

import keras
from tqdm.auto import tqdm

from swsl_cli.runner.console import Console


class ProgressBar(keras.callbacks.Callback):
    """Per-epoch tqdm bar with live loss/accuracy, on a terminal and unless quiet."""

    def __init__(
        self, epochs: int, steps: int, quiet: bool = False, console: Console | None = None
    ):
        super().__init__()
        self.epochs = epochs
        self.steps = steps
        self.console = console or Console(sys.stdout)
        self.show_bar = not quiet and self.console.isatty()
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.show_bar:
            self.bar = tqdm(
                total=self.steps,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="step",
                leave=False,
                file=self.console,
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
