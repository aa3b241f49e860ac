"""Every uid once: a usable sample whose uid an earlier sample (in input order) has is a
``read`` failure of its own, named in the ledger, so ``subset.npy`` never lists a uid twice.

Units: a scatter over parts (usable rows by the top bits of their uid), a map over buckets of
those hash ranges finding equal uids (ties come back in input order, so the first copy is
the earliest), and the duplicates back to their parts as ``WORK/uids/part-N.parquet``
(row-aligned: ``duplicate``, ``reason``). The ingest tables are never rewritten, so another
input set finds no stale failure.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.ids import u128_to_uids
from pipeline.io.tables import read_columns
from pipeline.stages.context import RunContext, ingest_path, uids_path
from pipeline.stages.shuffle import (
    SCATTER,
    BucketTask,
    part_counts,
    plan_buckets,
    read_results,
    write_scatter,
)
from pipeline.workdir import write_parquet

log = logging.getLogger(__name__)

STEP = "uids"
MAX_BITS = 16
FIRST_DTYPE = np.dtype([("row", "<i8"), ("first_part", "<i4"), ("first_row", "<i8")])


@dataclass(frozen=True)
class ScatterTask:
    work: str
    part: int
    bits: int
    out: str


def scatter_part(task: ScatterTask) -> int:
    """Write the part's usable rows by uid hash range; returns how many."""
    table = read_columns(ingest_path(Path(task.work), task.part),
                         columns=["uid_hi", "uid_lo", "failed_reason"])
    rows = np.flatnonzero(table.column("failed_reason").is_null().to_numpy(
        zero_copy_only=False)).astype(np.int64)
    hi = table.column("uid_hi").to_numpy()[rows]
    lo = table.column("uid_lo").to_numpy()[rows]
    bucket = ((hi >> np.uint64(64 - task.bits)).astype(np.int32) if task.bits
              else np.zeros(len(rows), np.int32))
    write_scatter(Path(task.out), task.part, 1 << task.bits, rows, bucket,
                  np.zeros(len(rows), np.float32), hi, lo)
    return len(rows)


def find_duplicates(task: BucketTask) -> int:
    """Mark the later copies of every uid in hash buckets [first, stop); returns how many."""
    m = task.members()
    same = np.zeros(len(m.row), dtype=bool)
    same[1:] = (m.uid_hi[1:] == m.uid_hi[:-1]) & (m.uid_lo[1:] == m.uid_lo[:-1])
    start = np.maximum.accumulate(np.where(same, 0, np.arange(len(same))))
    dup = np.flatnonzero(same)
    out = np.empty(len(dup), dtype=FIRST_DTYPE)
    out["row"], out["first_part"] = m.row[dup], m.part[start[dup]]
    out["first_row"] = m.row[start[dup]]
    task.write(m.part[dup], out)
    return len(dup)


@dataclass(frozen=True)
class ApplyTask:
    work: str
    part: int
    rows: int
    found: str
    buckets: int


def apply_part(task: ApplyTask) -> int:
    """Write the part's row-aligned duplicate flags and reasons; returns its duplicates."""
    got = read_results(Path(task.found), task.buckets, task.part)
    duplicate = np.zeros(task.rows, dtype=bool)
    reason = np.full(task.rows, None, dtype=object)
    if got is not None and len(got):
        ingest = read_columns(ingest_path(Path(task.work), task.part),
                              columns=["uid_hi", "uid_lo"])
        hi = ingest.column("uid_hi").to_numpy()[got["row"]]
        lo = ingest.column("uid_lo").to_numpy()[got["row"]]
        firsts = {}
        for p in np.unique(got["first_part"]).tolist():
            first = read_columns(ingest_path(Path(task.work), p), columns=["key", "shard"])
            firsts[p] = (first.column("key").to_pylist(), first.column("shard").to_pylist())
        for i, (uid, p, r) in enumerate(zip(u128_to_uids(hi, lo), got["first_part"].tolist(),
                                            got["first_row"].tolist(), strict=True)):
            keys, shards = firsts[p]
            reason[got["row"][i]] = (f"duplicate uid {uid.decode()}: an earlier sample has it "
                                     f"(key {keys[r]} in shard {shards[r]})")
        duplicate[got["row"]] = True
    write_parquet(uids_path(Path(task.work), task.part), pa.table({
        "duplicate": pa.array(duplicate), "reason": pa.array(reason, pa.string())}))
    return int(duplicate.sum())


# usable samples up to which the driver first looks for any shared uid itself, in one sort
# of their high halves (8 bytes a sample, twice while sorted: 64 MB at most; a larger input
# keeps the driver's memory free of anything per sample): where there is none, as in most
# inputs, the step ends there, with no scatter, buckets or files (0.45 -> 0.04 s for the
# bench's 1,000,000 samples in ten parts)
DRIVER_CHECK_ROWS = 1 << 22


def all_distinct(work: Path, parts: list[int]) -> bool:
    """Whether no two usable samples of ``parts`` have the same high half of their uid (and
    so no two the same uid); False where some do, shared uid or not."""
    halves = []
    for p in parts:
        table = read_columns(ingest_path(work, p), columns=["uid_hi", "failed_reason"])
        usable = table.column("failed_reason").is_null().to_numpy(zero_copy_only=False)
        halves.append(table.column("uid_hi").to_numpy()[usable])
    hi = np.sort(np.concatenate(halves)) if halves else np.zeros(0, dtype=np.uint64)
    return not bool((hi[1:] == hi[:-1]).any())


def run_unique_uids(ctx: RunContext, alive: list[int], bucket_rows: int) -> list[int]:
    """Find the later copies of every uid; returns the duplicates per part. A part with none
    may have no file (``uids_path``): readers take that as no duplicate."""
    total = sum(alive)
    parts = [p.index for p in ctx.parts]
    if total <= DRIVER_CHECK_ROWS and all_distinct(ctx.work.root, parts):
        log.info("uids: the %d usable samples have distinct uids (one sort in the driver)",
                 total)
        return [0] * len(parts)
    bits = min(MAX_BITS, max(0, math.ceil(math.log2(max(1, total) / bucket_rows))))
    work = str(ctx.work.root)
    scatter = ctx.step_folder(STEP, SCATTER)
    found = ctx.step_folder(STEP, "found")
    ctx.map_units(STEP, "scatter", scatter_part,
                  [ScatterTask(work, p, bits, str(scatter)) for p in parts], parts,
                  desc="uids: scatter", unit="part", concurrent=True)
    sizes = np.sum([part_counts(scatter, p) for p in parts], axis=0)
    buckets = plan_buckets(sizes, bucket_rows)
    ctx.map_units(STEP, "find", find_duplicates,
                  [BucketTask(str(scatter), str(found), len(parts), b.index, b.first, b.stop)
                   for b in buckets], [b.index for b in buckets],
                  desc="uids: find", unit="bucket", plan=bucket_rows,
                  concurrent=True)  # buckets apart: sorts of one beside another's reads
    dups = ctx.map_units(STEP, "apply", apply_part,
                         [ApplyTask(work, p.index, p.rows, str(found), len(buckets))
                          for p in ctx.parts], parts,
                         desc="uids: apply", unit="part", concurrent=True, plan=bucket_rows)
    if sum(dups):
        log.warning("%d samples share their uid with an earlier sample: each later copy is a "
                    "read failure (see the ledger's reasons); give every sample its own uid",
                    sum(dups))
    return dups
