"""The clip_filter step: drop samples whose image and caption disagree (SPEC §1, step 3).

With a threshold every part decides alone. With ``keep_fraction`` the cut is the exact
global rank ⌊qM + ½⌋ of the key (score descending, uid, row), found by histogram rounds over
the parts (``key_select``), so no list of scores ever reaches the driver; then every part
keeps its keys up to the cut.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.algorithms import key_select as ks
from pipeline.algorithms.selection import fraction_of
from pipeline.errors import ConceptpruneError
from pipeline.io.tables import read_columns
from pipeline.stages.context import RunContext, StepResult, alive_rows, ingest_path, step_part_path
from pipeline.stages.step import Step
from pipeline.workdir import write_parquet
from schemas import arrow as schemas

log = logging.getLogger(__name__)

NO_SCORE = "no clip score: text embedding missing or invalid"
KEY_BITS = (32, 64, 64, 64)  # score (largest first), uid high, uid low, global row


class ClipFilterError(ConceptpruneError, ValueError):
    """The filter cannot run on this input."""


@dataclass(frozen=True)
class PartKeys:
    work: str
    part: int
    offset: int
    earlier: tuple[str, ...]


def _scored(task: PartKeys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alive rows, their scores, mask of those with a score)."""
    rows = alive_rows(task.work, task.part, task.earlier)
    t = read_columns(ingest_path(Path(task.work), task.part), columns=["clip_score"])
    col = t.column("clip_score")
    score = col.fill_null(np.nan).to_numpy().astype(np.float32)[rows]
    return rows, score, ~np.isnan(score)


def part_keys(task: PartKeys) -> np.ndarray:
    """The sort keys (n x 4 uint64) of a part's alive, scored rows."""
    rows, score, ok = _scored(task)
    return _keys(task, rows[ok], score[ok])


def _keys(task: PartKeys, rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    ids = read_columns(ingest_path(Path(task.work), task.part), columns=["uid_hi", "uid_lo"])
    keys = np.empty((len(rows), 4), dtype=np.uint64)
    keys[:, 0] = ks.descending_float_key(score)
    keys[:, 1] = ids.column("uid_hi").to_numpy()[rows]
    keys[:, 2] = ids.column("uid_lo").to_numpy()[rows]
    keys[:, 3] = (task.offset + rows).astype(np.uint64)
    return keys


@dataclass(frozen=True)
class RoundTask:
    keys: PartKeys
    prefix: ks.Prefix
    gather: bool  # the matching keys themselves, else their histogram


def select_round(task: RoundTask) -> np.ndarray:
    keys = part_keys(task.keys)
    if task.gather:
        return keys[ks.matching(keys, task.prefix, KEY_BITS)]
    return ks.histogram(keys, task.prefix, KEY_BITS)


@dataclass(frozen=True)
class ApplyTask:
    keys: PartKeys
    rows: int
    threshold: float | None
    cut: tuple[int, ...] | None  # keep keys <= cut; None with a threshold or when none is kept
    reason: str
    out: str


def apply_part(task: ApplyTask) -> list[int]:
    """Write one part's row-aligned clip_filter table; returns [alive rows, removed]."""
    rows, score, ok = _scored(task.keys)
    removed = np.zeros(task.rows, dtype=bool)
    reason = np.full(task.rows, None, dtype=object)
    removed[rows[~ok]] = True
    reason[rows[~ok]] = NO_SCORE
    if task.threshold is not None:
        keep = score[ok] >= task.threshold
    elif task.cut is None:
        keep = np.zeros(int(ok.sum()), dtype=bool)
    else:
        keep = ks.at_most(_keys(task.keys, rows[ok], score[ok]), task.cut)
    dropped = rows[ok][~keep]
    removed[dropped] = True
    reason[dropped] = task.reason
    write_parquet(Path(task.out), pa.table({"removed": pa.array(removed),
                                            "reason": pa.array(reason, pa.string())},
                                           schema=schemas.CLIP_FILTER))
    return [int(len(rows)), int(removed.sum())]


def _cut(ctx: RunContext, keys: list[PartKeys], fraction: float) -> tuple[int, ...] | None:
    """The largest key kept: the ⌊qM + ½⌋-th smallest of the M scored keys."""

    def rounds(prefix: ks.Prefix, gather: bool) -> Iterator[np.ndarray]:
        return ctx.engine.map(select_round, [RoundTask(k, prefix, gather) for k in keys],
                              desc="clip_filter: select", total=len(keys), unit="part",
                              concurrent=True)

    first = np.zeros(1 << ks.DIGIT_BITS, dtype=np.int64)
    for h in rounds(ks.Prefix(), gather=False):
        first += h
    total = int(first.sum())
    rank = fraction_of(fraction, total)
    if rank == 0:
        return None
    seen = {ks.Prefix(): first}

    def histograms(prefix: ks.Prefix) -> Iterator[np.ndarray]:
        if prefix in seen:
            yield seen.pop(prefix)
        else:
            yield from rounds(prefix, gather=False)

    return ks.kth_key(rank, total, KEY_BITS, histograms, lambda p: rounds(p, gather=True))


def run_clip_filter(ctx: RunContext, earlier: tuple[str, ...], alive: list[int]
                    ) -> StepResult:
    cfg = ctx.cfg.clip_filter
    if not any(p.has_text for p in ctx.parts):
        raise ClipFilterError(
            "clip_filter is enabled but the input has no text embeddings (text_emb/ in a "
            "clip-retrieval folder, or {model}_txt in DataComp npz files); add them or set "
            "clip_filter.enabled=false"
        )
    keys = [PartKeys(ctx.root, p.index, int(ctx.offsets[p.index]), earlier) for p in ctx.parts]
    cut = None
    if cfg.threshold is None:
        cut = _cut(ctx, keys, cfg.keep_fraction)
    why = (f"clip score below threshold {cfg.threshold:g}" if cfg.threshold is not None
           else f"clip score not in the top {cfg.keep_fraction:g} fraction")
    if ctx.cfg.clip_scores_random:
        why += " (scores of a CLIP model with RANDOM weights: they mean nothing)"
    tasks = [ApplyTask(k, p.rows, cfg.threshold, cut, why,
                       str(step_part_path(ctx.work.root, "clip_filter", p.index)))
             for k, p in zip(keys, ctx.parts, strict=True)]
    applied = ctx.map_units("clip_filter", "apply", apply_part, tasks,
                            [p.index for p in ctx.parts], desc="clip_filter", unit="part",
                            concurrent=True)
    result = StepResult([a for a, _ in applied], [r for _, r in applied], {})
    log.info("clip_filter: removed %d of %d", sum(result.removed), sum(alive))
    return result


class ClipFilter(Step):
    """SPEC §4: samples whose image and caption disagree (CLIP score below a threshold, or
    outside the top fraction); the reason of each removal is in its row."""

    name = "clip_filter"

    def run(self, ctx: RunContext, earlier: tuple[str, ...], alive: list[int]) -> StepResult:
        return run_clip_filter(ctx, earlier, alive)
