"""Spherical k-means as steps use it (SPEC §2), as units of work: the fit on one worker, on a
seeded sample it draws part by part, then every alive vector assigned and scattered by
cluster as a map over the parts.

The sample is uniform over the alive vectors without any list of them: the driver splits its
size among the parts by a seeded multivariate hypergeometric draw (exactly the counts a
uniform sample of that size has), and the fit draws each part's rows with a generator seeded
by (seed, step, part), in part and row order. Only the fit's worker ever holds the sample.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.algorithms import exact, kmeans, proposers
from pipeline.config import RunConfig
from pipeline.engines.base import Resources
from pipeline.engines.gpu import task_gpu
from pipeline.free_memory import available_bytes
from pipeline.io import npy
from pipeline.io.buffers import populated
from pipeline.io.tables import read_columns
from pipeline.io.vector_store import VectorStore
from pipeline.logs import worker_lines
from pipeline.progress import step_progress
from pipeline.stages.context import (
    RunContext,
    StepResult,
    alive_rows,
    ingest_path,
    step_part_path,
)
from pipeline.stages.shuffle import (
    DECISIONS,
    SCATTER,
    ApplyTask,
    part_counts,
    sums_path,
    write_scatter,
)
from pipeline.units import Unit, no_stats, run_unit
from pipeline.workdir import write_npy

log = logging.getLogger(__name__)

# keys the random draws of each step, so that two steps never draw the same rows
STEP_SALT = {"semdedup": 1, "dbp": 2}


def plan_sample(alive: list[int], k: int, max_points_per_centroid: int, seed: int,
                salt: int) -> list[int]:
    """Sample size per part: every alive vector when there are few enough, else the counts
    of a seeded uniform sample of ``max_points_per_centroid * k`` vectors."""
    total = sum(alive)
    size = min(total, max_points_per_centroid * k)
    if size == total:
        return list(alive)
    rng = np.random.default_rng([seed, salt])
    counts = rng.multivariate_hypergeometric(np.asarray(alive, dtype=np.int64), size,
                                             method="marginals")
    return [int(c) for c in counts]


def sample_rows(rows: np.ndarray, count: int, seed: int, salt: int, part: int) -> np.ndarray:
    """``count`` of a part's alive ``rows``, uniformly, in row order."""
    if count >= len(rows):
        return rows
    rng = np.random.default_rng([seed, salt, part])
    return rows[np.sort(rng.choice(len(rows), size=count, replace=False))]


@dataclass(frozen=True)
class FitTask:
    """The fit, with the sample it draws itself: (part, first global row, rows to draw)."""

    store: VectorStore
    work: str
    plan: tuple[tuple[int, int, int], ...]
    earlier: tuple[str, ...]
    salt: int
    k: int
    niter: int
    seed: int
    backend: Backend
    setting: str
    centroids: str = ""  # where ``fit_and_save`` writes them
    desc: str = "k-means"  # the step, in its progress lines
    progress: bool = False  # the run's settings of those lines (``ProgressSettings``)
    progress_interval_s: float = 30.0


@dataclass(frozen=True)
class Backend:
    """The clustering proposer a step's units use (``proposers.choose``)."""

    name: str
    gpu: bool

    def proposer(self) -> proposers.Proposer:
        """Built in the worker, on the GPU the engine gave its task."""
        return proposers.make_proposer(self.name, self.gpu, task_gpu())

    @property
    def resources(self) -> Resources:
        return Resources(gpus=1.0) if self.gpu else Resources()


def backend(ctx: RunContext) -> Backend:
    return backend_of(ctx.cfg)


def backend_of(cfg: RunConfig) -> Backend:
    """The proposer ``cfg.kmeans`` chooses on this machine."""
    name, gpu = proposers.choose(cfg.kmeans.backend, cfg.kmeans.device)
    return Backend(name, gpu)


def fit_memory(rows: int, dim: int, k: int) -> int:
    """Bytes a fit of ``k`` centroids on ``rows`` sampled vectors holds at most: the float32
    sample, up to 160 bytes a row of bounds, ids and their temporaries, the rows a search
    gathers (``kmeans.SEARCH_ROWS`` at most), per centroid its float64 sum and mean and two
    float32 copies, and the blocks of products (32 MB a thread). Measured against the peak
    of numpy's allocations in ``tests/test_kmeans.py``."""
    searched = min(rows, kmeans.SEARCH_ROWS) * dim * 4
    blocks = exact.threads() * proposers.NEAR_MAX_ELEMENTS * 4
    return rows * (dim * 4 + 160) + searched + k * dim * (8 + 8 + 4 + 4) + blocks


def check_fit_memory(rows: int, dim: int, k: int, setting: str) -> None:
    """A sample too large for this machine's free memory is a clear error before it is
    allocated, not the kernel's OOM killer part way through (k = 50,000 at the default 256
    points per centroid and d = 512 is 26 GB)."""
    need = fit_memory(rows, dim, k)
    free = available_bytes()
    if need > free:
        raise kmeans.KMeansError(
            f"the k-means fit of {setting}={k} holds a sample of {rows:,} vectors of {dim} "
            f"({need / 2**30:.1f} GiB in all), more than the {free / 2**30:.1f} GiB of memory "
            f"available to this process on {socket.gethostname()} (a container's or job's "
            "memory limit counted): lower kmeans.max_points_per_centroid (the sample is at "
            f"most that many vectors per centroid) or {setting}, or run where more memory is "
            "free")


def fit(task: FitTask) -> np.ndarray:
    """Draw the seeded sample part by part (in part and row order), then fit on it.

    Each part's rows are read straight into their place in one array: no pieces to join,
    whose copy and fresh memory cost more than the reads (0.6 s of 0.85 s at 128,000 x 512).
    """
    rows = sum(count for _, _, count in task.plan)
    check_fit_memory(rows, task.store.dim, task.k, task.setting)
    sample = populated((rows, task.store.dim), np.float32)
    starts = np.cumsum([0, *(count for _, _, count in task.plan)])

    def read(i: int) -> int:
        part, offset, count = task.plan[i]
        if not count:
            return 0
        rows = sample_rows(alive_rows(task.work, part, task.earlier), count, task.seed,
                           task.salt, part)
        task.store.gather(offset + rows, out=sample[starts[i] : starts[i] + len(rows)])
        return len(rows)

    # parts read on the fit's threads at once into memory mapped up front: read one by one
    # into fresh memory, the 128,000 x 512 sample took 0.56 s with one core idle
    with ThreadPoolExecutor(max(1, min(exact.threads(), len(task.plan)))) as pool:
        got = list(pool.map(read, range(len(task.plan))))
    if got != [count for _, _, count in task.plan]:  # rows alive then fewer than planned
        sample = np.concatenate([sample[a : a + n] for a, n in zip(starts, got, strict=False)])
    # iterations done, a line every progress_interval_s where the fit runs (a Ray worker's
    # on the driver's console, a Spark executor's in its log); the driver logs its start and
    # end in the run's log
    with worker_lines(), step_progress(task, f"{task.desc}: fit", task.niter, "iteration",
                                       summary=False) as meter:
        return kmeans.fit_spherical(sample, task.k, task.niter, task.seed,
                                    proposer=task.backend.proposer(), setting=task.setting,
                                    advance=lambda: meter.advance(1))


def fit_and_save(task: FitTask) -> np.ndarray:
    """The fit, its centroids written in the worker (before its marker, ``units``)."""
    centroids = fit(task)
    write_npy(Path(task.centroids), centroids)
    return centroids


@dataclass(frozen=True)
class AssignTask:
    work: str
    part: int
    offset: int
    earlier: tuple[str, ...]
    k: int
    batch_size: int
    out: str  # the step's scatter folder
    sums: bool  # also write the per-cluster sum of distances


def _assign_state(store: VectorStore, centroids: np.ndarray, backend: Backend
                  ) -> tuple[VectorStore, kmeans.Assigner]:
    return store, kmeans.Assigner(centroids, backend.proposer())


def assign_part(state: tuple[VectorStore, kmeans.Assigner], task: AssignTask) -> int:
    """Exact nearest centroid and distance of each alive row (batches only bound memory),
    scattered by cluster. Returns the rows assigned."""
    store, assigner = state
    rows = alive_rows(task.work, task.part, task.earlier)
    cluster = np.empty(len(rows), dtype=np.int32)
    distance = np.empty(len(rows), dtype=np.float32)
    pos = 0
    for chunk, vectors in store.batches(task.offset + rows, task.batch_size):
        cluster[pos : pos + len(chunk)], distance[pos : pos + len(chunk)] = \
            assigner.assign(vectors)
        pos += len(chunk)
    ids = read_columns(ingest_path(Path(task.work), task.part), columns=["uid_hi", "uid_lo"])
    uid_hi = ids.column("uid_hi").to_numpy()[rows]
    uid_lo = ids.column("uid_lo").to_numpy()[rows]
    out = Path(task.out)
    write_scatter(out, task.part, task.k, rows, cluster, distance, uid_hi, uid_lo)
    if task.sums:
        write_npy(sums_path(out, task.part),
                  np.bincount(cluster, weights=distance.astype(np.float64), minlength=task.k))
    return int(len(rows))


@dataclass
class Assigned:
    """The driver's view of a clustering: O(k) arrays."""

    centroids: np.ndarray
    sizes: np.ndarray  # members per cluster
    sums: np.ndarray | None  # sum of member distances per cluster, folded in part order
    scatter: Path


def fit_and_assign(ctx: RunContext, step: str, earlier: tuple[str, ...], alive: list[int],
                   k: int, setting: str, sums: bool = False) -> Assigned:
    """Spherical k-means fit on a seeded sample of the alive vectors, then every alive vector
    assigned and scattered by cluster into ``STEP/scatter``."""
    cfg = ctx.cfg.kmeans
    kmeans.check_k(k, sum(alive), setting)
    chosen = backend(ctx)
    counts = plan_sample(alive, k, cfg.max_points_per_centroid, ctx.cfg.seed, STEP_SALT[step])
    offsets = ctx.offsets
    parts = [p.index for p in ctx.parts]
    centroids_path = ctx.step_folder(step) / "centroids.npy"
    fp = ctx.fingerprints[step]
    if ctx.work.done(f"{step}/fit", fp):
        centroids = npy.load(centroids_path)
    else:
        log.info("%s: fitting %d centroids on %d of %d vectors (%s%s)", step, k, sum(counts),
                 sum(alive), chosen.name, " on a GPU" if chosen.gpu else "")
        plan = tuple((p, int(offsets[p]), counts[p]) for p in parts)
        started = time.perf_counter()
        task = FitTask(ctx.store, ctx.root, plan, earlier, STEP_SALT[step], k, cfg.niter,
                       ctx.cfg.seed, chosen, setting, str(centroids_path), step,
                       ctx.cfg.progress, ctx.cfg.progress_interval_s)
        centroids = ctx.engine.run_one(  # the worker writes the centroids, then the marker
            partial(run_unit, fit_and_save, no_stats), Unit(ctx.root, f"{step}/fit", fp, task),
            resources=chosen.resources)
        log.info("%s: fitted in %.1f s", step, time.perf_counter() - started)
    scatter = ctx.step_folder(step, SCATTER)
    tasks_a = [AssignTask(ctx.root, p, int(offsets[p]), earlier, k, cfg.batch_size,
                          str(scatter), sums) for p in parts]
    # parts at once, each on a core of its own: the search's threads are as fast, and the
    # exact distances and the scatter of one part run beside another's
    ctx.map_units(step, "assign", assign_part, tasks_a, parts, desc=f"{step}: assign",
                  unit="part", resources=chosen.resources,
                  setup=partial(_assign_state, ctx.store, centroids, chosen),
                  concurrent=not chosen.gpu)
    sizes = np.zeros(k, dtype=np.int64)
    total = np.zeros(k, dtype=np.float64) if sums else None
    for p in parts:  # folded in part order: the same sums on every engine
        sizes += part_counts(scatter, p)
        if total is not None:
            total += npy.load(sums_path(scatter, p))
    return Assigned(centroids, sizes, total, scatter)


def apply_decisions(ctx: RunContext, step: str, fn: Callable[[ApplyTask], list[int]],
                    scatter: Path, buckets: int) -> StepResult:
    """The map writing each part's row-aligned table from its scatter file and the buckets'
    decisions (``fn``); the step's result from what each part returns: [alive, removed]."""
    decisions = ctx.step_folder(step, DECISIONS)
    tasks = [ApplyTask(str(scatter), str(decisions), buckets, p.index, p.rows,
                       str(step_part_path(ctx.work.root, step, p.index))) for p in ctx.parts]
    applied = ctx.map_units(step, "apply", fn, tasks, [p.index for p in ctx.parts],
                            desc=f"{step}: decisions", unit="part", concurrent=True,
                            plan=ctx.cfg.engine.bucket_rows)
    return StepResult([a for a, _ in applied], [r for _, r in applied], {})


def bucket_state(store: VectorStore, chosen: Backend
                 ) -> tuple[VectorStore, proposers.Proposer]:
    """A worker's store (this one in-process; elsewhere a copy reading the work folder) and
    its proposer."""
    return store, chosen.proposer()
