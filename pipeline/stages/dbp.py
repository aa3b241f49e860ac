"""The dbp step: cluster survivors into concepts, budget them by complexity, select (SPEC §4)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.algorithms import budget as bud
from pipeline.algorithms.selection import fraction_of, select_within_concepts
from pipeline.io.tables import masked, numpy_column
from pipeline.stages.clusters import fit_and_assign
from pipeline.stages.context import RunContext
from schemas import arrow as schemas

log = logging.getLogger(__name__)


@dataclass
class DBPResult:
    cluster: np.ndarray  # int32, -1 where the sample did not reach dbp
    distance: np.ndarray  # float32, NaN where it did not
    removed: np.ndarray
    clusters: pa.Table  # one row per concept, schemas.DBP_CLUSTERS
    target: int
    centroids: np.ndarray

    def table(self) -> pa.Table:
        return pa.table({
            "cluster": masked(self.cluster, self.cluster < 0, pa.int32()),
            "distance": masked(self.distance, np.isnan(self.distance), pa.float32()),
            "removed": pa.array(self.removed),
        }, schema=schemas.DBP)

    @classmethod
    def from_tables(cls, table: pa.Table, clusters: pa.Table, centroids: np.ndarray,
                    target: int) -> DBPResult:
        return cls(numpy_column(table, "cluster", -1, "int32"),
                   numpy_column(table, "distance", np.nan, "float32"),
                   numpy_column(table, "removed", False, "bool"), clusters, target, centroids)


def dbp_target(cfg, reaching: int) -> int:  # noqa: ANN001 - DBPConfig
    if cfg.keep_count is not None:
        if cfg.keep_count > reaching:
            raise bud.BudgetError(
                f"dbp.keep_count={cfg.keep_count} exceeds the {reaching} samples that reach dbp; "
                "lower dbp.keep_count or use dbp.keep_fraction"
            )
        return int(cfg.keep_count)
    return fraction_of(cfg.keep_fraction, reaching)


def concept_table(size: np.ndarray, d_intra: np.ndarray, d_inter: np.ndarray,
                  probability: np.ndarray, budget: np.ndarray, kept: np.ndarray) -> pa.Table:
    k = len(size)
    complexity = d_intra * d_inter
    return pa.table({
        "id": pa.array(np.arange(k, dtype=np.int32)),
        "size": pa.array(size, pa.int64()),
        "d_intra": masked(d_intra, np.isnan(d_intra), pa.float64()),
        "d_inter": masked(d_inter, np.isnan(d_inter), pa.float64()),
        "complexity": masked(complexity, np.isnan(complexity), pa.float64()),
        "probability": pa.array(probability, pa.float64()),
        "budget": pa.array(budget, pa.int64()),
        "kept": pa.array(kept, pa.int64()),
    }, schema=schemas.DBP_CLUSTERS)


def run_dbp(ctx: RunContext, alive: np.ndarray) -> DBPResult:
    cfg = ctx.cfg.dbp
    rows = np.flatnonzero(alive)
    target = dbp_target(cfg, len(rows))
    centroids, cl, dist = fit_and_assign(ctx, rows, cfg.k, "dbp.k", "dbp")

    size, d_intra = bud.intra_distance(cl, dist, cfg.k)
    d_inter = bud.inter_distance(centroids, size > 0, cfg.l)
    probability = bud.concept_probability(d_intra * d_inter, cfg.temperature)
    budget = bud.concept_budget(size, probability, target, cfg.k, cfg.balance)

    keep = select_within_concepts(cl, dist, ctx.uid_hi[rows], ctx.uid_lo[rows], budget,
                                  cfg.keep, ctx.cfg.seed)
    kept = np.bincount(cl[keep], minlength=cfg.k)

    n = ctx.size
    cluster = np.full(n, -1, dtype=np.int32)
    distance = np.full(n, np.nan, dtype=np.float32)
    removed = np.zeros(n, dtype=bool)
    cluster[rows], distance[rows] = cl, dist
    removed[rows[~keep]] = True
    log.info("dbp: k=%d target N=%d of M=%d, kept %d", cfg.k, target, len(rows), int(keep.sum()))
    return DBPResult(cluster, distance, removed,
                     concept_table(size, d_intra, d_inter, probability, budget, kept),
                     target, centroids)
