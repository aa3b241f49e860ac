"""Concept complexity and the per-concept budget (SPEC section 4)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from pipeline.algorithms import exact
from pipeline.algorithms.selection import decimal
from pipeline.errors import ConceptpruneError


class BudgetError(ConceptpruneError, ValueError):
    """The requested target cannot be met under the bounds; the message names the numbers."""


def intra_distance(cluster: np.ndarray, distance: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster: member count and mean distance to its centroid (NaN when empty)."""
    size = np.bincount(cluster, minlength=k).astype(np.int64)
    total = np.bincount(cluster, weights=distance.astype(np.float64), minlength=k)
    return size, mean_distance(size, total)


def mean_distance(size: np.ndarray, total: np.ndarray) -> np.ndarray:
    """d_intra from member counts and distance sums per cluster (NaN when empty)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(size > 0, total / np.maximum(size, 1), np.nan)


# centroids (rows) whose fast products with every centroid are taken at once: 16M float32
# products, 64 MB, whatever k is (the whole k x k matrix in float64 was 20 GB at k = 50,000)
INTER_BLOCK_PRODUCTS = 1 << 24
# columns of a row whose largest product stands for them in the search for the row's l-th
# best: one pass taking the maxima of groups replaced a selection over every column (at
# k = 20,000, d = 512: np.partition took as long as the products)
INTER_GROUP_COLUMNS = 64


def inter_group_columns(m: int, l: int) -> int:  # noqa: E741
    """Columns per group among ``m``: at most ``INTER_GROUP_COLUMNS``, and groups at least
    8 l, so that the l best products of a row seldom share a group."""
    return max(1, min(INTER_GROUP_COLUMNS, m // (8 * max(1, l))))


def inter_distance(centroids: np.ndarray, nonempty: np.ndarray, l: int,  # noqa: E741
                   advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Mean distance from each non-empty centroid to its l nearest other non-empty ones.

    l is clamped to (non-empty clusters - 1); with a single non-empty cluster d_inter = 1.
    Empty clusters get NaN. ``advance``, when given, is called with the number of centroids
    done after each block (for a progress meter: k = 50,000 takes tens of seconds).

    Fast float32 products (this process's BLAS) propose, a block of centroids at a time.
    The l-th largest of the maxima of a row's groups of columns is l distinct products, so
    it is at most the row's l-th best fast score; every centroid whose fast score lies
    within ``exact.window`` of it is a candidate, which holds every one of the l nearest by
    exact value (a fast score is within a quarter of the window of it). Only the groups
    whose maximum reaches that far are searched. The exact inner products of the
    candidates decide; the l smallest exact distances, ascending, are averaged: the values
    the whole exact matrix gave, at O(k x block) memory and BLAS speed.
    """
    k = len(centroids)
    out = np.full(k, np.nan)
    ids = np.flatnonzero(nonempty)
    if len(ids) == 0:
        return out
    if len(ids) == 1:
        out[ids] = 1.0
        return out
    c = np.ascontiguousarray(centroids[ids], dtype=np.float32)
    m = len(c)
    ll = min(l, m - 1)
    win = exact.window(c.shape[1])
    group = inter_group_columns(m, ll)
    groups = -(-m // group)
    columns = np.zeros((groups * group, c.shape[1]), dtype=np.float32)  # zero rows pad
    columns[:m] = c
    nearest = np.empty((m, ll))
    step = max(1, INTER_BLOCK_PRODUCTS // len(columns))
    for start in range(0, m, step):
        stop = min(m, start + step)
        local = np.arange(stop - start)
        sims = c[start:stop] @ columns.T
        sims[:, m:] = -np.inf  # the padding
        sims[local, local + start] = -np.inf  # not itself
        tops = sims.reshape(len(local), groups, group).max(axis=2)
        low = np.partition(tops, groups - ll, axis=1)[:, groups - ll] - win
        row, near = np.nonzero(tops >= low[:, None])  # the groups holding candidates
        col = (near * group)[:, None] + np.arange(group)
        inside = sims[row[:, None], col] >= low[row][:, None]
        row, col = np.broadcast_to(row[:, None], col.shape)[inside], col[inside]
        values = exact.dot_pairs(c, c, row + start, col)
        order = np.lexsort((col, -values, row))  # each row's candidates, largest first
        first = np.searchsorted(row[order], local)
        chosen = values[order[first[:, None] + np.arange(ll)]]
        nearest[start:stop] = 1.0 - chosen  # distances, ascending (1 - v never rises)
        if advance is not None:
            advance(stop - start)
    out[ids] = nearest.mean(axis=1)
    return out


def concept_probability(complexity: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(C / tau) over the non-NaN entries, computed stably; NaN entries get 0."""
    p = np.zeros(len(complexity))
    ok = ~np.isnan(complexity)
    if not ok.any():
        return p
    z = complexity[ok] / temperature
    z = np.exp(z - z.max())
    p[ok] = z / z.sum()
    return p


def lower_bounds(size: np.ndarray, target: int, k: int, balance: float) -> np.ndarray:
    """lb_j = min(m, M_j) with m = max(1, floor(b N / k)); 0 for empty clusters."""
    m = max(1, math.floor(decimal(balance) * target / k))
    return np.minimum(m, size)


def water_fill(ideal: np.ndarray, lower: np.ndarray, upper: np.ndarray, total: float
               ) -> np.ndarray:
    """Exact solution of min ||x - ideal||^2 s.t. sum x = total, lower <= x <= upper.

    x(lam) = clip(ideal + lam, lower, upper); sum x(lam) is piecewise linear and
    non-decreasing in lam, so lam is found exactly between two sorted breakpoints.
    """
    ideal = ideal.astype(np.float64)
    lower = lower.astype(np.float64)
    upper = upper.astype(np.float64)
    breaks = np.unique(np.concatenate([lower - ideal, upper - ideal]))
    sums = _sums_at(breaks, ideal, lower, upper)
    pos = int(np.searchsorted(sums, total, side="left"))
    if pos == 0:
        lam = breaks[0]
    elif pos >= len(breaks):
        lam = breaks[-1]
    else:
        lo_b, hi_b = breaks[pos - 1], breaks[pos]
        lo_s, hi_s = sums[pos - 1], sums[pos]
        lam = lo_b if hi_s == lo_s else lo_b + (total - lo_s) * (hi_b - lo_b) / (hi_s - lo_s)
    return np.clip(ideal + lam, lower, upper)


def _sums_at(lams: np.ndarray, ideal: np.ndarray, lower: np.ndarray, upper: np.ndarray
             ) -> np.ndarray:
    """sum_j clip(ideal_j + lam, lower_j, upper_j) for every lam, vectorised.

    With s_j = lower_j - ideal_j and t_j = upper_j - ideal_j the sum is
    sum(lower) + sum_j max(0, lam - s_j) - sum_j max(0, lam - t_j).
    """
    starts = np.sort(lower - ideal)
    stops = np.sort(upper - ideal)
    start_cum = np.concatenate([[0.0], np.cumsum(starts)])
    stop_cum = np.concatenate([[0.0], np.cumsum(stops)])
    n_started = np.searchsorted(starts, lams, side="right")
    n_stopped = np.searchsorted(stops, lams, side="right")
    rising = n_started * lams - start_cum[n_started]
    saturated = n_stopped * lams - stop_cum[n_stopped]
    return lower.sum() + rising - saturated


def integerize(x: np.ndarray, upper: np.ndarray, total: int) -> np.ndarray:
    """floor(x), then one more unit each to the largest fractional parts below upper.

    Ties go to the smaller cluster id. The result sums to exactly ``total``.
    """
    base = np.floor(x + 1e-9).astype(np.int64)
    base = np.minimum(base, upper)
    remaining = int(total - base.sum())
    if remaining < 0:
        raise BudgetError(f"internal: floor of budgets exceeds the target by {-remaining}")
    frac = x - base
    while remaining > 0:
        open_ = np.flatnonzero(base < upper)
        if len(open_) == 0:
            raise BudgetError(f"internal: {remaining} units left and no cluster has room")
        order = open_[np.lexsort((open_, -frac[open_]))]
        give = order[:remaining]
        base[give] += 1
        frac[give] = -np.inf
        remaining -= len(give)
    return base


def concept_budget(size: np.ndarray, probability: np.ndarray, target: int, k: int,
                   balance: float) -> np.ndarray:
    """Integer per-cluster budget x with sum x = target and lb <= x <= size."""
    total = int(size.sum())
    if target > total:
        raise BudgetError(
            f"dbp target N={target} exceeds the {total} samples that reach dbp; "
            "lower dbp.keep_count or use dbp.keep_fraction"
        )
    lower = lower_bounds(size, target, k, balance)
    if lower.sum() > target:
        raise BudgetError(
            f"dbp lower bounds sum to {int(lower.sum())} > target N={target} "
            f"(balance={balance}, k={k}, {int((size > 0).sum())} non-empty clusters); "
            "lower dbp.balance, lower dbp.k, or keep more samples"
        )
    x = water_fill(target * probability, lower, size, float(target))
    return integerize(x, size, target)
