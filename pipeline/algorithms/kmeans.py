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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.algorithms import exact
from pipeline.algorithms.proposers import FaissProposer, Index, Proposer
from pipeline.errors import ConceptpruneError
from pipeline.io.buffers import take_rows

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


def nearest(x: np.ndarray, centroids: np.ndarray, index: Index, values: bool = True,
            bounds: np.ndarray | None = None, wide: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Each row's nearest centroid by exact inner product (ties: the lower id) and, when
    ``values``, that exact inner product (float64). ``index`` is the proposer's index of
    ``centroids``.

    ``bounds`` (n, 2) float64, when given, receives for each row a lower bound of its true
    inner product with the chosen centroid and an upper bound of its true inner product
    with every other one (``ClusterBounds``): the fast scores of the best and the runner-up,
    each moved by the window's half, which exceeds a fast kernel's error. A row whose
    proposals were re-decided exactly gets -inf as its lower bound. ``wide``, when given,
    is ``centroids`` widened to float64 once, which the values are computed from (the same
    values, each row's centroid not widened again)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, k = len(x), len(centroids)
    if n == 0:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float64)
    win = exact.window(x.shape[1])
    near = getattr(index, "near", None)
    if near is not None:  # every candidate inside the window comes with the proposal
        fast = None if bounds is None else np.empty((n, 2), dtype=np.float32)
        chosen, pair_row, pair_col = near(x, win, fast)
        if fast is not None:
            _fast_bounds(fast[:, 0], fast[:, 1], win, pair_row, bounds)
        if len(pair_row):
            unsure, local = np.unique(pair_row, return_inverse=True)
            decisive = exact.dot_pairs(x, centroids, pair_row, pair_col)
            chosen[unsure] = exact.best_per_row(local.ravel(), pair_col, decisive,
                                                len(unsure))[1]
        return chosen.astype(np.int32), _values(x, centroids, wide, chosen) if values else None
    r = min(k, PROPOSALS)
    scores, ids = index.top(x, r)
    ids = np.where(ids < 0, 0, ids)  # faiss pads with -1 only when k < r, which r excludes
    chosen = ids[:, 0].copy()
    if bounds is not None and r > 1:
        _fast_bounds(scores[:, 0], scores[:, 1], win,
                     np.flatnonzero(scores[:, 1] >= scores[:, 0] - win), bounds)
    elif bounds is not None:  # one centroid: no other to come nearer
        _fast_bounds(scores[:, 0], np.full(n, -np.inf), win, np.zeros(0, np.int64), bounds)
    if r > 1:
        inside = scores >= (scores[:, :1] - win)
        unsure = np.flatnonzero(inside[:, 1])
        if len(unsure):
            chosen[unsure] = _decide(x, centroids, unsure, ids[unsure], inside[unsure],
                                     r < k)
    return chosen.astype(np.int32), _values(x, centroids, wide, chosen) if values else None


def _values(x: np.ndarray, centroids: np.ndarray, wide: np.ndarray | None, chosen: np.ndarray
            ) -> np.ndarray:
    """The exact inner product of every row with its chosen centroid."""
    return exact.dot_rows(x, centroids if wide is None else wide, b_rows=chosen)


def _fast_bounds(best: np.ndarray, runner_up: np.ndarray, win: float, unsure: np.ndarray,
                 bounds: np.ndarray) -> None:
    """``nearest``'s bounds from fast scores: a fast score lies within a quarter of the
    window of the true value (``exact.window`` is four times the proven bound), so half
    the window is a safe margin. Rows re-decided exactly (``unsure``) may have chosen
    another centroid than the fast best: their lower bound is -inf, so they are searched
    again."""
    half = win / 2
    bounds[:, 0] = best.astype(np.float64) - half
    bounds[:, 1] = runner_up.astype(np.float64) + half
    bounds[unsure, 0] = -np.inf


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
        self.wide = self.centroids.astype(np.float64)  # the exact values' side, widened once

    def assign(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (cluster id int32, distance float32) for each row: 1 - the exact inner
        product, rounded once."""
        ids, sims = nearest(vectors, self.centroids, self.index, wide=self.wide)
        assert sims is not None
        return ids, exact.round_once(1.0 - sims)


def cluster_sums(x: np.ndarray, cluster: np.ndarray, k: int, only: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster (of ``only`` when given, in its order), the float64 sum of its rows added
    one by one in row order, and its size.

    A cluster of ``WHOLE_SUM_ROWS`` members or more is added on its own, its members a piece
    at a time (``_sequential_sums``); the smaller ones by rank: every cluster's first member,
    then every cluster's second, and so on, so each sum is the sequential one. Clusters are
    kept largest first, so the clusters that still have a member at a rank are a prefix: one
    contiguous add per rank. On several threads each takes every t-th cluster of that order:
    a cluster's sum is the same whichever thread adds it.
    """
    x = np.asarray(x, dtype=np.float32)
    d = x.shape[1]
    counts = np.bincount(cluster, minlength=k).astype(np.int64)
    order = np.argsort(cluster, kind="stable")  # members of each cluster in row order
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chosen = np.arange(k) if only is None else np.asarray(only, dtype=np.int64)
    by_size = np.argsort(-counts[chosen], kind="stable")  # positions in ``chosen``
    members = int(counts[chosen].sum())
    threads = min(exact.threads(), max(1, members // _PARALLEL_SUM_ROWS))
    share = [by_size[t::threads] for t in range(threads)]
    sums = np.empty((len(chosen), d), dtype=np.float64)
    whole = _reduce_is_sequential(d)

    def add(at: np.ndarray) -> None:
        c = chosen[at]
        big = (counts[c] >= WHOLE_SUM_ROWS) if whole else np.zeros(len(c), dtype=bool)
        alone = int(big.sum())  # largest first: the big clusters lead
        sums[at[:alone]] = _sequential_sums(x, order, first[c[:alone]], counts[c[:alone]])
        sums[at[alone:]] = _sums_by_rank(x, order, first[c[alone:]], counts[c[alone:]])

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(add, share))
    else:
        add(by_size)
    return sums, counts[chosen]


_PARALLEL_SUM_ROWS = 16384  # from this many rows the clusters are shared among threads
# clusters of this many members or more are summed one at a time, the others by rank: the
# rank loop costs a few numpy calls per rank, so its clusters are kept short (a fit of
# 128,000 x 500 at d = 512 spent 1.2 of 6 s in the rank loop, up to 1,400 ranks a call)
WHOLE_SUM_ROWS = 128
SUM_PIECE_ROWS = 1024  # members of a big cluster widened and added at a time (4 MB)

_SEQUENTIAL: dict[int, bool] = {}
_ROWS_REDUCE = np.add.reduce  # the sum over rows trusted once checked


def _reduce_is_sequential(d: int) -> bool:
    """Whether ``np.add.reduce`` over axis 0 of contiguous float64 rows of width ``d`` adds
    the rows one by one in order here (numpy's pairwise summation runs only along a
    contiguous axis), checked once per width on rows whose sums depend on the order."""
    ok = _SEQUENTIAL.get(d)
    if ok is None:
        rng = np.random.default_rng(d)
        ok = d > 1
        for m in (2, 3, 9, 33, 300):
            rows = rng.standard_normal((m, d)) * np.exp2(rng.integers(-30, 30, (m, d)))
            want = np.zeros(d)
            for row in rows:
                want = want + row
            ok = ok and np.array_equal(_ROWS_REDUCE(rows, axis=0, out=np.empty(d)), want)
        _SEQUENTIAL[d] = ok
        if not ok:
            log.info("numpy %s does not add rows of width %d one by one in np.add.reduce: "
                     "cluster sums are added rank by rank (the same sums)", np.__version__, d)
    return ok


def _sequential_sums(x: np.ndarray, order: np.ndarray, first: np.ndarray, sizes: np.ndarray
                     ) -> np.ndarray:
    """The sequential sums of clusters with members ``order[first[c]: first[c] +
    sizes[c]]``, one cluster at a time: its members widened a piece at a time below the
    running sum (zero at first, as a sum from nothing starts), and the piece reduced over
    its rows, which ``_reduce_is_sequential`` found to add them one by one."""
    d = x.shape[1]
    sums = np.zeros((len(sizes), d), dtype=np.float64)
    if not len(sizes):
        return sums
    piece = int(min(SUM_PIECE_ROWS, sizes.max()))
    taken = np.empty((piece, d), dtype=np.float32)
    wide = np.empty((piece + 1, d), dtype=np.float64)
    for acc, start, size in zip(sums, first, sizes, strict=True):
        for s in range(0, int(size), piece):
            rows = order[start + s : start + min(int(size), s + piece)]
            m = len(rows)
            wide[0] = acc
            np.copyto(wide[1 : m + 1], take_rows(x, rows, taken[:m]))
            _ROWS_REDUCE(wide[: m + 1], axis=0, out=acc)
    return sums


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
        take_rows(x, order[first[:active] + rank], rows[:active])
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


# bounds must clear each other by this much: far above the rounding of the exact values that
# decide (``exact.window``'s float64 part, 6e-14 at d = 512), and small enough to spare
# nearly every row that can be spared
BOUND_MARGIN = 1e-9
# above this share of moved centroids, every row is searched again: then as cheap as the
# moved centroids' products, and it renews every bound. Below it, scoring the moved ones and
# searching the few rows left unsure is cheaper (128,000 x 500, 20 iterations: 6.36 s with
# 0.5, 6.06 s with 0.9, the mean of three runs each; 440 of 500 moved in the 4th iteration)
FULL_SEARCH_SHARE = 0.9
SEARCH_ROWS = 32768  # rows searched at a time, gathered into one reused buffer
# a row gathered for scoring costs about as much as its products with this many centroids (a
# copy of its d floats against 2d flops a centroid, both in proportion to d): at 128,000 x
# 500 the drift left 70% of the rows unsure late in a fit, whose gathers took 1.3 s where
# the products they spared took 0.3
GATHER_COST_PRODUCTS = 75


def drift_bounds(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """An upper bound of how far a row's true inner product with each centroid moved from
    ``before`` to ``after`` (float32 rows): the distance between them, computed in float64
    (relative error below d * 2^-52), widened by a relative 1e-9 and by the largest norm of
    a stored unit row (1 + ``exact.NORM_SLACK``)."""
    diff = after.astype(np.float64) - before.astype(np.float64)
    return np.sqrt((diff * diff).sum(axis=1)) * ((1 + 1e-9) * (1 + exact.NORM_SLACK))


class ClusterBounds:
    """Which rows of a Lloyd iteration may have a new nearest centroid.

    After a search, each row holds a lower bound L of its true inner product with its
    centroid and an upper bound U of its true inner product with every other centroid
    (``nearest``'s ``bounds``). Later in a fit most centroids come out bit for bit the same
    (their clusters kept every member: at 128,000 x 500, 318 of 500 in the 8th iteration,
    490 in the 20th), and a row's inner product with an unmoved centroid is unchanged; one
    with a moved centroid changed by at most the centroid's drift (Cauchy-Schwarz, a row's
    norm being at most 1 + ``exact.NORM_SLACK``). So every row's bounds first move by the
    drifts (L down by its own centroid's, U up by the largest), which costs no products;
    only the rows they leave unsure have the moved centroids scored against them (fast
    scores, within half the window of the truth): U becomes the larger of U and the best
    moved centroid other than the row's own, and L is renewed where the row's own centroid
    moved and stays its best among the moved (else the row is searched). A row with L > U +
    BOUND_MARGIN keeps its centroid: every other is truly further by more than the exact
    values' error, so the exact decision (and its tie rule) would choose it again. The fit
    is the same bytes as one that searches every row, with less work.
    """

    def __init__(self, n: int) -> None:
        self.values = np.full((n, 2), np.nan)  # (L, U); NaN: never searched
        self.centroids: np.ndarray | None = None  # those the bounds hold for
        self.scored = 0  # products of rows with moved centroids ``unsure`` made, in all

    def unsure(self, x: np.ndarray, cluster: np.ndarray, centroids: np.ndarray,
               proposer: Proposer) -> np.ndarray:
        """The rows to search against ``centroids``; every bound then holds for them."""
        n, k = len(self.values), len(centroids)
        before, self.centroids = self.centroids, centroids
        if before is None:
            return np.arange(n)
        moved = np.flatnonzero((centroids != before).any(axis=1))
        if not len(moved):
            return np.zeros(0, dtype=np.int64)
        if len(moved) > FULL_SEARCH_SHARE * k:
            return np.arange(n)
        lower, upper = self.values[:, 0], self.values[:, 1]
        drift = np.zeros(k)
        drift[moved] = drift_bounds(before[moved], centroids[moved])
        loose_lower = lower - drift[cluster]
        loose_upper = upper + drift[moved].max()
        settled = loose_lower > loose_upper + BOUND_MARGIN
        rows = np.flatnonzero(~settled)
        if (n - len(rows)) * len(moved) < GATHER_COST_PRODUCTS * len(rows):
            rows = np.arange(n)  # gathering the unsure rows would cost more than it spares
        else:
            lower[settled], upper[settled] = loose_lower[settled], loose_upper[settled]
        if len(rows):
            self._score_moved(x, rows, cluster, centroids, moved, proposer)
        return rows[~(lower[rows] > upper[rows] + BOUND_MARGIN)]

    def _score_moved(self, x: np.ndarray, rows: np.ndarray, cluster: np.ndarray,
                     centroids: np.ndarray, moved: np.ndarray, proposer: Proposer) -> None:
        """Renew the bounds of ``rows`` from fast scores of the moved centroids."""
        half = exact.window(x.shape[1]) / 2
        index = proposer.index(centroids[moved])
        is_moved = np.zeros(len(centroids), dtype=bool)
        is_moved[moved] = True
        for chunk, part in _row_batches(x, rows):
            best, s1, s2 = best_two(index, part, len(moved))
            best = moved[best]
            own = cluster[chunk]
            own_moved = is_moved[own]
            own_best = own_moved & (best == own)
            lower, upper = self.values[chunk, 0], self.values[chunk, 1]
            lower[own_best] = s1[own_best] - half
            lower[own_moved & ~own_best] = -np.inf
            np.maximum(upper, np.where(own_best, s2, s1) + half, out=upper)
            self.values[chunk, 0], self.values[chunk, 1] = lower, upper
        self.scored += len(rows) * len(moved)

    def search(self, x: np.ndarray, rows: np.ndarray, centroids: np.ndarray, index: Index,
               cluster: np.ndarray) -> None:
        """Exact nearest centroids of ``rows`` into ``cluster``, with fresh bounds."""
        for chunk, part in _row_batches(x, rows):
            fresh = np.empty((len(part), 2))
            cluster[chunk], _ = nearest(part, centroids, index, values=False, bounds=fresh)
            self.values[chunk] = fresh


def _row_batches(x: np.ndarray, rows: np.ndarray
                 ) -> Iterator[tuple[slice | np.ndarray, np.ndarray]]:
    """(rows, their vectors) of sorted distinct ``rows``: every row of ``x`` at once when
    they are all, else ``SEARCH_ROWS`` at a time gathered into one reused buffer (a fresh
    copy of them all cost more in page faults than the search saved)."""
    if len(rows) == len(x):
        yield slice(None), x
        return
    buffer = np.empty((min(len(rows), SEARCH_ROWS), x.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), SEARCH_ROWS):
        chunk = rows[start : start + SEARCH_ROWS]
        yield chunk, take_rows(x, chunk, buffer[: len(chunk)])


def best_two(index: Index, x: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's best indexed row and the fast scores of its best and runner-up (-inf
    where there is none), float64."""
    n = len(x)
    near = getattr(index, "near", None)
    if near is not None:
        scores = np.empty((n, 2), dtype=np.float32)
        best, _, _ = near(x, 0.0, scores)
        return best, scores[:, 0].astype(np.float64), scores[:, 1].astype(np.float64)
    top, ids = index.top(x, min(2, k))
    second = top[:, 1] if k > 1 else np.full(n, -np.inf)
    return ids[:, 0], top[:, 0].astype(np.float64), np.asarray(second, dtype=np.float64)


def fit_spherical(sample: np.ndarray, k: int, niter: int, seed: int,
                  proposer: Proposer | None = None, setting: str = "k",
                  advance: Callable[[], None] | None = None) -> np.ndarray:
    """Fit k L2-normalised centroids on ``sample`` (rows L2-normalised float32).

    Lloyd iterations from k distinct sample rows drawn with ``seed``: every row assigned to
    its exact nearest centroid, every centroid the normalised float64 sum of its members
    (an empty one takes half of a big cluster, seeded per iteration). ``advance``, when
    given, is called after each iteration (a progress meter: a fit of tens of thousands of
    centroids takes minutes).
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n, _ = sample.shape
    check_k(k, n, setting)
    proposer = proposer or FaissProposer()
    rng = np.random.default_rng(seed)
    centroids = sample[rng.choice(n, size=k, replace=False)]
    bounds = ClusterBounds(n)
    cluster = np.zeros(n, dtype=np.int32)
    sums = counts = None
    searched = summed = 0
    for it in range(niter):
        rows = bounds.unsure(sample, cluster, centroids, proposer)
        before = cluster[rows]
        if len(rows):
            bounds.search(sample, rows, centroids, proposer.index(centroids), cluster)
        left = cluster[rows] != before
        log.debug("k-means iteration %d: %d of %d rows searched, %d moved", it, len(rows), n,
                  int(left.sum()))
        searched += len(rows)
        if sums is None or counts is None:
            sums, counts = cluster_sums(sample, cluster, k)
            summed += k
        else:  # a cluster that kept every member has the same sum: only the others are added
            changed = np.union1d(before[left], cluster[rows][left])
            if len(changed):
                sums[changed], counts[changed] = cluster_sums(sample, cluster, k, changed)
            summed += len(changed)
        means = sums / np.maximum(counts, 1)[:, None]
        split_empty(means, counts.copy(), np.random.default_rng([seed, it]))
        centroids = unit_centroids(means)
        if advance is not None:
            advance()
    if niter:
        full = niter * n
        log.info("k-means: %d iterations on %d rows x %d centroids: %.0f%% of the products of "
                 "a full Lloyd fit (%.0f%% of the rows searched, and the moved centroids "
                 "scored) and %.0f%% of its cluster sums; the rest could not change it",
                 niter, n, k, 100.0 * (searched * k + bounds.scored) / (full * k),
                 100.0 * searched / full, 100.0 * summed / (niter * k))
    return centroids
