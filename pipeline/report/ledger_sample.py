"""Which ledger rows the report's pictures show: a seeded sample of each group of samples (a
concept's kept members, the members dbp pruned from it, semdedup's removals, clip_filter's
removals), drawn across every ledger part and so across all the input shards.

Every row of part ``i`` gets a priority from a generator seeded by (seed, i); a group's sample
is its ``k`` rows of lowest priority (ties by part, then row): a uniform sample without
replacement, the same for the same ledger and seed on any engine. The ledger is read once,
its status, stage and cluster columns only (and clip_score where clip_filter ran); a part's
other columns are read only where it holds a row that enters a sample at that point.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

COLUMNS = ["key", "uid", "shard", "status", "stage", "reason", "cluster", "distance",
           "clip_score", "dup_of", "dup_similarity"]
_PART = re.compile(r"part-(\d+)\.parquet")
Group = Hashable  # ("kept", concept), ("pruned", concept), "pairs" or "clip"


def ledger_parts(ledger: Path) -> list[tuple[int, Path]]:
    """(index, path) of each ledger part, in order; the index names its input shard's
    embed metadata (``metadata_{index}.parquet``)."""
    paths = sorted(ledger.glob("*.parquet"))
    return [(int(m.group(1)) if (m := _PART.fullmatch(p.name)) else i, p)
            for i, p in enumerate(paths)]


def _finite(value: Any) -> Any:  # noqa: ANN401 - a ledger value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _masks(table: pa.Table, groups: dict[Group, int]) -> dict[Group, np.ndarray]:
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    stage = np.asarray(table.column("stage").to_pylist(), dtype=object)
    cluster = pc.fill_null(table.column("cluster"), -1).to_numpy()
    removed = status == "removed"
    out: dict[Group, np.ndarray] = {}
    for group in groups:
        if group == "pairs":
            out[group] = removed & (stage == "semdedup")
        elif group == "clip":
            out[group] = removed & (stage == "clip_filter")
        else:
            side, concept = group  # type: ignore[misc]
            side_mask = status == "kept" if side == "kept" else removed & (stage == "dbp")
            out[group] = side_mask & (cluster == concept)
    return out


def _lowest_passed(table: pa.Table) -> float | None:
    """The lowest CLIP score among this part's samples clip_filter let through."""
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    stage = np.asarray(table.column("stage").to_pylist(), dtype=object)
    score = table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float64)
    passed = (status != "failed") & ~((status == "removed")
                                      & ((stage == "semdedup") | (stage == "clip_filter")))
    values = score[passed & np.isfinite(score)]
    return float(values.min()) if len(values) else None


def seeded_sample(ledger: Path, groups: dict[Group, int], seed: int, clip_cut: bool = False
                  ) -> tuple[dict[Group, list[dict[str, Any]]], float | None]:
    """Each group's sample of at most ``groups[group]`` ledger rows (lowest priority first),
    and, with ``clip_cut``, the lowest CLIP score clip_filter let through. A row carries its
    ledger columns and ``part`` and ``row``, its place in the ledger."""
    best: dict[Group, list[tuple[float, int, int, dict[str, Any]]]] = {g: [] for g in groups}
    lowest: float | None = None
    columns = ["status", "stage", "cluster"] + (["clip_score"] if clip_cut else [])
    for part, path in ledger_parts(ledger):
        table = pq.read_table(path, columns=columns)
        if clip_cut and (low := _lowest_passed(table)) is not None:
            lowest = low if lowest is None else min(lowest, low)
        priority = np.random.default_rng([seed, part]).random(table.num_rows)
        chosen: dict[Group, np.ndarray] = {}
        for group, mask in _masks(table, groups).items():
            k, have = groups[group], best[group]
            rows = np.flatnonzero(mask)
            if len(have) == k:  # only rows that beat the sample's last one
                rows = rows[priority[rows] < have[-1][0]]
            if len(rows) > k:
                rows = rows[np.argsort(priority[rows], kind="stable")[:k]]
            if len(rows):
                chosen[group] = rows
        if not chosen:
            continue
        taken = np.unique(np.concatenate(list(chosen.values())))
        full = pq.read_table(path, columns=COLUMNS).take(pa.array(taken)).to_pylist()
        by_row = dict(zip(taken.tolist(), full, strict=True))
        for group, rows in chosen.items():
            have = best[group]
            have.extend((float(priority[r]), part, int(r),
                         {**{c: _finite(v) for c, v in by_row[int(r)].items()},
                          "part": part, "row": int(r)}) for r in rows)
            have.sort(key=lambda entry: entry[:3])
            del have[groups[group]:]
    return {g: [entry[3] for entry in have] for g, have in best.items()}, lowest


def rows_of(ledger: Path, uids: set[str]) -> dict[str, dict[str, Any]]:
    """The ledger rows of these uids (the samples duplicates were removed in favour of),
    reading each part's uid column and only the matching rows' other columns."""
    found: dict[str, dict[str, Any]] = {}
    wanted = pa.array(sorted(uids), pa.string())
    for part, path in ledger_parts(ledger):
        if len(found) == len(uids):
            break
        hits = np.flatnonzero(pc.is_in(pq.read_table(path, columns=["uid"]).column("uid"),
                                       wanted).to_numpy(zero_copy_only=False))
        if not len(hits):
            continue
        rows = pq.read_table(path, columns=COLUMNS).take(pa.array(hits)).to_pylist()
        for row, values in zip(hits.tolist(), rows, strict=True):
            found.setdefault(values["uid"], {**{c: _finite(v) for c, v in values.items()},
                                             "part": part, "row": row})
    return found
