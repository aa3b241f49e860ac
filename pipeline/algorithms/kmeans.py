"""Spherical k-means (SPEC section 2): fit on a seeded sample, then assign every vector.

distance(x, c) = 1 - <x, c> for L2-normalised x and c. A fast proposer (faiss, BLAS or torch,
on a CPU or a GPU) proposes each vector's nearest centroids; the assignment is decided on the
exact inner products of ``exact.py`` (ties: the lower centroid id), the distance is the exact
one rounded once to float32, and every centroid update is a float64 sum of its members in
sample order, normalised and rounded once. So the centroids, assignments and distances are
the same bytes for any backend, device and thread count.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.algorithms import exact
from pipeline.algorithms.proposers import FaissProposer, Index, Proposer
from pipeline.errors import ConceptpruneError

log = logging.getLogger(__name__)

PROPOSALS = 4  # nearest centroids proposed per vector; a tie wider than this reads them all
SPLIT_EPS = 1.0 / 1024  # how far apart the two halves of a split cluster start


class KMeansError(ConceptpruneError, ValueError):
    """k-means cannot run on the given data (for example k larger than the vectors)."""


def check_k(k: int, n: int, setting: str) -> None:
    if k > n:
        raise KMeansError(
            f"{setting}={k} is larger than the {n} vectors available to cluster; "
            f"set {setting} to at most {n}"
        )


def nearest(x: np.ndarray, centroids: np.ndarray, index: Index, values: bool = True
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Each row's nearest centroid by exact inner product (ties: the lower id) and, when
    ``values``, that exact inner product (float64). ``index`` is the proposer's index of
    ``centroids``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, k = len(x), len(centroids)
    if n == 0:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float64)
    win = exact.window(x.shape[1])
    near = getattr(index, "near", None)
    if near is not None:  # every candidate inside the window comes with the proposal
        chosen, pair_row, pair_col = near(x, win)
        if len(pair_row):
            unsure, local = np.unique(pair_row, return_inverse=True)
            decisive = exact.dot_pairs(x, centroids, pair_row, pair_col)
            chosen[unsure] = exact.best_per_row(local.ravel(), pair_col, decisive,
                                                len(unsure))[1]
        return chosen.astype(np.int32), exact.dot_rows(x, centroids, b_rows=chosen) if values \
            else None
    r = min(k, PROPOSALS)
    scores, ids = index.top(x, r)
    ids = np.where(ids < 0, 0, ids)  # faiss pads with -1 only when k < r, which r excludes
    chosen = ids[:, 0].copy()
    if r > 1:
        inside = scores >= (scores[:, :1] - win)
        unsure = np.flatnonzero(inside[:, 1])
        if len(unsure):
            chosen[unsure] = _decide(x, centroids, unsure, ids[unsure], inside[unsure],
                                     r < k)
    return chosen.astype(np.int32), exact.dot_rows(x, centroids, b_rows=chosen) if values \
        else None


def _decide(x: np.ndarray, centroids: np.ndarray, rows: np.ndarray, ids: np.ndarray,
            inside: np.ndarray, more: bool) -> np.ndarray:
    """The exact nearest centroid of ``rows`` whose proposals tie within the window: among
    the proposals inside it, or among all centroids when the window may reach past the last
    proposal."""
    whole = inside[:, -1] & more  # every proposal inside: others may be too
    pair_row, pair_col = np.nonzero(inside & ~whole[:, None])
    pair_col = ids[pair_row, pair_col]
    values = exact.dot_pairs(x, centroids, rows[pair_row], pair_col)
    _, best = exact.best_per_row(pair_row, pair_col, values, len(rows))
    for i in np.flatnonzero(whole):
        v = exact.dots(x[rows[i] : rows[i] + 1], centroids)[0]
        best[i] = int(np.flatnonzero(v == v.max())[0])
    return best


class Assigner:
    """Nearest centroid by exact inner product, reused across batches."""

    def __init__(self, centroids: np.ndarray, proposer: Proposer | None = None) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.proposer = proposer or FaissProposer()
        self.index = self.proposer.index(self.centroids)

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (cluster id int32, distance float32) for each row: 1 - the exact inner
        product, rounded once."""
        ids, sims = nearest(vectors, self.centroids, self.index)
        assert sims is not None
        return ids, exact.round_once(1.0 - sims)


def cluster_sums(x: np.ndarray, cluster: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster, the float64 sum of its rows added one by one in row order, and its size.

    The rows are taken by rank: every cluster's first member, then every cluster's second,
    and so on, so each sum is the sequential one. Clusters are kept largest first, so the
    clusters that still have a member at a rank are a prefix: one contiguous add per rank.
    On several threads each takes every t-th cluster of that order: a cluster's sum is the
    same whichever thread adds it.
    """
    x = np.asarray(x, dtype=np.float32)
    d = x.shape[1]
    counts = np.bincount(cluster, minlength=k).astype(np.int64)
    order = np.argsort(cluster, kind="stable")  # members of each cluster in row order
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    by_size = np.argsort(-counts, kind="stable")
    threads = min(exact.threads(), max(1, len(x) // _PARALLEL_SUM_ROWS))
    share = [by_size[t::threads] for t in range(threads)]
    sums = np.empty((k, d), dtype=np.float64)

    def add(clusters: np.ndarray) -> None:
        sums[clusters] = _sums_by_rank(x, order, first[clusters], counts[clusters])

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(add, share))
    else:
        add(by_size)
    return sums, counts


_PARALLEL_SUM_ROWS = 16384  # from this many rows the clusters are shared among threads


def _sums_by_rank(x: np.ndarray, order: np.ndarray, first: np.ndarray, sizes: np.ndarray
                  ) -> np.ndarray:
    """The sequential sums of clusters given largest first: members ``order[first[c]:
    first[c] + sizes[c]]``."""
    active = len(sizes)
    acc = np.zeros((active, x.shape[1]), dtype=np.float64)
    rows = np.empty((active, x.shape[1]), dtype=np.float32)
    for rank in range(int(sizes.max(initial=0))):
        while sizes[active - 1] <= rank:
            active -= 1
        np.take(x, order[first[:active] + rank], axis=0, out=rows[:active])
        acc[:active] += rows[:active]
    return acc


def unit_centroids(sums: np.ndarray) -> np.ndarray:
    """Centroids from float64 sums: divided by their exact norm, rounded once to float32.
    A zero sum stays zero."""
    norm = np.sqrt(_sum_squares(sums))
    norm[norm == 0] = 1.0
    return (sums / norm[:, None]).astype(np.float32)


def _sum_squares(x: np.ndarray) -> np.ndarray:
    """Row sums of squares of float64 rows, each square rounded, summed in the fixed order."""
    return exact.row_sums(x * x)


def split_empty(means: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> int:
    """Give every empty cluster half of a big one (as faiss does): a cluster is chosen with
    probability (size - 1) / (n - k), its mean copied and the two pushed SPLIT_EPS apart
    along alternating axes. ``means`` and ``counts`` change in place; returns the splits."""
    k = len(counts)
    n = int(counts.sum())
    splits = 0
    sign = np.where(np.arange(means.shape[1]) % 2 == 0, 1.0, -1.0)
    for ci in np.flatnonzero(counts == 0):
        if counts.max() < 2:
            break
        weights = np.maximum(counts - 1, 0).astype(np.float64)
        cj = int(rng.choice(k, p=weights / weights.sum())) if n > k else int(counts.argmax())
        means[ci] = means[cj] * (1 + SPLIT_EPS * sign)
        means[cj] = means[cj] * (1 - SPLIT_EPS * sign)
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
        splits += 1
    return splits


def fit_spherical(sample: np.ndarray, k: int, niter: int, seed: int,
                  proposer: Proposer | None = None, setting: str = "k") -> np.ndarray:
    """Fit k L2-normalised centroids on ``sample`` (rows L2-normalised float32).

    Lloyd iterations from k distinct sample rows drawn with ``seed``: every row assigned to
    its exact nearest centroid, every centroid the normalised float64 sum of its members
    (an empty one takes half of a big cluster, seeded per iteration).
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n, _ = sample.shape
    check_k(k, n, setting)
    proposer = proposer or FaissProposer()
    rng = np.random.default_rng(seed)
    centroids = sample[rng.choice(n, size=k, replace=False)]
    for it in range(niter):
        cluster, _ = nearest(sample, centroids, proposer.index(centroids), values=False)
        sums, counts = cluster_sums(sample, cluster, k)
        means = sums / np.maximum(counts, 1)[:, None]
        split_empty(means, counts, np.random.default_rng([seed, it]))
        centroids = unit_centroids(means)
    return centroids
