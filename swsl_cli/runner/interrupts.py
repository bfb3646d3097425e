"""SIGINT and SIGTERM: exit statuses and the exception that carries them.

No TensorFlow here: the CLI installs `raise_interrupted` before TensorFlow
loads, so a signal in any phase ends in one line, never a traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import contextmanager

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """SIGINT or SIGTERM outside the training loop: exit 130 or 143."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = EXIT_CODES[signal_name]


def raise_interrupted(signum, frame):
    """Signal handler that turns SIGINT/SIGTERM into `Interrupted`."""
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def handled_by(handler: Callable):
    """Routes SIGINT and SIGTERM to `handler` inside the block, restoring the old handlers.

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
