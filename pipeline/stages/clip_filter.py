"""The clip_filter step: drop samples whose image and caption disagree (SPEC §1, step 3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.algorithms.selection import clip_filter_keep
from pipeline.io.tables import numpy_column
from pipeline.stages.context import RunContext
from schemas import arrow as schemas

log = logging.getLogger(__name__)

NO_SCORE = "no clip score: text embedding missing or invalid"


class ClipFilterError(ValueError):
    """The filter cannot run on this input."""


@dataclass
class ClipFilterResult:
    removed: np.ndarray
    reason: np.ndarray  # object array of str | None

    def table(self) -> pa.Table:
        return pa.table({"removed": pa.array(self.removed),
                         "reason": pa.array(self.reason, pa.string())},
                        schema=schemas.CLIP_FILTER)

    @classmethod
    def from_table(cls, table: pa.Table) -> ClipFilterResult:
        return cls(numpy_column(table, "removed", False, "bool"),
                   np.array(table.column("reason").to_pylist(), dtype=object))


def run_clip_filter(ctx: RunContext, alive: np.ndarray) -> ClipFilterResult:
    cfg = ctx.cfg.clip_filter
    if not any(p.has_text for p in ctx.parts):
        raise ClipFilterError(
            "clip_filter is enabled but the input has no text embeddings (text_emb/ in a "
            "clip-retrieval folder, or {model}_txt in DataComp npz files); add them or set "
            "clip_filter.enabled=false"
        )
    n = ctx.size
    removed = np.zeros(n, dtype=bool)
    reason = np.full(n, None, dtype=object)
    scored = alive & ~np.isnan(ctx.clip_score)
    unscored = alive & ~scored
    removed[unscored] = True
    reason[unscored] = NO_SCORE

    rows = np.flatnonzero(scored)
    keep = clip_filter_keep(ctx.clip_score[rows], ctx.uid_hi[rows], ctx.uid_lo[rows],
                            threshold=cfg.threshold, keep_fraction=cfg.keep_fraction)
    dropped = rows[~keep]
    removed[dropped] = True
    reason[dropped] = (f"clip score below threshold {cfg.threshold:g}" if cfg.threshold is not None
                       else f"clip score not in the top {cfg.keep_fraction:g} fraction")
    log.info("clip_filter: removed %d of %d (%d had no score)", int(removed.sum()),
             int(alive.sum()), int(unscored.sum()))
    return ClipFilterResult(removed, reason)
