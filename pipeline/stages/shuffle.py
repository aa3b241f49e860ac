"""The file shuffle by cluster id: a scatter map over parts, a gather map over cluster buckets,
and the per-row decisions of every bucket sent back to the parts.

Nothing moves through the engine but paths and ranges. Its file contracts are all here:

- layout: a step's shuffle lives in ``<step folder>/scatter`` (``scatter-PPPPP.npy`` and
  ``.offsets.npy``, ``sums-PPPPP.npy`` where the step sums distances) and
  ``<step folder>/decisions`` (``bucket-BBBBB.npy`` and ``.parts.npy``): ``SCATTER``,
  ``DECISIONS``, ``scatter_paths``, ``sums_path``, ``result_paths``;
- records: ``SCATTER_DTYPE``; a bucket's decisions are any structured array with a ``row``
  field;
- orders: a part's scatter file holds its alive rows in ``member_order`` (cluster, -distance,
  uid; stable, so row last) beside the offsets of every cluster, so a bucket (a contiguous
  range of cluster ids) is one slice of each part's file, and the merged bucket is in the
  same order (``gather_bucket``). A bucket's decisions are in ``result_order`` (part, row)
  beside the offsets of every part, so a part finds its rows in one slice of each bucket's
  file.

Files are ``.npy`` read memory-mapped: a slice costs only its own bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.recfunctions import repack_fields

from pipeline.algorithms.ordering import member_order
from pipeline.io import npy
from pipeline.workdir import write_npy

SCATTER_DTYPE = np.dtype([("cluster", "<i4"), ("distance", "<f4"), ("uid_hi", "<u8"),
                          ("uid_lo", "<u8"), ("row", "<i8")])


SCATTER, DECISIONS = "scatter", "decisions"  # the shuffle's folders in a step's work folder


def scatter_paths(folder: Path, part: int) -> tuple[Path, Path]:
    return folder / f"scatter-{part:05d}.npy", folder / f"scatter-{part:05d}.offsets.npy"


def sums_path(folder: Path, part: int) -> Path:
    """One part's per-cluster sums of member distances, beside its scatter file."""
    return folder / f"sums-{part:05d}.npy"


def write_scatter(folder: Path, part: int, k: int, rows: np.ndarray, cluster: np.ndarray,
                  distance: np.ndarray, uid_hi: np.ndarray, uid_lo: np.ndarray) -> np.ndarray:
    """Write one part's alive rows in bucket order; returns its member count per cluster."""
    order = member_order(cluster, distance, uid_hi, uid_lo)  # stable: row breaks uid ties
    out = np.empty(len(rows), dtype=SCATTER_DTYPE)
    out["cluster"], out["distance"] = cluster[order], distance[order]
    out["uid_hi"], out["uid_lo"], out["row"] = uid_hi[order], uid_lo[order], rows[order]
    counts = np.bincount(cluster, minlength=k).astype(np.int64)
    data, offsets = scatter_paths(folder, part)
    write_npy(data, out)
    write_npy(offsets, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    return counts


def part_counts(folder: Path, part: int) -> np.ndarray:
    """Members per cluster of one part, read back from its scatter offsets."""
    return np.diff(npy.load(scatter_paths(folder, part)[1]))


def read_scatter(folder: Path, part: int) -> np.ndarray:
    return npy.load(scatter_paths(folder, part)[0], mmap=True)


@dataclass(frozen=True)
class Bucket:
    """Clusters [first, stop) gathered in one task, holding ``rows`` members in all."""

    index: int
    first: int
    stop: int
    rows: int


def plan_buckets(sizes: np.ndarray, max_rows: int) -> list[Bucket]:
    """Contiguous cluster ranges of at most ``max_rows`` members (a larger cluster is a bucket
    of its own), numbered in cluster order and listed largest first, so the longest task
    starts first. Empty clusters join their neighbours; a plan with no member is empty."""
    buckets: list[Bucket] = []
    first, rows = 0, 0
    for c, size in enumerate(sizes.tolist()):
        if rows and rows + size > max_rows:
            buckets.append(Bucket(len(buckets), first, c, rows))
            first, rows = c, 0
        rows += size
    if rows:
        buckets.append(Bucket(len(buckets), first, len(sizes), rows))
    return sorted(buckets, key=lambda b: (-b.rows, b.index))


@dataclass
class Members:
    """A bucket's members from every part, in global (cluster, -distance, uid, row) order."""

    cluster: np.ndarray
    distance: np.ndarray
    uid_hi: np.ndarray
    uid_lo: np.ndarray
    part: np.ndarray
    row: np.ndarray

    def cluster_bounds(self) -> list[tuple[int, int, int]]:
        """(cluster, start, stop) of every cluster present, in order."""
        c = self.cluster
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if len(c) else np.zeros(0, int)
        stops = np.r_[starts[1:], len(c)]
        return [(int(c[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


@dataclass(frozen=True)
class BucketTask:
    """One bucket's unit: clusters [first, stop) of the scatter files of ``parts`` parts,
    its decisions written to ``out``. A step's bucket task adds its own settings."""

    scatter: str
    out: str
    parts: int
    bucket: int
    first: int
    stop: int

    def members(self) -> Members:
        return gather_bucket(Path(self.scatter), self.parts, self.first, self.stop)

    def write(self, part: np.ndarray, values: np.ndarray) -> None:
        """The decisions of the members of ``part`` (aligned with ``values``)."""
        write_results(Path(self.out), self.bucket, self.parts, part, values)


def gather_bucket(folder: Path, parts: int, first: int, stop: int) -> Members:
    """Read clusters [first, stop) from every part's scatter file and merge them."""
    pieces, part_ids = [], []
    for p in range(parts):
        offsets = npy.load(scatter_paths(folder, p)[1], mmap=True)
        a, b = int(offsets[first]), int(offsets[stop])
        if b > a:
            pieces.append(np.array(read_scatter(folder, p)[a:b]))
            part_ids.append(np.full(b - a, p, dtype=np.int32))
    if not pieces:
        empty = np.empty(0, dtype=SCATTER_DTYPE)
        return Members(empty["cluster"], empty["distance"], empty["uid_hi"], empty["uid_lo"],
                       np.empty(0, np.int32), empty["row"])
    rec = np.concatenate(pieces)
    part = np.concatenate(part_ids)
    # concatenated in part order, each part sorted with row last: a stable sort on
    # (cluster, -distance, uid) leaves equal keys in (part, row) order, as the global order
    order = member_order(rec["cluster"], rec["distance"], rec["uid_hi"], rec["uid_lo"])
    rec, part = rec[order], part[order]
    return Members(rec["cluster"], rec["distance"], rec["uid_hi"], rec["uid_lo"], part,
                   rec["row"])


def result_paths(folder: Path, bucket: int) -> tuple[Path, Path]:
    return folder / f"bucket-{bucket:05d}.npy", folder / f"bucket-{bucket:05d}.parts.npy"


def result_order(part: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Positions sorted by (part, row): the order of a bucket's decisions file."""
    # one int64 key, part above row (rows of a part stay far below 2**40): one stable sort
    return np.argsort((part.astype(np.int64) << 40) | row, kind="stable")


def write_results(folder: Path, bucket: int, parts: int, part: np.ndarray,
                  values: np.ndarray) -> None:
    """Write a bucket's per-member decisions (a structured array with a ``row`` field) sorted
    by (part, row), beside the offsets of every part."""
    order = result_order(part, values["row"])
    data, offsets = result_paths(folder, bucket)
    write_npy(data, values[order])
    counts = np.bincount(part, minlength=parts).astype(np.int64)
    write_npy(offsets, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def read_results(folder: Path, buckets: int, part: int) -> np.ndarray | None:
    """Every bucket's decisions for one part's rows, concatenated (None when no bucket has
    any)."""
    pieces = []
    for b in range(buckets):
        data, offsets = result_paths(folder, b)
        off = npy.load(offsets, mmap=True)
        lo, hi = int(off[part]), int(off[part + 1])
        if hi > lo:
            pieces.append(np.array(npy.load(data, mmap=True)[lo:hi]))
    if len({p.dtype for p in pieces}) > 1:  # buckets decided by two versions (a resumed run)
        shared = [n for n in pieces[0].dtype.names if all(n in p.dtype.names for p in pieces)]
        pieces = [repack_fields(p[shared]) for p in pieces]
    return np.concatenate(pieces) if pieces else None


@dataclass(frozen=True)
class ApplyTask:
    """One part's share of a clustering step: its scatter file and every bucket's
    decisions, to be written as the step's row-aligned table at ``out``."""

    scatter: str
    decisions: str
    buckets: int
    part: int
    rows: int
    out: str


@dataclass
class PartDecisions:
    """A part's rows as a clustering step left them, row-aligned."""

    cluster: np.ndarray  # int32, -1 where the row was not alive
    distance: np.ndarray  # float32, NaN where it was not
    alive: int
    decisions: np.ndarray | None  # the buckets' decisions for its alive rows (by ``row``)


def part_decisions(task: ApplyTask) -> PartDecisions:
    cluster = np.full(task.rows, -1, dtype=np.int32)
    distance = np.full(task.rows, np.nan, dtype=np.float32)
    rec = read_scatter(Path(task.scatter), task.part)
    cluster[rec["row"]], distance[rec["row"]] = rec["cluster"], rec["distance"]
    return PartDecisions(cluster, distance, len(rec),
                         read_results(Path(task.decisions), task.buckets, task.part))
