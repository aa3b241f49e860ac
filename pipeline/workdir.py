"""The run's work folder: atomic file writes and per-step completion markers.

Every output is written under a temporary name and renamed when complete. A step's marker is
written last and records a fingerprint of everything the step depends on (its settings and
its inputs' fingerprints), so a re-run skips finished steps and redoes a step whose inputs
or settings changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConceptpruneError
from pipeline.interrupts import deferred


def unique_suffix() -> str:
    """Unique across the hosts of a cluster writing one shared work folder (a pid alone is
    not: two machines can run the same pid)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# what atomic_write and staged_dir name their unfinished files: nothing else matches
_UNFINISHED = re.compile(r"\..+\.(tmp|staging|old)-.+-\d+-[0-9a-f]{8}")


# every name a run writes under its work folder's step folders and markers (a test runs
# every step on both paths and checks that nothing else appears)
_RUN_FILE = re.compile(
    r"(part|vectors|scatter|sums|bucket|range)-\d{5}(\.offsets|\.parts|\.scale)?"
    r"\.(npy|parquet)"
    r"|centroids\.npy|clusters\.parquet"
    r"|(img_emb|text_emb|clip_img_emb)_\d+\.npy|metadata_\d+\.parquet"
    r"|[a-z_]+-\d{5}\.json|fit\.json")  # units' markers (markers/STEP/)


class WorkFolderError(ConceptpruneError, ValueError):
    """The work folder holds a file no run wrote, where a run must delete."""


def run_file(name: str) -> bool:
    """Whether ``name`` is a file a run writes in its work folder (or an unfinished one)."""
    return _RUN_FILE.fullmatch(name) is not None or unfinished_name(name)


def foreign_files(folder: Path) -> list[Path]:
    """The files under ``folder`` that no run writes, in path order."""
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not run_file(p.name)]


def _more(paths: list[Path]) -> str:
    return f" ({len(paths) - 1} more such files)" if len(paths) > 1 else ""


def unfinished_name(name: str) -> bool:
    """Whether ``name`` is an unfinished write of this code (a killed run may leave one)."""
    return _UNFINISHED.fullmatch(name) is not None


def tmp_name(path: Path) -> Path:
    """A hidden name beside ``path`` to write under, unique to this process and call;
    ``unfinished_name`` recognises it."""
    return path.with_name(f".{path.name}.tmp-{unique_suffix()}")


def atomic_write(path: Path, write: Callable[[Path], None], *, parents: bool = True) -> None:
    """Call ``write(tmp)`` and rename tmp to ``path`` only if it succeeded. Without
    ``parents`` the folder must exist: a task writing into a staging folder never makes it
    again after a stopped run removed it."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A fresh, empty folder beside ``final`` that takes its place when the block succeeds.

    On an error (or a kill) ``final`` keeps what it held, so an output folder is always one
    run's whole result and never a mix with files a run before it left; staging folders a
    killed run left are removed on the next call.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in final.parent.glob(f".{final.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    suffix = unique_suffix()
    staging = final.parent / f".{final.name}.staging-{suffix}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{suffix}"
    with deferred():  # a stop signal waits for the swap: never a folder moved away alone
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)


def write_parquet(path: Path, table: pa.Table, *, parents: bool = True,
                  dictionary: bool | list[str] = True) -> None:
    """``table`` as zstd parquet, atomically. ``dictionary`` names the columns worth
    dictionary-encoding (all by default): a column of distinct strings (uids, keys) only
    costs the attempt before parquet falls back to plain values."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd",
                                                  compression_level=1,
                                                  use_dictionary=dictionary), parents=parents)


def write_npy(path: Path, array: np.ndarray) -> None:
    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    atomic_write(path, _write)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True)))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None where the file is missing, unreadable, not JSON or
    not an object (a marker or lock a killed process left half-written, say)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class WorkDir:
    """Markers and step folders under one run's work folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.markers = self.root / "markers"

    def step_dir(self, step: str) -> Path:
        path = self.root / step
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _marker(self, name: str) -> Path:
        return self.markers / f"{name}.json"

    def done(self, name: str, fp: str) -> bool:
        marker = self._marker(name)
        if not marker.exists():
            return False
        try:
            return json.loads(marker.read_text()).get("fingerprint") == fp
        except (OSError, json.JSONDecodeError):
            return False

    def mark(self, name: str, fp: str, stats: dict[str, Any] | None = None) -> None:
        write_json(self._marker(name), {"fingerprint": fp, "stats": stats or {}})

    def stats(self, name: str) -> dict[str, Any]:
        return json.loads(self._marker(name).read_text()).get("stats", {})

    def reset_step(self, step: str) -> None:
        """Forget a step's outputs and its units' markers (its settings changed). A file no
        run writes there (a user's notes dropped into ``WORK/dbp/``) is never deleted: the
        run stops, naming it."""
        foreign = [p for folder in (self.root / step, self.markers / step)
                   for p in foreign_files(folder)]
        if foreign:
            raise WorkFolderError(
                f"{foreign[0]} is no file conceptprune writes{_more(foreign)}, yet lies in "
                f"the work folder's {step}/, which this run must empty (its settings or input "
                "changed): move it out of the work folder and run the same command again")
        shutil.rmtree(self.root / step, ignore_errors=True)
        shutil.rmtree(self.markers / step, ignore_errors=True)

    def begin_step(self, step: str, fp: str) -> None:
        """Start or resume ``step``: the units an interrupted attempt with the same fingerprint
        finished are kept; anything an attempt with another fingerprint left is removed."""
        started = f"{step}.started"
        if self.done(started, fp):
            return
        self.reset_step(step)
        self.mark(started, fp)
