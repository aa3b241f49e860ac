"""The semdedup step: cluster, then remove near-duplicates within every cluster (SPEC §3).

Units: assign and scatter over parts, the exact blocked kernel over cluster buckets (each
bucket reads its clusters' members from every part), then the decisions back to the parts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.algorithms.proposers import Proposer
from pipeline.algorithms.semdedup import auto_block_rows, decide_cluster, earlier_pairs
from pipeline.config import RunConfig
from pipeline.engines.base import Resources
from pipeline.io.tables import masked
from pipeline.io.vector_store import VectorStore
from pipeline.logs import worker_lines
from pipeline.progress import Progress, Samples
from pipeline.stages.clusters import (
    apply_decisions,
    backend,
    backend_of,
    bucket_state,
    fit_and_assign,
)
from pipeline.stages.context import RunContext, StepResult, step_part_path
from pipeline.stages.semdedup_eps import eps_grid, removal_curve
from pipeline.stages.shuffle import (
    DECISIONS,
    ApplyTask,
    Bucket,
    BucketTask,
    part_decisions,
    plan_buckets,
)
from pipeline.stages.step import Step
from pipeline.workdir import write_parquet
from schemas import arrow as schemas

log = logging.getLogger(__name__)

# Products computed at once: block rows x cluster size floats (256 MB of float32).
MAX_BLOCK_ELEMENTS = 1 << 26
GROUP_BYTES = 128 << 20  # float32 vectors of the clusters read together

# a cluster of this many pairs (each member with every earlier one) or more logs its own
# progress lines where it is decided: about 20 s of products on a core at d = 512, and the
# step's meter, which counts buckets, says nothing while one cluster of a million distinct
# members (5 x 10^11 pairs) takes many minutes
METERED_PAIRS = 2_000_000_000

DECISION_DTYPE = np.dtype([("row", "<i8"), ("removed", "?"), ("has_dup", "?"),
                           ("dup_hi", "<u8"), ("dup_lo", "<u8"), ("similarity", "<f4"),
                           ("exact", "<f8")])


def choose_k(setting: int | str, n: int) -> int:
    if setting == "auto":
        return max(1, int(round(n / 10000)))
    return int(setting)


def reason(eps: float) -> str:
    return f"near-duplicate: similarity to dup_of > 1 - eps = {1 - eps:g}"


@dataclass(frozen=True)
class DedupTask(BucketTask):
    offsets: np.ndarray  # global row of each part's first sample
    eps: float
    block_rows: int
    progress: bool = False  # the run's settings of progress lines (``ProgressSettings``)
    progress_interval_s: float = 30.0


class ClusterLines:
    """A big cluster's progress (a ``BlockMeter``): its pairs and rows decided, a line
    every ``progress_interval_s`` and one at its end, logged where it is decided (a Ray
    worker's reach the driver's console, ``worker_lines``)."""

    def __init__(self, task: DedupTask, cluster: int, members: int) -> None:
        self.task = task
        self.desc = f"semdedup: cluster {cluster} ({members:,} members)"
        self._stack = ExitStack()
        self._meter: Progress | None = None

    def __enter__(self) -> ClusterLines:
        self._stack.enter_context(worker_lines())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)  # type: ignore[arg-type]

    def begin(self, rows: int, pairs: int) -> None:
        self._meter = self._stack.enter_context(Progress(
            self.desc, rows, "row", samples=Samples(pairs, "pairs", "pairs"),
            interval_s=self.task.progress_interval_s))

    def advance(self, rows: int, pairs: int) -> None:
        if self._meter is not None:
            self._meter.advance(rows, pairs)


def bucket_pairs(sizes: np.ndarray, buckets: list[Bucket]) -> list[int]:
    """Each bucket's pairs (every member with every earlier one in its cluster): its share
    of the step's products, which grow with the square of a cluster's size."""
    pairs = earlier_pairs(np.asarray(sizes, dtype=np.int64))
    return [int(pairs[b.first : b.stop].sum()) for b in buckets]


def _clusters_read_in_groups(store: VectorStore, rows: np.ndarray,
                             bounds: list[tuple[int, int, int]]
                             ) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(cluster, start, stop, vectors) of every cluster, read with its neighbours in one request of
    up to GROUP_BYTES (a larger cluster alone): a few reads of every part per bucket instead
    of one per cluster, with memory bounded by the group, not by the bucket. The vectors lie
    in the store's scratch buffer: each group's are gone when the next is read."""
    row_bytes = 4 * store.dim
    i = 0
    while i < len(bounds):
        start, j = bounds[i][1], i + 1
        while j < len(bounds) and (bounds[j][2] - start) * row_bytes <= GROUP_BYTES:
            j += 1
        want = rows[start : bounds[j - 1][2]]
        vectors = store.gather(want, out=store.scratch(len(want)))
        for c, a, b in bounds[i:j]:
            yield c, a, b, vectors[a - start : b - start]
        i = j


def dedup_bucket(state: tuple[VectorStore, Proposer], task: DedupTask) -> int:
    """Decide every member of clusters [first, stop); returns how many were removed."""
    store, proposer = state
    m = task.members()
    rows = task.offsets[m.part] + m.row
    out = np.zeros(len(rows), dtype=DECISION_DTYPE)
    out["row"] = m.row
    # the bucket's rows lie all over every part: each part stays mapped for all the groups
    # read (at most a page a row), not mapped and faulted in anew for each
    with store.held():
        for c, a, b, vectors in _clusters_read_in_groups(store, rows, m.cluster_bounds()):
            cap = max(1, min(task.block_rows, MAX_BLOCK_ELEMENTS // max(1, b - a)))
            metered = task.progress and earlier_pairs(b - a) >= METERED_PAIRS
            with ClusterLines(task, c, b - a) if metered else nullcontext() as lines:
                rem, arg, sim, best = decide_cluster(
                    vectors, task.eps, auto_block_rows(b - a, cap), proposer, lines)
            has = arg >= 0
            at = a + np.maximum(arg, 0)
            piece = out[a:b]
            piece["removed"], piece["has_dup"], piece["similarity"] = rem, has, sim
            piece["exact"] = best
            piece["dup_hi"] = np.where(has, m.uid_hi[at], 0)
            piece["dup_lo"] = np.where(has, m.uid_lo[at], 0)
    task.write(m.part, out)
    return int(out["removed"].sum())


def apply_part(task: ApplyTask) -> list[int]:
    """Write one part's row-aligned semdedup table; returns [alive rows, removed]."""
    n = task.rows
    part = part_decisions(task)
    cluster, distance, got = part.cluster, part.distance, part.decisions
    removed = np.zeros(n, dtype=bool)
    has = np.zeros(n, dtype=bool)
    dup_hi = np.zeros(n, dtype=np.uint64)
    dup_lo = np.zeros(n, dtype=np.uint64)
    sim = np.full(n, np.nan, dtype=np.float32)
    m = np.full(n, np.nan, dtype=np.float64)
    if got is not None:
        r = got["row"]
        removed[r], has[r], sim[r] = got["removed"], got["has_dup"], got["similarity"]
        dup_hi[r], dup_lo[r] = got["dup_hi"], got["dup_lo"]
        if "exact" in got.dtype.names:  # not in decisions an older version left to resume
            m[r] = got["exact"]
    write_parquet(Path(task.out), pa.table({
        "dedup_cluster": masked(cluster, cluster < 0, pa.int32()),
        "dedup_distance": masked(distance, np.isnan(distance), pa.float32()),
        "dup_of_hi": masked(dup_hi, ~has, pa.uint64()),
        "dup_of_lo": masked(dup_lo, ~has, pa.uint64()),
        "dup_similarity": masked(sim, np.isnan(sim), pa.float32()),
        "removed": pa.array(removed),
        "dup_similarity_exact": masked(m, np.isnan(m), pa.float64()),
    }, schema=schemas.SEMDEDUP), dictionary=False)  # numbers only: a dictionary attempt
    # on every column cost more than the rest of the write (100,000 rows: 30 -> 13 ms,
    # 4.0 -> 3.2 MB)
    return [part.alive, int(removed.sum())]


def run_semdedup(ctx: RunContext, earlier: tuple[str, ...], alive: list[int]) -> StepResult:
    cfg = ctx.cfg.semdedup
    k = choose_k(cfg.k, sum(alive))
    got = fit_and_assign(ctx, "semdedup", earlier, alive, k, "semdedup.k")
    buckets = plan_buckets(got.sizes, ctx.cfg.engine.bucket_rows)
    decisions = ctx.step_folder("semdedup", DECISIONS)
    n_parts = len(ctx.parts)
    tasks = [DedupTask(str(got.scatter), str(decisions), n_parts, b.index, b.first, b.stop,
                       ctx.offsets, cfg.eps, cfg.block_rows, ctx.cfg.progress,
                       ctx.cfg.progress_interval_s) for b in buckets]
    chosen = backend(ctx)
    # buckets at once, each on a core of its own: a bucket's products run as fast on one
    # BLAS thread per bucket (107 against 204 GFLOP/s on two), and its other work (reads,
    # exact values, masks) is single-threaded, so two buckets at once overlap it
    ctx.map_units("semdedup", "bucket", dedup_bucket, tasks, [b.index for b in buckets],
                  desc="semdedup: clusters", unit="bucket", resources=chosen.resources,
                  setup=partial(bucket_state, ctx.store, chosen), plan=ctx.cfg.engine.bucket_rows,
                  concurrent=not chosen.gpu, work=(bucket_pairs(got.sizes, buckets), "pairs"))
    applied = apply_decisions(ctx, "semdedup", apply_part, got.scatter, len(buckets))
    result = StepResult(applied.alive_in, applied.removed,
                        {"k": k, "buckets": len(buckets),
                         "largest_cluster": int(got.sizes.max()) if k else 0})
    log.info("semdedup: k=%d eps=%g removed %d of %d", k, cfg.eps, sum(result.removed),
             sum(alive))
    return result


class SemDedup(Step):
    """SPEC §2: near-duplicates within k-means clusters, keeping each group's first."""

    name = "semdedup"
    seeded = True

    def resources(self, cfg: RunConfig) -> Resources:
        return backend_of(cfg).resources

    def run(self, ctx: RunContext, earlier: tuple[str, ...], alive: list[int]) -> StepResult:
        return run_semdedup(ctx, earlier, alive)

    def ledger_reason(self, cfg: RunConfig) -> str:
        return reason(cfg.semdedup.eps)

    def report(self, cfg: RunConfig, result: StepResult, ctx: RunContext) -> dict[str, Any]:
        eps = eps_grid(cfg.semdedup.eps)
        removed, exact = removal_curve(
            (step_part_path(ctx.work.root, self.name, p.index) for p in ctx.parts), eps)
        curve = {"eps": eps, "removed": removed, "reaching": sum(result.alive_in),
                 "exact": exact}
        return {"semdedup": {"k": result.extra["k"], "eps": cfg.semdedup.eps, "curve": curve}}
