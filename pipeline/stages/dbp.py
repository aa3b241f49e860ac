"""The dbp step: cluster survivors into concepts, budget them by complexity, select (SPEC §4).

Units: assign and scatter over parts (member counts and distance sums per concept come back
through the scatter files, folded in part order), the budget on the driver, selection over
concept buckets, then the decisions back to the parts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.algorithms import budget as bud
from pipeline.algorithms.selection import fraction_of, select_within_concepts
from pipeline.config import RunConfig
from pipeline.engines.base import Resources
from pipeline.io.tables import masked, read_columns
from pipeline.progress import step_progress
from pipeline.stages.clusters import apply_decisions, backend_of, fit_and_assign
from pipeline.stages.context import RunContext, StepResult
from pipeline.stages.shuffle import (
    DECISIONS,
    ApplyTask,
    BucketTask,
    part_decisions,
    plan_buckets,
)
from pipeline.stages.step import Step
from pipeline.workdir import write_parquet
from schemas import arrow as schemas

log = logging.getLogger(__name__)

DECISION_DTYPE = np.dtype([("row", "<i8"), ("removed", "?")])


def dbp_target(cfg, reaching: int) -> int:  # noqa: ANN001 - DBPConfig
    if cfg.keep_count is not None:
        if cfg.keep_count > reaching:
            raise bud.BudgetError(
                f"dbp.keep_count={cfg.keep_count} exceeds the {reaching} samples that reach dbp; "
                "lower dbp.keep_count or use dbp.keep_fraction"
            )
        return int(cfg.keep_count)
    return fraction_of(cfg.keep_fraction, reaching)


def reason(keep: str) -> str:
    return f"over its concept's budget (keeps the {keep} members)"


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


@dataclass(frozen=True)
class SelectTask(BucketTask):
    budget: np.ndarray  # budgets of concepts [first, stop)
    keep: str
    seed: int


def select_bucket(task: SelectTask) -> list[int]:
    """Keep each concept's budget of its members; returns the kept count per concept."""
    m = task.members()
    budget = np.zeros(task.stop, dtype=np.int64)
    budget[task.first :] = task.budget
    keep = select_within_concepts(m.cluster, m.distance, m.uid_hi, m.uid_lo, budget, task.keep,
                                  task.seed)
    out = np.empty(len(keep), dtype=DECISION_DTYPE)
    out["row"], out["removed"] = m.row, ~keep
    task.write(m.part, out)
    kept = np.bincount(m.cluster[keep] - task.first, minlength=task.stop - task.first)
    return [int(x) for x in kept]


def apply_part(task: ApplyTask) -> list[int]:
    """Write one part's row-aligned dbp table; returns [alive rows, removed]."""
    part = part_decisions(task)
    cluster, distance = part.cluster, part.distance
    removed = np.zeros(task.rows, dtype=bool)
    if part.decisions is not None:
        removed[part.decisions["row"]] = part.decisions["removed"]
    write_parquet(Path(task.out), pa.table({
        "cluster": masked(cluster, cluster < 0, pa.int32()),
        "distance": masked(distance, np.isnan(distance), pa.float32()),
        "removed": pa.array(removed),
    }, schema=schemas.DBP), dictionary=False)  # numbers: see semdedup's apply_part
    return [part.alive, int(removed.sum())]


# non-empty concepts from which d_inter shows its progress: above this it takes a second
# or more here (k = 10,000 at d = 512: 0.9 s; k = 50,000: 19 s)
INTER_PROGRESS_FROM = 10_000


def inter_distance(ctx: RunContext, centroids: np.ndarray, nonempty: np.ndarray,
                   l: int) -> np.ndarray:  # noqa: E741
    """``budget.inter_distance``, with a progress meter where k makes it long."""
    count = int(nonempty.sum())
    if count < INTER_PROGRESS_FROM:
        return bud.inter_distance(centroids, nonempty, l)
    with step_progress(ctx.cfg, "dbp: d_inter", count, "concept") as meter:
        return bud.inter_distance(centroids, nonempty, l, lambda done: meter.advance(done))


def run_dbp(ctx: RunContext, earlier: tuple[str, ...], alive: list[int]
            ) -> tuple[StepResult, pa.Table]:
    """The step's per-part result and its concept table."""
    cfg = ctx.cfg.dbp
    target = dbp_target(cfg, sum(alive))
    got = fit_and_assign(ctx, "dbp", earlier, alive, cfg.k, "dbp.k", sums=True)
    size = got.sizes
    d_intra = bud.mean_distance(size, got.sums)
    d_inter = inter_distance(ctx, got.centroids, size > 0, cfg.l)
    probability = bud.concept_probability(d_intra * d_inter, cfg.temperature)
    budget = bud.concept_budget(size, probability, target, cfg.k, cfg.balance)

    buckets = plan_buckets(size, ctx.cfg.engine.bucket_rows)
    decisions = ctx.step_folder("dbp", DECISIONS)
    n_parts = len(ctx.parts)
    tasks = [SelectTask(str(got.scatter), str(decisions), n_parts, b.index, b.first, b.stop,
                        budget[b.first : b.stop], cfg.keep, ctx.cfg.seed) for b in buckets]
    kept = np.zeros(cfg.k, dtype=np.int64)
    results = ctx.map_units("dbp", "bucket", select_bucket, tasks, [b.index for b in buckets],
                            desc="dbp: select", unit="bucket", plan=ctx.cfg.engine.bucket_rows)
    for b, counts in zip(buckets, results, strict=True):
        kept[b.first : b.stop] = counts
    applied = apply_decisions(ctx, "dbp", apply_part, got.scatter, len(buckets))
    result = StepResult(applied.alive_in, applied.removed,
                        {"k": cfg.k, "target": target, "reaching": sum(alive),
                         "keep": cfg.keep, "buckets": len(buckets)})
    log.info("dbp: k=%d target N=%d of M=%d, kept %d", cfg.k, target, sum(alive),
             int(kept.sum()))
    return result, concept_table(size, d_intra, d_inter, probability, budget, kept)


class DensityBasedPruning(Step):
    """SPEC §3: a budget per concept from its density, the most typical members dropped."""

    name = "dbp"
    seeded = True

    def resources(self, cfg: RunConfig) -> Resources:
        return backend_of(cfg).resources

    def run(self, ctx: RunContext, earlier: tuple[str, ...], alive: list[int]) -> StepResult:
        result, concepts = run_dbp(ctx, earlier, alive)
        write_parquet(self._concepts(ctx), concepts)
        return result

    def ledger_reason(self, cfg: RunConfig) -> str:
        return reason(cfg.dbp.keep)

    def report(self, cfg: RunConfig, result: StepResult, ctx: RunContext) -> dict[str, Any]:
        return {"dbp": {key: result.extra[key] for key in ("k", "target", "reaching", "keep")},
                "clusters": read_columns(self._concepts(ctx)).to_pylist()}

    @staticmethod
    def _concepts(ctx: RunContext) -> Path:
        """The concept table ``conceptprune plan`` reads (``WORK/dbp/clusters.parquet``)."""
        return ctx.work.root / "dbp" / "clusters.parquet"
