"""Spherical k-means (SPEC section 2): fit on a seeded sample, then assign every vector.

distance(x, c) = 1 - <x, c> for L2-normalised x and c.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)


class KMeansError(ValueError):
    """k-means cannot run on the given data (for example k larger than the vectors)."""


def gpu_available() -> bool:
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get and get() > 0)


def use_gpu(device: str) -> bool:
    if device == "gpu":
        if not gpu_available():
            raise KMeansError(
                "kmeans.device=gpu but faiss sees no GPU: install the 'gpu' extra (faiss-gpu) "
                "on a machine with CUDA, or set kmeans.device=auto"
            )
        return True
    return device == "auto" and gpu_available()


def check_k(k: int, n: int, setting: str) -> None:
    if k > n:
        raise KMeansError(
            f"{setting}={k} is larger than the {n} vectors available to cluster; "
            f"set {setting} to at most {n}"
        )


def fit_spherical(sample: np.ndarray, k: int, niter: int, seed: int, gpu: bool = False,
                  setting: str = "k", device: int | None = None) -> np.ndarray:
    """Fit k L2-normalised centroids on ``sample`` (rows L2-normalised float32).

    On the GPU: the one numbered ``device``, or every GPU this process sees when None.
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n, d = sample.shape
    check_k(k, n, setting)
    km = faiss.Kmeans(
        d, k, niter=niter, seed=seed, spherical=True, gpu=gpu and device is None,
        verbose=False, max_points_per_centroid=max(1, n // k + 1), min_points_per_centroid=1,
    )
    if gpu and device is not None:
        resources = faiss.StandardGpuResources()
        km.index = faiss.index_cpu_to_gpu(resources, device, faiss.IndexFlatIP(d))
    km.train(sample)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return centroids / norms


class Assigner:
    """Nearest centroid by inner product, reused across batches."""

    def __init__(self, centroids: np.ndarray, gpu: bool = False, device: int | None = None
                 ) -> None:
        """On the GPU numbered ``device`` (None: the first this process sees) when ``gpu``."""
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        index = faiss.IndexFlatIP(centroids.shape[1])
        if gpu:
            res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(res, device or 0, index)
            self._res = res
        index.add(centroids)
        self.index = index

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (cluster id int32, distance float32) for each row."""
        sims, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        return ids[:, 0].astype(np.int32), (1.0 - sims[:, 0]).astype(np.float32)
