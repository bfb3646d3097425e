"""Console output: epoch lines, and a stream that stops printing, not training, when it goes away."""

import io
import os

from swsl_cli.runner.console import Console, epoch_line
from swsl_cli.runner.progress import ProgressBar


def test_epoch_line():
    logs = {"loss": 0.04123, "accuracy": 0.98712, "val_loss": 0.05, "val_accuracy": 0.9833}
    assert epoch_line(3, 10, logs, 12.34, 60000) == (
        "epoch 3/10  loss 0.0412  accuracy 0.9871  val_loss 0.0500  val_accuracy 0.9833  "
        "12.3 s  4862 img/s"
    )
    assert epoch_line(1, 1, {"loss": 1.0}, 2.0, 10) == "epoch 1/1  loss 1.0000  2.0 s  5 img/s"


def test_console_writes_lines():
    stream = io.StringIO()
    console = Console(stream)
    console.line("one")
    console.line("two")
    assert stream.getvalue() == "one\ntwo\n" and not console.isatty()


def test_a_broken_pipe_silences_the_console_for_good():
    read, write = os.pipe()
    stream = os.fdopen(write, "w")
    os.close(read)  # the reader quit, as `| head` does
    console = Console(stream)
    console.line("lost")
    assert console.closed
    console.line("ignored")  # no exception, nothing written
    stream.write("after\n")
    stream.flush()  # fd now points at /dev/null: the interpreter's last flush cannot fail
    stream.close()


def test_no_stdout_at_all():
    console = Console(None)
    console.line("nowhere")
    assert console.closed and not console.isatty()


def test_progress_bar_only_on_a_terminal():
    assert not ProgressBar(2, 10, console=Console(io.StringIO())).show_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert ProgressBar(2, 10, console=Console(Terminal())).show_bar
    assert not ProgressBar(2, 10, quiet=True, console=Console(Terminal())).show_bar
