"""SIGHUP, SIGINT and SIGTERM: exit statuses and the exception that carries them.

No TensorFlow here: the CLI installs a `RaiseInterrupted` handler before
TensorFlow loads, so a signal in any phase ends in one line, never a traceback.

`Interrupted` derives from `BaseException`, as `KeyboardInterrupt` does: code
that catches `Exception` (Keras's loading does, around each layer) lets it
through. Code that catches everything (Keras's saving has bare `except:`
blocks) can still swallow it, so the handler also remembers the signal, and
`raise_if_interrupted` raises it again after such calls.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import contextmanager

# 128 + the signal's number, as a shell reports a process that a signal ended.
EXIT_CODES = {"SIGHUP": 129, "SIGINT": 130, "SIGTERM": 143}
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGHUP, SIGINT or SIGTERM outside the training loop: exit 129, 130 or 143."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = EXIT_CODES[signal_name]


class RaiseInterrupted:
    """Signal handler that turns SIGHUP/SIGINT/SIGTERM into `Interrupted`, and remembers
    the first signal, for `raise_if_interrupted`."""

    def __init__(self):
        self.received: str | None = None

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        self.received = self.received or name
        raise Interrupted(name)


def raise_interrupted(signum, frame):
    """Signal handler that turns SIGHUP/SIGINT/SIGTERM into `Interrupted`, for code that makes
    no call that could swallow it (a `RaiseInterrupted` also remembers the signal)."""
    raise Interrupted(signal.Signals(signum).name)


def raise_if_interrupted() -> None:
    """Raises `Interrupted` again if the installed `RaiseInterrupted` handler saw a signal.

    Call it after a library call that may have caught the exception. Under any
    other handler (the training loop's, which stops at the next step) it does
    nothing.
    """
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, RaiseInterrupted) and handler.received:
        raise Interrupted(handler.received)


@contextmanager
def handled_by(handler: Callable):
    """Routes SIGHUP, SIGINT and SIGTERM to `handler` inside the block, restoring the old
    handlers.

    The signals are unblocked inside the block too: a process started from a
    thread that blocks them (as a Ray worker's threads do) inherits that mask,
    and a blocked signal would never reach its handler.
    """
    previous = {sig: signal.signal(sig, handler) for sig in HANDLED_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, old in previous.items():
            signal.signal(sig, old)
