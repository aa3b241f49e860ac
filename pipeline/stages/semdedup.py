"""The semdedup step: cluster, then remove near-duplicates within every cluster (SPEC §3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa

from pipeline.algorithms.ordering import grouped_order
from pipeline.algorithms.semdedup import auto_block_rows, dedup_cluster
from pipeline.io.tables import masked, numpy_column
from pipeline.io.vector_store import VectorStore
from pipeline.stages.clusters import fit_and_assign
from pipeline.stages.context import RunContext
from schemas import arrow as schemas

log = logging.getLogger(__name__)

# Products computed at once: block rows x cluster size floats (256 MB of float32).
MAX_BLOCK_ELEMENTS = 1 << 26


@dataclass
class SemDeDupResult:
    cluster: np.ndarray  # int32, -1 where the sample did not take part
    distance: np.ndarray  # float32, NaN where it did not
    dup_of: np.ndarray  # int64 global row of the earlier member achieving m_j, -1 if none
    similarity: np.ndarray  # float32 m_j, NaN if none
    removed: np.ndarray  # bool
    centroids: np.ndarray
    k: int

    def table(self) -> pa.Table:
        return pa.table({
            "dedup_cluster": masked(self.cluster, self.cluster < 0, pa.int32()),
            "dedup_distance": masked(self.distance, np.isnan(self.distance), pa.float32()),
            "dup_of": masked(self.dup_of, self.dup_of < 0, pa.int64()),
            "dup_similarity": masked(self.similarity, np.isnan(self.similarity), pa.float32()),
            "removed": pa.array(self.removed),
        }, schema=schemas.SEMDEDUP)

    @classmethod
    def from_table(cls, table: pa.Table, centroids: np.ndarray) -> SemDeDupResult:
        return cls(
            cluster=numpy_column(table, "dedup_cluster", -1, "int32"),
            distance=numpy_column(table, "dedup_distance", np.nan, "float32"),
            dup_of=numpy_column(table, "dup_of", -1, "int64"),
            similarity=numpy_column(table, "dup_similarity", np.nan, "float32"),
            removed=numpy_column(table, "removed", False, "bool"),
            centroids=centroids, k=len(centroids),
        )


@dataclass(frozen=True)
class DedupTask:
    members: np.ndarray  # global rows of one cluster, in dedup order
    eps: float
    block_rows: int


def _same(store: VectorStore) -> VectorStore:
    """A worker's store: this one in-process; elsewhere a copy reading the work folder."""
    return store


def dedup_members(store: VectorStore, task: DedupTask
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One cluster's decisions: (members, removed, dup_of as global row or -1, m_j)."""
    members = task.members
    cap = max(1, min(task.block_rows, MAX_BLOCK_ELEMENTS // max(1, len(members))))
    block = auto_block_rows(len(members), cap)
    rem, arg, sim = dedup_cluster(store.gather(members), task.eps, block)
    return members, rem, np.where(arg >= 0, members[np.maximum(arg, 0)], -1), sim


def choose_k(setting: int | str, n: int) -> int:
    if setting == "auto":
        return max(1, int(round(n / 10000)))
    return int(setting)


def run_semdedup(ctx: RunContext, alive: np.ndarray) -> SemDeDupResult:
    cfg = ctx.cfg.semdedup
    rows = np.flatnonzero(alive)
    k = choose_k(cfg.k, len(rows))
    centroids, cl, dist = fit_and_assign(ctx, rows, k, "semdedup.k", "semdedup")

    n = ctx.size
    cluster = np.full(n, -1, dtype=np.int32)
    distance = np.full(n, np.nan, dtype=np.float32)
    cluster[rows], distance[rows] = cl, dist
    dup_of = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    removed = np.zeros(n, dtype=bool)

    # farthest first within each cluster, ties by uid ascending
    order = rows[grouped_order(cl, -dist, ctx.uid_hi[rows], ctx.uid_lo[rows])]
    bounds = np.searchsorted(cluster[order], np.arange(k + 1), side="left")
    groups = [order[bounds[c] : bounds[c + 1]] for c in range(k) if bounds[c + 1] > bounds[c]]

    tasks = (DedupTask(members, cfg.eps, cfg.block_rows) for members in groups)
    for members, rem, dups, sim in ctx.engine.map(
            dedup_members, tasks, setup=partial(_same, ctx.store), desc="semdedup: clusters",
            total=len(groups), unit="cluster"):
        removed[members] = rem
        dup_of[members] = dups
        similarity[members] = sim
    log.info("semdedup: k=%d eps=%g removed %d of %d", k, cfg.eps, int(removed.sum()), len(rows))
    return SemDeDupResult(cluster, distance, dup_of, similarity, removed, centroids, k)
