"""Errors in a worker's task that no retry can fix, carried back to the driver as they are.

A full disk, a denied permission, a missing input file or a user's error (a
``ConceptpruneError``) fail the same way on every attempt. Raised in a Spark task they would
be retried ``engine.max_retries`` times first, and on Ray they arrive wrapped in the
worker's coloured traceback. The worker returns them instead (``TaskFailure``) and the
driver raises them again: one line that names the file and the fix, at once, on every engine.
Anything else a task raises is left to the engine (retried, then reported as a bug).
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConceptpruneError

FINAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                          errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class TaskError(ConceptpruneError, RuntimeError):
    """A user's error raised in a worker, as its message says."""


@dataclass(frozen=True)
class TaskFailure:
    """A task's final error, as plain fields (every exception class need not pickle)."""

    kind: str  # "os" or "user"
    message: str
    host: str  # the worker's: a full disk is that machine's
    errno: int | None = None
    filename: str | None = None

    @classmethod
    def of(cls, err: BaseException) -> TaskFailure | None:
        """The failure to send back for ``err``, or None when a retry might help."""
        host = socket.gethostname()
        if isinstance(err, OSError) and err.errno in FINAL_ERRNOS:
            return cls("os", err.strerror or str(err), host, err.errno,
                       None if err.filename is None else str(err.filename))
        if isinstance(err, ConceptpruneError):
            return cls("user", str(err), host)
        return None

    def error(self) -> Exception:
        """The exception to raise in the driver."""
        if self.kind == "os":
            return OSError(self.errno, f"{self.message} (on worker {self.host})", self.filename)
        return TaskError(self.message)


def run_task(fn: Callable[..., Any], *args: Any) -> Any:  # noqa: ANN401
    """``fn(*args)`` in a worker: its result, or the ``TaskFailure`` of a final error."""
    try:
        return fn(*args)
    except Exception as err:
        failure = TaskFailure.of(err)
        if failure is None:
            raise
        return failure


def result_of(value: Any) -> Any:  # noqa: ANN401
    """In the driver: a task's result, or its final error raised again."""
    if isinstance(value, TaskFailure):
        raise value.error()
    return value


def plain(text: str) -> str:
    """``text`` without terminal colour codes (Ray colours the tracebacks it forwards)."""
    return _ANSI.sub("", text)
