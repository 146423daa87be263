"""SIGINT/SIGTERM: turn a signal into an exception the migration can roll back from.

This module owns the ``Interrupted`` exception and the signal handlers that
raise it. ``Interrupted`` is a ``KeyboardInterrupt`` on purpose: psycopg
answers a ``KeyboardInterrupt`` raised while it waits on the server by
cancelling the running statement, so the current revision's transaction is
rolled back and its locks released instead of running on unattended.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ophelia_db.errors import ExitCode


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT or SIGTERM arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return ExitCode.SIGTERM if self.signum == signal.SIGTERM else ExitCode.SIGINT


def exit_code_of(exc: BaseException) -> int:
    """The exit code for an interruption (a bare KeyboardInterrupt is SIGINT)."""
    return exc.exit_code if isinstance(exc, Interrupted) else ExitCode.SIGINT


def _raise(signum: int, _frame: FrameType | None) -> None:
    # Further signals during the clean-up must not abort the clean-up itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def raising_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise ``Interrupted``."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_initializer() -> None:
    """Set up a worker process: SIGTERM interrupts its migration; SIGINT is the parent's call.

    A terminal's Ctrl-C reaches every process of the group; the parent decides
    and forwards SIGTERM, so workers ignore SIGINT rather than dying mid-wait.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_in_worker)
    # The imports preloaded in the fork server are long-lived: keeping the
    # cyclic collector off them avoids copying their pages in every worker.
    gc.freeze()


_worker_signal: int | None = None


def worker_interrupted() -> int | None:
    """The signal that interrupted this worker process (or its run's threads): start nothing new."""
    return _worker_signal


def interrupted_exit_code() -> int:
    """The exit code of this process's interruption (SIGTERM's when none is recorded)."""
    return ExitCode.SIGINT if _worker_signal == signal.SIGINT else ExitCode.SIGTERM


def interrupt_threads(signum: int) -> None:
    """Tell the migrations running in threads of this process that the run is interrupted."""
    global _worker_signal
    _worker_signal = signum


def clear_thread_interrupt() -> None:
    """Forget an interruption once its run's threads have all stopped (a library may run again)."""
    global _worker_signal
    _worker_signal = None


def _raise_in_worker(signum: int, _frame: FrameType | None) -> None:
    global _worker_signal
    _worker_signal = signum
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)
