"""Console output that stops printing, never training, when its stream goes away
(stdout closed, or a pipe whose reader quit, as `swsl-train ... | head -4`).

No TensorFlow or Keras here: the CLI prints its first line with it before they load.
"""

from __future__ import annotations

import os
import sys


class Console:
    """Lines to a stream (stdout) and errors to stderr, immune to a vanished reader."""

    def __init__(self, stream=None):
        self.stream = stream
        self.closed = stream is None

    def isatty(self) -> bool:
        try:
            return not self.closed and self.stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self._close()

    def flush(self) -> None:
        self.write("")

    def line(self, text: str) -> None:
        self.write(text + "\n")

    @staticmethod
    def error(text: str) -> None:
        if sys.stderr is None:
            return
        try:
            print(text, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def _close(self) -> None:
        """Silences the stream for good, including the interpreter's flush at exit."""
        self.closed = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def epoch_line(epoch: int, epochs: int, logs: dict, seconds: float, images: int) -> str:
    """`epoch 3/10  loss 0.0412  accuracy 0.9871  val_loss ...  12.3 s  4870 img/s`."""
    metrics = "  ".join(
        f"{name} {logs[name]:.4f}"
        for name in ("loss", "accuracy", "val_loss", "val_accuracy")
        if name in logs
    )
    return f"epoch {epoch}/{epochs}  {metrics}  {seconds:.1f} s  {images / seconds:.0f} img/s"
