"""Spherical k-means as steps use it (SPEC §2): the fit on one worker, then the assignment
of every vector as a map over the input parts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import numpy as np

from pipeline.algorithms import kmeans
from pipeline.engines.base import Resources
from pipeline.io.vector_store import VectorStore
from pipeline.stages.context import RunContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitTask:
    sample: np.ndarray  # the seeded sample's unit vectors
    k: int
    niter: int
    seed: int
    gpu: bool
    setting: str


def fit(task: FitTask) -> np.ndarray:
    return kmeans.fit_spherical(task.sample, task.k, task.niter, task.seed, gpu=task.gpu,
                                setting=task.setting)


@dataclass(frozen=True)
class AssignTask:
    rows: np.ndarray  # sorted global rows, all in one input part
    batch_size: int


def _assign_state(store: VectorStore, centroids: np.ndarray, gpu: bool
                  ) -> tuple[VectorStore, kmeans.Assigner]:
    return store, kmeans.Assigner(centroids, gpu=gpu)


def assign_part(state: tuple[VectorStore, kmeans.Assigner], task: AssignTask
                ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and distance of each row, in batches that restart at the part's
    start: the same batches on every engine, so the same floats."""
    store, assigner = state
    cluster = np.empty(len(task.rows), dtype=np.int32)
    distance = np.empty(len(task.rows), dtype=np.float32)
    pos = 0
    for chunk, vectors in store.batches(task.rows, task.batch_size):
        cluster[pos : pos + len(chunk)], distance[pos : pos + len(chunk)] = \
            assigner.assign(vectors)
        pos += len(chunk)
    return cluster, distance


def fit_and_assign(ctx: RunContext, rows: np.ndarray, k: int, setting: str, name: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical k-means fit on a seeded sample of ``rows``, then every row assigned.

    Returns (centroids, cluster per row, distance per row), aligned with ``rows``.
    """
    cfg = ctx.cfg.kmeans
    kmeans.check_k(k, len(rows), setting)
    gpu = kmeans.use_gpu(cfg.device)
    sample = kmeans.sample_indices(rows, k, cfg.max_points_per_centroid, ctx.cfg.seed)
    log.info("%s: fitting %d centroids on %d of %d vectors (%s)", name, k, len(sample),
             len(rows), "GPU" if gpu else "CPU")
    gpus = Resources(gpus=1.0) if gpu else Resources()
    centroids = ctx.engine.run_one(
        fit, FitTask(ctx.store.gather(sample), k, cfg.niter, ctx.cfg.seed, gpu, setting),
        resources=gpus)
    bounds = np.searchsorted(rows, ctx.store.offsets)
    tasks = [AssignTask(rows[a:b], cfg.batch_size)
             for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    cluster = np.empty(len(rows), dtype=np.int32)
    distance = np.empty(len(rows), dtype=np.float32)
    pos = 0
    for c, d in ctx.engine.map(assign_part, tasks, desc=f"{name}: assign", total=len(tasks),
                               unit="part", resources=gpus,
                               setup=partial(_assign_state, ctx.store, centroids, gpu)):
        cluster[pos : pos + len(c)], distance[pos : pos + len(c)] = c, d
        pos += len(c)
    return centroids, cluster, distance
