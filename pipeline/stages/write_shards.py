"""The write step of the image path: kept samples copied into new shards (SPEC §7).

Input shards are visited in order and every sample whose ledger row says ``kept`` is copied
byte for byte, so input order is preserved within a shard. Two ways, same samples:

- by span, where the embed step recorded where each sample lies in its (local, uncompressed)
  tar: the tar is mapped in memory and the kept byte ranges handed to ``os.writev``, header
  blocks as they are, without parsing the tar again, which makes the step about as fast as a
  plain copy of those bytes;
- by parsing, otherwise (remote or compressed shards, embeddings from an older version, a
  tar that changed since it was embedded): the shard is read again and the kept samples'
  members are written with fresh, deterministic headers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.shard_writer import ShardWriter, WrittenShard
from pipeline.io.shards import (
    SPAN_COLUMNS,
    ShardStream,
    identity_from_metadata,
    local_tar_path,
    sidecar_schema,
    tar_identity,
)
from pipeline.io.tar import spans_hold
from pipeline.workdir import write_json

log = logging.getLogger(__name__)

_PLAN_COLUMNS = ["key", "uid", "caption", *SPAN_COLUMNS]
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux


@dataclass
class WriteCounts:
    """How the kept samples were copied, for the log and the tests."""

    by_span: int = 0
    by_parsing: int = 0
    not_copied: int = 0  # kept, but the shard read again no longer holds them as embedded


def _kept_index(table: pa.Table) -> np.ndarray:
    status = table["status"].to_numpy(zero_copy_only=False)
    return np.flatnonzero(status == "kept")


def _span_plan(url: str, ledger: pa.Table, kept: np.ndarray, metadata: Path | None
               ) -> tuple[str, pa.Table] | None:
    """The tar path and the kept samples' span rows, where the write can go by span."""
    identity = tar_identity(url)
    if identity is None or metadata is None or not metadata.exists():
        return None  # not a local uncompressed tar, or no embed step
    parquet = pq.ParquetFile(metadata)
    schema = parquet.schema_arrow
    recorded = identity_from_metadata(schema.metadata)
    if recorded is None or not set(_PLAN_COLUMNS) <= set(schema.names):
        return None  # embedded by a version that did not record spans
    if recorded != identity:
        _changed(url)
        return None
    meta = parquet.read(columns=_PLAN_COLUMNS)
    if meta.num_rows != ledger.num_rows or not meta["key"].equals(ledger["key"]):
        return None
    rows = meta.take(kept)
    if rows["tar_start"].null_count or rows["tar_end"].null_count:
        return None  # a kept sample with other members between its own
    path = local_tar_path(url)
    assert path is not None  # tar_identity found it
    return path, rows


def _key_bytes(keys: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of a string column, as numpy views of its buffers."""
    column = keys.combine_chunks().cast(pa.large_binary())
    _, offsets, data = column.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int64)
    text = np.zeros(0, np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)
    return bounds[column.offset : column.offset + len(column) + 1], text


def _spans_hold(mapped: mmap.mmap, keys: pa.ChunkedArray, starts: np.ndarray, ends: np.ndarray
                ) -> bool:
    """Each span lies inside the file and starts with a sound header of its own sample
    (``tar.spans_hold``), checked on all kept samples at once."""
    return spans_hold(mapped, starts, ends, *_key_bytes(keys))


def _records(mapped: mmap.mmap, rows: pa.Table) -> list[dict[str, Any]] | None:
    """The kept samples' parquet rows: json fields, key, uid, caption; None where a json
    member does not hold an object."""
    texts = [b"{}" if a is None else mapped[a:b] for a, b in
             zip(rows["json_start"].to_pylist(), rows["json_end"].to_pylist(), strict=True)]
    try:  # one parse for all: a call per sample costs more than the parsing
        metas = json.loads(b"[" + b",".join(texts) + b"]")
    except ValueError:
        try:  # another encoding than utf-8, say: as the reader does, one by one
            metas = [json.loads(t) for t in texts]
        except ValueError:
            return None
    if len(metas) != len(texts) or not all(isinstance(m, dict) for m in metas):
        return None
    return [{**meta, "key": key, "uid": uid, "caption": caption} for meta, key, uid, caption
            in zip(metas, rows["key"].to_pylist(), rows["uid"].to_pylist(),
                   rows["caption"].to_pylist(), strict=True)]


def _changed(url: str) -> None:
    log.warning("shard %s does not match what the embed step recorded (changed since?): "
                "its kept samples are copied by reading it again", url)


def _map(path: str) -> mmap.mmap | None:
    """The file mapped read-only, its pages mapped up front where the system can (a page
    fault per page would cost more than the copy); None for an empty file."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | _POPULATE,
                             prot=mmap.PROT_READ)
        except ValueError:
            return None


@dataclass
class _ShardPlan:
    """One input shard made ready: its kept keys and, where it can go by span, its mapped
    tar with the kept samples' spans and parquet rows."""

    keys: list[str]
    positions: list[int]  # of the kept samples in the shard's sample order
    mapped: mmap.mmap | None = None
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None
    records: list[dict[str, Any]] | None = None

    def close(self) -> None:
        if self.mapped is not None:
            # a piece still referenced (by an error's traceback, say) keeps it open until GC
            with contextlib.suppress(BufferError):
                self.mapped.close()
            self.mapped = None


def _prepare(url: str, ledger_part: Path, metadata: Path | None) -> _ShardPlan:
    """Read the ledger part and, where it can, map the tar and check the recorded spans."""
    ledger = pq.ParquetFile(ledger_part).read(columns=["key", "status"])
    kept = _kept_index(ledger)
    plan = _ShardPlan(ledger["key"].take(kept).to_pylist(), kept.tolist())
    if not len(kept):
        return plan
    found = _span_plan(url, ledger, kept, metadata)
    if found is None:
        return plan
    path, rows = found
    mapped = _map(path)
    if mapped is None:
        _changed(url)
        return plan
    starts, ends = rows["tar_start"].to_numpy(), rows["tar_end"].to_numpy()
    records = _records(mapped, rows) if _spans_hold(mapped, rows["key"], starts, ends) else None
    if records is None:
        with contextlib.suppress(BufferError):
            mapped.close()
        _changed(url)
        return plan
    plan.mapped, plan.starts, plan.ends, plan.records = mapped, starts, ends, records
    return plan


def _first_schema(shards: list[str]) -> pa.Schema | None:
    """The img2dataset sidecar schema the output keeps: the first input shard's that has
    one (a shard img2dataset wrote nothing for has none)."""
    for url in shards[:8]:
        schema = sidecar_schema(url)
        if schema is not None:
            return schema
    return None


def write_kept(shards: list[str], ledger_parts: list[Path], out_dir: Path, max_count: int,
               max_bytes: int, progress: Callable[[int], None] | None = None,
               metadata_parts: list[Path] | None = None
               ) -> tuple[list[WrittenShard], WriteCounts]:
    """Copy the kept samples of ``shards`` (ledger part i describes shard i) to ``out_dir``;
    the shards written, and how many samples went each way.

    ``metadata_parts[i]``, the embed step's metadata of shard i, lets it copy by span.

    The next shard is made ready (ledger read, tar mapped, spans checked, json parsed) on a
    thread while this one is written: the writes leave Python's lock free, so the two
    overlap (a fifth to a quarter of the time saved on two cores; writing on a thread of its
    own as well saved nothing more there).
    """
    counts = WriteCounts()
    jobs = list(zip(shards, ledger_parts, metadata_parts or [None] * len(shards), strict=True))
    with ThreadPoolExecutor(1, thread_name_prefix="write-prepare") as pool, \
            ShardWriter(out_dir, max_count=max_count, max_bytes=max_bytes,
                        schema=_first_schema(shards), make_parents=False) as writer:
        ahead = deque(pool.submit(_prepare, *job) for job in jobs[:1])
        try:
            for i, (url, _, _) in enumerate(jobs):
                plan = ahead.popleft().result()
                if i + 1 < len(jobs):
                    ahead.append(pool.submit(_prepare, *jobs[i + 1]))
                if plan.mapped is None:
                    if plan.keys:
                        copied = _copy_by_parsing(writer, url, plan, progress)
                        counts.by_parsing += copied
                        counts.not_copied += len(plan.keys) - copied
                    continue
                try:
                    with memoryview(plan.mapped) as view:
                        writer.copy_spans(view, plan.starts, plan.ends, plan.keys,
                                          plan.records)
                finally:
                    plan.close()
                counts.by_span += len(plan.keys)
                if progress is not None:
                    progress(len(plan.keys))
        finally:
            for future in ahead:  # an error: what was made ready is let go
                with contextlib.suppress(Exception):
                    future.result().close()
        return writer.close(), counts


def _copy_by_parsing(writer: ShardWriter, url: str, plan: _ShardPlan,
                     progress: Callable[[int], None] | None) -> int:
    """Copy the kept samples by their position in the shard (a key may occur more than
    once), each only if it is still the sample embedded there: same key, readable."""
    wanted = dict(zip(plan.positions, plan.keys, strict=True))
    copied, lost = 0, []
    for position, sample in enumerate(ShardStream(url)):
        key = wanted.pop(position, None)
        if key is None:
            continue
        if sample.key != key or sample.failed:
            lost.append(key)
            continue
        writer.write_sample(sample)
        copied += 1
        if progress is not None:
            progress(1)
    lost += wanted.values()  # the shard now ends before them
    if lost:
        log.warning("shard %s no longer holds %d kept samples as they were embedded (changed "
                    "or damaged since?): they are not copied (%s%s); the report counts them",
                    url, len(lost), ", ".join(lost[:5]), ", ..." if len(lost) > 5 else "")
    return copied


def plan_ranges(kept: list[int], target: int) -> list[tuple[int, int]]:
    """Runs [first, stop) of input shards, each closed once it holds ``target`` kept
    samples: planned from the data alone, so every engine cuts the same runs."""
    ranges: list[tuple[int, int]] = []
    first, held = 0, 0
    for i, count in enumerate(kept):
        held += count
        if held >= target:
            ranges.append((first, i + 1))
            first, held = i + 1, 0
    if first < len(kept):
        ranges.append((first, len(kept)))
    return ranges


@dataclass(frozen=True)
class WriteTask:
    shards: tuple[str, ...]
    ledger_parts: tuple[str, ...]
    metadata_parts: tuple[str, ...]
    out_dir: str
    max_count: int
    max_bytes: int


def write_range(task: WriteTask) -> dict[str, Any]:
    """Write one run of input shards' kept samples as shards 00000... of ``out_dir``."""
    written, counts = write_kept(list(task.shards), [Path(p) for p in task.ledger_parts],
                                 Path(task.out_dir), task.max_count, task.max_bytes,
                                 metadata_parts=[Path(p) for p in task.metadata_parts])
    return {"shards": [[w.name, w.count, w.bytes] for w in written],
            "by_span": counts.by_span, "by_parsing": counts.by_parsing,
            "not_copied": counts.not_copied}


SHARD_FILES = (".tar", ".parquet", "_stats.json")
SIZES = "sizes.json"  # {"00000.tar": samples, ...}: what open_clip and webdataset read
WIDS_INDEX = "index.wids.json"  # wids' shard index: its ShardListDataset opens it


def write_indexes(folder: Path, written: list[list]) -> None:
    """``sizes.json`` and the wids index of the shards ``number_shards`` placed in ``folder``,
    so trainers need no sample-count flag and wids need not read every shard again."""
    write_json(folder / SIZES, {f"{name}.tar": count for name, count, _ in written})
    write_json(folder / WIDS_INDEX, {
        "__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "conceptprune",
        "shardlist": [{"url": f"{name}.tar", "nsamples": count, "filesize": size}
                      for name, count, size in written]})


def number_shards(folder: Path, ranges: list[dict[str, Any]], name_format: str = "{:05d}"
                  ) -> list[list]:
    """Move every range's shards into ``folder`` numbered on from 0 (``name_format``), in
    range order; returns [name, count, bytes] of each."""
    out = []
    for r, got in enumerate(ranges):
        source = folder / f".range-{r:05d}"
        for name, count, size in got["shards"]:
            new = name_format.format(len(out))
            for suffix in SHARD_FILES:
                (source / f"{name}{suffix}").rename(folder / f"{new}{suffix}")
            out.append([new, count, size])
        if source.exists():
            source.rmdir()
    return out
