"""One run per folder at a time: a lock file made with O_EXCL, kept fresh by a heartbeat.

O_EXCL creation is atomic on local disks and on NFS (v3 and later), the shared filesystems
cluster jobs write to. A lock is stale when its holder is gone: on this host, when its
process no longer exists; on any host, when its heartbeat stopped (its file's mtime is older
than ``stale_after_s``, the setting ``lock_stale_after_s``), even if its pid now names another
live process. A stale lock is moved aside atomically, so of two runs that
find it stale only one takes it over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import ConceptpruneError
from pipeline.workdir import read_json

log = logging.getLogger(__name__)

LOCK_NAME = ".conceptprune.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class RunLockError(ConceptpruneError, RuntimeError):
    """Another run holds the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_stale(path: Path, holder: dict[str, Any] | None, stale_after_s: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > stale_after_s:  # its heartbeat stopped, whatever its pid is now
        return True
    if holder is None:  # unreadable: being written now, or left half-written by a kill
        return False
    return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "a run whose lock file cannot be read"
    return (f"run {holder.get('run')} (host {holder.get('host')}, pid {holder.get('pid')}, "
            f"started {holder.get('started')})")


def _try_create(path: Path, info: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    return True


@contextmanager
def run_lock(folder: Path, what: str = "folder", stale_after_s: float = STALE_AFTER_S,
             heartbeat_s: float = HEARTBEAT_S) -> Iterator[dict[str, Any]]:
    """Hold ``folder``'s lock for the block; RunLockError names the holder when it is taken."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    info = {"run": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds")}
    for _ in range(3):
        if _try_create(path, info):
            break
        holder = read_json(path)
        if not _is_stale(path, holder, stale_after_s):
            raise RunLockError(
                f"the {what} {folder} is in use by {_describe(holder)}: wait for that run to "
                f"finish, or choose another {what}. If that run is dead and this message "
                f"stays, delete {path}")
        aside = path.with_name(f"{LOCK_NAME}.stale-{info['run']}")
        try:
            os.replace(path, aside)  # only one of the runs that found it stale moves it
        except FileNotFoundError:
            continue
        log.warning("%s: took over the lock of %s, which is no longer running", folder,
                    _describe(holder))
        aside.unlink(missing_ok=True)
    else:
        raise RunLockError(f"could not take the lock {path}: other runs keep taking it")

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                os.utime(path)
            except OSError:
                return

    thread = threading.Thread(target=beat, name=f"lock-heartbeat {folder}", daemon=True)
    thread.start()
    try:
        yield info
    finally:
        stop.set()
        thread.join()
        if (read_json(path) or {}).get("run") == info["run"]:
            path.unlink(missing_ok=True)
