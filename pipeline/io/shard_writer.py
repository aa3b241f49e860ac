"""Writing kept samples into new webdataset shards, img2dataset style (SPEC section 7).

Members are copied byte for byte under their own names. Tar headers are deterministic
(mtime 0, uid/gid 0, mode 0o644, empty user and group names), so the same samples give the
same tar bytes on every run. Beside each ``NNNNN.tar`` go ``NNNNN.parquet`` (one row per
sample) and ``NNNNN_stats.json``, written last, as img2dataset does; a tar is written under a
temporary name and renamed when complete.

Headers are ``pipeline.io.tar.header_block``'s, and the headers and member bytes of many
samples go to the file in one ``os.writev``, without copying: ``tarfile.addfile`` costs tens
of microseconds per member and copies the data in 16 KiB pieces, too slow next to a plain
file copy. A tar ends with the two zero blocks of the end-of-archive marker, unpadded to
tarfile's 10 KiB records (readers do not need them).
Output folders are local paths (the tar is renamed into place when complete).

``copy_spans`` appends samples by byte range of an input tar mapped in memory instead, header
blocks included as they are, handing the mapped pages to ``os.writev``: the copy then costs
what a plain file copy costs. The write step uses it where the embed step recorded where
each sample lies.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.io.shards import Sample
from pipeline.io.tar import BLOCK, END_OF_ARCHIVE, header_block
from pipeline.workdir import tmp_name, write_json, write_parquet

_END = END_OF_ARCHIVE
_PADS = [bytes(n) for n in range(BLOCK)]
# pending writes are flushed in one os.writev at these bounds (Linux IOV_MAX is 1024):
# a system call per sample costs as much as the copy itself on some machines
_FLUSH_PARTS = 960
_FLUSH_BYTES = 8 << 20


def _write_all(fd: int, pending: list[bytes | memoryview]) -> None:
    for start in range(0, len(pending), _FLUSH_PARTS):
        parts = pending[start : start + _FLUSH_PARTS]
        written = os.writev(fd, parts)
        if written != sum(len(p) for p in parts):  # short write: write the rest plainly
            rest = memoryview(b"".join(parts))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]


def _complete(fd: int, tmp: Path, path: Path, table: pa.Table, stats: dict[str, Any]) -> None:
    """Close a written tar, move it into place, then write its parquet and stats."""
    try:
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the fd is closed, or beyond saving
        raise
    write_parquet(path.with_suffix(".parquet"), table)
    write_json(path.with_name(f"{path.stem}_stats.json"), stats)


def sample_record(sample: Sample) -> dict[str, Any]:
    """The parquet row of a sample: its json fields flattened, then key, uid and caption."""
    return {**sample.meta, "key": sample.key, "uid": sample.uid, "caption": sample.caption}


def _parquet_holds(kind: pa.DataType) -> bool:
    """Whether parquet can store the type: it has no struct without fields (json ``{}``)."""
    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(_parquet_holds(f.type) for f in kind)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _parquet_holds(kind.value_type)
    return True


def _column(values: list[Any]) -> pa.Array:
    try:
        column = pa.array(values)
        if _parquet_holds(column.type):
            return column
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        pass
    # mixed types across samples, integers past 64 bits, empty objects: kept readable as
    # json text
    return pa.array([None if v is None else json.dumps(v, sort_keys=True, default=str)
                     for v in values], pa.string())


def _typed(values: list[Any], kind: pa.DataType) -> pa.Array:
    """``values`` as ``kind`` where they convert, else as ``_column`` makes them."""
    try:
        return pa.array(values, kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        return _column(values)


def records_table(keys: list[str], records: list[dict[str, Any]],
                  schema: pa.Schema | None = None) -> pa.Table:
    """One row per sample; a field missing from a record is null.

    With ``schema`` (the input's img2dataset sidecar), its columns come first, in its order
    and with its types (an all-null ``error_message`` stays a string), then the other fields
    by first appearance. Without it: ``key``, ``uid``, ``caption``, then the others.
    """
    given = [] if schema is None else [f.name for f in schema]
    names = [*given, *(n for n in ("key", "uid", "caption") if n not in given)]
    for record in records:
        names.extend(n for n in record if n not in names)
    types = {} if schema is None else {f.name: f.type for f in schema}
    columns = {}
    for n in names:
        values = keys if n == "key" else [r.get(n) for r in records]
        columns[n] = _typed(values, types[n]) if n in types else (
            pa.array(values, pa.string()) if n == "key" else _column(values))
    return pa.table(columns)


@dataclass(frozen=True)
class WrittenShard:
    """One finished output shard."""

    path: Path
    count: int
    bytes: int

    @property
    def name(self) -> str:
        return self.path.stem


class ShardWriter:
    """Append samples to ``out_dir/NNNNN.tar``, rolling to the next shard by count and bytes.

    A shard holds at most ``max_count`` samples and ``max_bytes`` bytes of tar (headers,
    padded data and the end-of-archive marker); a single sample larger than ``max_bytes``
    gets a shard of its own. A shard never holds a key twice: a sample whose key the shard
    already has starts the next shard (input shards whose keys restart in every shard would
    otherwise make webdataset merge two samples, and wids miscount them). Use as a context
    manager: leaving it normally finishes the current shard; leaving it on an exception
    removes the unfinished one.
    """

    def __init__(self, out_dir: str | Path, max_count: int = 10000,
                 max_bytes: int = 1_000_000_000, start_index: int = 0,
                 schema: pa.Schema | None = None, make_parents: bool = True) -> None:
        """``make_parents=False``: ``out_dir``'s parent must exist (a staging folder the
        driver made; a stopped run's is never made again by a late task)."""
        if max_count < 1 or max_bytes < 1:
            raise ValueError(f"max_count and max_bytes must be positive, got {max_count}, "
                             f"{max_bytes}")
        self.out_dir = Path(out_dir)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.index = start_index
        self.schema = schema  # of the input's sidecar parquet: the output's keeps it
        self.make_parents = make_parents
        self.shards: list[WrittenShard] = []
        self._fd: int | None = None
        self._path: Path | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._bytes = 0
        self._keys: list[str] = []
        self._key_set: set[str] = set()
        self._records: list[dict[str, Any]] = []
        self._started = 0.0
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self) -> None:
        self.out_dir.mkdir(parents=self.make_parents, exist_ok=True)
        self._path = self.out_dir / f"{self.index:05d}.tar"
        self._tmp = tmp_name(self._path)
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._count = self._bytes = 0
        self._keys, self._records, self._key_set = [], [], set()
        self._pending, self._pending_bytes = [], 0
        self._started = time.time()

    def _flush(self) -> None:
        assert self._fd is not None
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if pending:
            _write_all(self._fd, pending)

    def write(self, sample_members: list[tuple[str, bytes]], key: str,
              record: dict[str, Any]) -> None:
        """Append one sample's members (name, bytes) and its parquet row (``key`` + record)."""
        if not sample_members:
            raise ValueError(f"sample {key!r} has no members")
        parts: list[bytes] = []
        size = 0
        for name, data in sample_members:
            header = header_block(name, len(data))
            pad = _PADS[-len(data) % BLOCK]
            parts += (header, data, pad)
            size += len(header) + len(data) + len(pad)
        if self._fd is not None and self._count and (
                self._count + 1 > self.max_count
                or self._bytes + size + len(_END) > self.max_bytes or key in self._key_set):
            self._end_shard()
        if self._fd is None:
            self._open()
        self._queue(parts, size)
        self._count += 1
        self._bytes += size
        self._keys.append(key)
        self._key_set.add(key)
        self._records.append(record)

    def copy_spans(self, source: memoryview, starts: np.ndarray, ends: np.ndarray,
                   keys: list[str], records: list[dict[str, Any]]) -> None:
        """Append samples that lie whole, headers and padding included, at [start, end) of
        ``source``, an input tar mapped in memory; consecutive spans go as one piece.

        The samples' header blocks are copied as they are, not rewritten: the write step
        uses this where the embed step recorded the spans, to copy at file-copy speed. It
        rolls shards as ``write`` does; no reference to ``source`` remains when it returns.
        """
        sizes = ends - starts
        n, i = len(sizes), 0
        try:
            while i < n:
                if self._fd is not None and self._count and (
                        self._count + 1 > self.max_count
                        or self._bytes + int(sizes[i]) + len(_END) > self.max_bytes
                        or keys[i] in self._key_set):
                    self._end_shard()
                if self._fd is None:
                    self._open()
                room = self.max_bytes - self._bytes - len(_END)
                total = np.cumsum(sizes[i : i + self.max_count - self._count])
                take = max(int(np.searchsorted(total, room, side="right")), 1)
                take = self._fresh_keys(keys, i, take)
                first, last = starts[i : i + take], ends[i : i + take]
                cut = np.flatnonzero(first[1:] != last[:-1]) + 1  # where a run ends
                for a, b in zip(first[np.r_[0, cut]].tolist(),
                                last[np.r_[cut - 1, take - 1]].tolist(), strict=True):
                    self._queue([source[a:b]], b - a)
                self._count += take
                self._bytes += int(total[take - 1])
                self._keys += keys[i : i + take]
                self._key_set.update(keys[i : i + take])
                self._records += records[i : i + take]
                i += take
            if self._fd is not None:
                self._flush()
        finally:
            self._pending, self._pending_bytes = [], 0  # after an error too: let go of source

    def _fresh_keys(self, keys: list[str], first: int, take: int) -> int:
        """How many of ``keys[first : first + take]`` in a row the shard can take: none of
        them already in it or twice among them (at least 1: the caller checked the first)."""
        seen: set[str] = set()
        for j in range(first, first + take):
            if keys[j] in self._key_set or keys[j] in seen:
                return max(j - first, 1)
            seen.add(keys[j])
        return take

    def _queue(self, parts: list[bytes] | list[memoryview], size: int) -> None:
        """Add to what the next ``os.writev`` writes; write it once it is large enough."""
        self._pending += parts
        self._pending_bytes += size
        if len(self._pending) >= _FLUSH_PARTS or self._pending_bytes >= _FLUSH_BYTES:
            self._flush()

    def write_sample(self, sample: Sample) -> None:
        """Append a Sample read by ``iter_samples``, with ``sample_record`` as its row."""
        self.write(sample.members, sample.key, sample_record(sample))

    def _finish(self) -> None:
        """Write the current shard's end, move it into place, write its sidecars."""
        assert self._fd is not None and self._path is not None and self._tmp is not None
        self._pending.append(_END)
        self._flush()
        fd, tmp, path = self._fd, self._tmp, self._path
        table = records_table(self._keys, self._records, self.schema)
        stats = {
            "count": self._count,
            "successes": self._count,
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "duration": round(time.time() - self._started, 3),
            "start_time": self._started,
            "end_time": time.time(),
            "status_dict": {"success": self._count},
        }
        self._fd = self._tmp = None
        _complete(fd, tmp, path, table, stats)  # removes the tar where it fails
        self.shards.append(WrittenShard(path, self._count, self._bytes + len(_END)))
        self.index += 1

    def _end_shard(self) -> None:
        if self._fd is not None:
            try:
                self._finish()
            except BaseException:
                self.abort()
                raise

    def close(self) -> list[WrittenShard]:
        """Finish the current shard; returns every shard written."""
        self._end_shard()
        return self.shards

    def abort(self) -> None:
        """Drop the unfinished shard (finished ones stay)."""
        self._pending, self._pending_bytes = [], 0
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
