"""The ledger: one row per input sample saying kept, removed or failed, where and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ids import u128_to_uids
from pipeline.io.tables import masked, numpy_column, read_columns
from pipeline.stages.ledger_summary import part_summary
from pipeline.workdir import write_parquet
from schemas import arrow as schemas

# the ledger's columns of few distinct values; the others (key, uid, dup_of, numbers) are
# written plain: 100,000 rows 74 -> 53 ms and 6.1 -> 5.2 MB
DICTIONARY_COLUMNS = ["shard", "status", "stage", "reason"]


class LedgerInvariantError(RuntimeError):
    """kept + removed + failed differs from the samples read for some shard."""


STATUSES = ("kept", "removed", "failed")  # a part's status codes 0, 1, 2
KEPT, REMOVED, FAILED = range(3)


def decide(failed: np.ndarray, removals: list[tuple[str, np.ndarray, pa.Array | str]],
           last_step: str) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """Per-sample status code (``STATUSES``), stage and reason from the failures and each
    step's removals.

    ``removals`` lists (step name, removed mask, its reason: one for all or one per sample)
    in step order; a sample belongs to the first step that removed it. Failed samples get
    their stage and reason from the ingest table when the ledger is written. The strings are
    put together by Arrow from codes and masks: building them as Python objects took half of
    a part's ledger time, holding the GIL.
    """
    n = len(failed)
    status = np.where(failed, np.int8(FAILED), np.int8(KEPT))
    stage = np.zeros(n, dtype=np.int8)  # 0: the last step; s + 1: removals[s]
    reason = pa.nulls(n, pa.string())
    decided = failed.copy()
    for s, (_, removed, why) in enumerate(removals):
        hit = removed & ~decided
        status[hit] = REMOVED
        stage[hit] = s + 1
        reason = pc.if_else(pa.array(hit), pa.scalar(why, pa.string()) if isinstance(why, str)
                            else why, reason)
        decided |= hit
    return status, _strings(stage, (last_step, *(name for name, _, _ in removals))), reason


def _strings(codes: np.ndarray, values: tuple[str, ...]) -> pa.Array:
    """Strings from their codes into ``values``."""
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(values, pa.string())) \
        .cast(pa.string())


def ledger_table(ingest: pa.Table, status: np.ndarray, stage: pa.Array, reason: pa.Array,
                 dedup_cluster: np.ndarray, dedup_distance: np.ndarray, dup_of_hi: np.ndarray,
                 dup_of_lo: np.ndarray, has_dup: np.ndarray, dup_similarity: np.ndarray,
                 cluster: np.ndarray, distance: np.ndarray) -> pa.Table:
    """One part's ledger rows; every array is that part's slice (``status`` as codes)."""
    failed = pa.array(status == FAILED)
    reason = pc.if_else(failed, ingest.column("failed_reason").combine_chunks(), reason)
    stage = pc.if_else(failed, ingest.column("failed_stage").combine_chunks(), stage)
    dup_uid = pa.array(u128_to_uids(dup_of_hi, dup_of_lo), pa.binary(), mask=~has_dup)
    clip = ingest.column("clip_score")
    return pa.table({
        "key": ingest.column("key"),
        "uid": ingest.column("uid"),
        "shard": ingest.column("shard"),
        "status": _strings(status, STATUSES),
        "stage": stage,
        "reason": reason,
        "dedup_cluster": masked(dedup_cluster, dedup_cluster < 0, pa.int32()),
        "dedup_distance": masked(dedup_distance, np.isnan(dedup_distance), pa.float32()),
        "dup_of": dup_uid.cast(pa.string()),
        "dup_similarity": masked(dup_similarity, np.isnan(dup_similarity), pa.float32()),
        "clip_score": clip,
        "cluster": masked(cluster, cluster < 0, pa.int32()),
        "distance": masked(distance, np.isnan(distance), pa.float32()),
    }, schema=schemas.LEDGER)


def _with_duplicates(ingest: pa.Table, uids: pa.Table) -> pa.Table:
    """The ingest rows with the later copies of a uid failed at read, for their reason."""
    duplicate = uids.column("duplicate").to_numpy(zero_copy_only=False)
    if not duplicate.any():
        return ingest
    copy = pa.array(duplicate)
    reason = pc.if_else(copy, uids.column("reason").combine_chunks(),
                        ingest.column("failed_reason").combine_chunks())
    stage = pc.if_else(copy, pa.scalar("read", pa.string()),
                       ingest.column("failed_stage").combine_chunks())
    for name, values in (("failed_reason", reason), ("failed_stage", stage)):
        ingest = ingest.set_column(ingest.schema.get_field_index(name), name, values)
    return ingest


def _pair_counts(a: pa.ChunkedArray, b: pa.ChunkedArray) -> dict[tuple, int]:
    """How often each (a, b) pair of values occurs (None for a null). Counted on dictionary
    codes: Arrow's group_by would import its dataset layer, 0.29 s of a run here."""
    a = a.combine_chunks().dictionary_encode(null_encoding="encode")
    b = b.combine_chunks().dictionary_encode(null_encoding="encode")
    width = max(1, len(b.dictionary))
    pair = a.indices.to_numpy().astype(np.int64) * width + b.indices.to_numpy()
    codes, counts = np.unique(pair, return_counts=True)
    first, second = a.dictionary.to_pylist(), b.dictionary.to_pylist()
    return {(first[code // width], second[code % width]): int(c)
            for code, c in zip(codes.tolist(), counts.tolist(), strict=True)}


def check_invariant(ledger_dir: Path, read_per_shard: Counter) -> dict[str, dict[str, int]]:
    """Per shard, kept + removed + failed in the written ledger must equal the samples read."""
    counts: dict[str, Counter] = {}
    for path in sorted(ledger_dir.glob("*.parquet")):
        t = read_columns(path, columns=["shard", "status"])
        for (shard, st), c in _pair_counts(t.column("shard"), t.column("status")).items():
            counts.setdefault(shard, Counter())[st] += c
    bad = []
    for shard, read in read_per_shard.items():
        c = counts.get(shard, Counter())
        total = c["kept"] + c["removed"] + c["failed"]
        unknown = sorted(set(c) - {"kept", "removed", "failed"}, key=str)
        if total != read or unknown:
            line = (f"{shard}: read {read}, ledger kept {c['kept']} + removed "
                    f"{c['removed']} + failed {c['failed']} = {total}")
            if unknown:
                line += "; rows with unknown status " + ", ".join(
                    f"{st!r} ({c[st]})" for st in unknown)
            bad.append(line)
    extra = set(counts) - set(read_per_shard)
    bad += [f"{s}: {sum(counts[s].values())} rows in the ledger but the shard was never read"
            for s in sorted(extra, key=str)]
    if bad:
        raise LedgerInvariantError(
            f"ledger invariant broken in {ledger_dir} (kept + removed + failed must equal the "
            "samples read, per shard):\n  " + "\n  ".join(bad)
        )
    return {s: {"read": read_per_shard[s], **{k: counts.get(s, Counter())[k] for k in
                                                ("kept", "removed", "failed")}}
            for s in sorted(read_per_shard)}



@dataclass(frozen=True)
class LedgerTask:
    work: str
    part: int
    steps: tuple[str, ...]  # enabled steps, in order
    reasons: tuple[tuple[str, str], ...]  # (step, reason) for steps with one fixed reason
    last_step: str
    out: str
    subset: str  # folder of the parts' sorted kept uids


def write_ledger_part(task: LedgerTask) -> dict:
    """Write one part's ledger and its kept uids; returns the samples read per source shard,
    the kept count and what the report shows of the part (``ledger_summary``)."""
    from pipeline.stages import subset
    from pipeline.stages.context import ingest_path, step_part_path, uids_path

    work = Path(task.work)
    ingest = read_columns(ingest_path(work, task.part),
                          columns=["key", "uid", "shard", "uid_hi", "uid_lo", "failed_reason",
                                   "failed_stage", "clip_score"])
    n = ingest.num_rows
    if uids_path(work, task.part).exists():  # later copies of a uid: failed at read
        ingest = _with_duplicates(ingest, read_columns(uids_path(work, task.part)))
    failed = ~ingest.column("failed_reason").is_null().to_numpy(zero_copy_only=False)
    tables = {s: read_columns(step_part_path(work, s, task.part)) for s in task.steps}
    fixed = dict(task.reasons)
    removals = []
    for s in task.steps:
        removed = tables[s].column("removed").to_numpy(zero_copy_only=False)
        why = fixed[s] if s in fixed else tables[s].column("reason").combine_chunks()
        removals.append((s, removed, why))
    status, stage, reason = decide(failed, removals, task.last_step)
    sem, dbp = tables.get("semdedup"), tables.get("dbp")
    none_i = np.full(n, -1, dtype=np.int32)
    none_f = np.full(n, np.nan, dtype=np.float32)
    if sem is not None:
        has_dup = ~sem.column("dup_of_hi").is_null().to_numpy(zero_copy_only=False)
        dup_hi = numpy_column(sem, "dup_of_hi", 0, "uint64")
        dup_lo = numpy_column(sem, "dup_of_lo", 0, "uint64")
    else:
        has_dup = np.zeros(n, dtype=bool)
        dup_hi = dup_lo = np.zeros(n, dtype=np.uint64)
    table = ledger_table(
        ingest, status, stage, reason,
        numpy_column(sem, "dedup_cluster", -1, "int32") if sem else none_i,
        numpy_column(sem, "dedup_distance", np.nan, "float32") if sem else none_f,
        dup_hi, dup_lo, has_dup,
        numpy_column(sem, "dup_similarity", np.nan, "float32") if sem else none_f,
        numpy_column(dbp, "cluster", -1, "int32") if dbp else none_i,
        numpy_column(dbp, "distance", np.nan, "float32") if dbp else none_f)
    write_parquet(Path(task.out), table, parents=False,  # into the driver's staging
                  dictionary=DICTIONARY_COLUMNS)
    kept = status == KEPT
    subset.write_part(Path(task.subset), task.part,
                      ingest.column("uid_hi").to_numpy()[kept],
                      ingest.column("uid_lo").to_numpy()[kept])
    read = {e["values"]: e["counts"]
            for e in ingest.column("shard").value_counts().to_pylist()}
    return {"read": read, "kept": int(kept.sum()), "summary": part_summary(table)}
