"""Stopping a run on SIGTERM, SIGHUP or SIGINT the way Ctrl-C always stopped it.

Kubernetes, Slurm and spot preemption send SIGTERM (and a grace period before SIGKILL); a
closed terminal sends SIGHUP. Their default action ends the process at once, leaving the
folder lock, staging folders and a Ray or Spark session behind. While a run holds its
folders, each of these signals raises ``Interrupted`` in the main thread instead: every
``finally`` and context manager on the way out runs (the lock is released, staging is
removed, the engine is shut down), units in flight finish or are abandoned (their markers
are written by the unit that finished, so a rerun redoes only what is missing), and the
command exits with 128 + the signal's number (143, 129, 130), as a shell reports a process
killed by it. A second signal while stopping is noted and ignored, so the clean-up finishes.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_active: list[Callable[[int, FrameType | None], None]] = []  # the running block's handler
_deferring: list[int] = []  # depth of ``deferred`` blocks now running (main thread)
_pending: list[int] = []  # signals that arrived in one


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """The run was asked to stop by ``signum``; not an ``Exception``, so that no handler of
    errors mistakes it for one."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# what a stop raises: engines drop the work they have in flight when they see one
STOPS = (Interrupted, KeyboardInterrupt)


def exit_code_of(err: BaseException) -> int | None:
    """The exit code of a stop (``Interrupted``, or a ``KeyboardInterrupt`` raised before the
    handlers were in place), or None for anything else."""
    if isinstance(err, Interrupted):
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return None


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGTERM, SIGHUP and SIGINT raise ``Interrupted``; the former
    handlers come back after it. Off the main thread (where Python delivers signals) this
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if _deferring:
            _pending.append(signum)
            return
        if stopping:
            log.warning("%s received while stopping: finishing the clean-up first",
                        signal.Signals(signum).name)
            return
        stopping.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    _active.append(handler)
    try:
        yield
    finally:
        _active.remove(handler)
        for sig, former in previous.items():
            signal.signal(sig, former)


def reclaim() -> None:
    """Put the running block's handlers back after a library replaced them: ``ray.init``
    makes SIGTERM exit at once (``sys.exit``) and a SparkContext takes SIGINT."""
    if _active and threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, _active[-1])


@contextmanager
def deferred() -> Iterator[None]:
    """A stop signal that arrives in the block takes effect when it ends: for steps that must
    not be cut in two (a folder swapped in by two renames)."""
    _deferring.append(1)
    try:
        yield
    finally:
        _deferring.pop()
    if not _deferring and _pending:
        signum = _pending[0]
        _pending.clear()
        signal.raise_signal(signum)  # handled now, in the main thread as ever
