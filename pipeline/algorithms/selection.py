"""Which samples survive a step: the CLIP-score filter and within-concept selection."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from pipeline.algorithms.ordering import grouped_order


def round_half_up(x: float) -> int:
    """floor(x + 1/2), the rounding SPEC uses for every target count."""
    return int(np.floor(x + 0.5))


def decimal(setting: float) -> Fraction:
    """A setting as the decimal number the user wrote (0.145, not its nearest binary double),
    so that floor() of a product is the one SPEC's formulas give on paper."""
    return Fraction(repr(float(setting)))


def fraction_of(fraction: float, total: int) -> int:
    """floor(q x M + 1/2) computed exactly for the decimal q."""
    return math.floor(decimal(fraction) * total + Fraction(1, 2))


def clip_filter_keep(score: np.ndarray, uid_hi: np.ndarray, uid_lo: np.ndarray,
                     threshold: float | None = None, keep_fraction: float | None = None
                     ) -> np.ndarray:
    """Boolean keep mask: score >= threshold, or the top floor(q M + 1/2) by score.

    Ties in score are broken by uid ascending.
    """
    if threshold is not None:
        return score >= threshold
    assert keep_fraction is not None
    n_keep = fraction_of(keep_fraction, len(score))
    order = np.lexsort((uid_lo, uid_hi, -score.astype(np.float64)))
    keep = np.zeros(len(score), dtype=bool)
    keep[order[:n_keep]] = True
    return keep


def rank_within_groups(group: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each row's rank within its group, given ``order`` that sorts rows by group first."""
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, int)
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    rank = np.empty(len(g), dtype=np.int64)
    rank[order] = np.arange(len(g)) - run_start
    return rank


def select_within_concepts(cluster: np.ndarray, distance: np.ndarray, uid_hi: np.ndarray,
                           uid_lo: np.ndarray, budget: np.ndarray, mode: str, seed: int
                           ) -> np.ndarray:
    """Keep ``budget[c]`` members of every concept c; returns a boolean keep mask.

    hard: the farthest from the centroid; easy: the closest; random: a seeded uniform sample
    (seeded per concept, so the choice of one concept does not depend on the others).
    Distance ties are broken by uid ascending.
    """
    if mode == "hard":
        key = -distance
    elif mode == "easy":
        key = distance
    elif mode == "random":
        key = _random_keys(cluster, uid_hi, uid_lo, seed)
    else:
        raise ValueError(f"dbp.keep must be hard, easy or random, got {mode!r}")
    order = grouped_order(cluster, key, uid_hi, uid_lo)
    rank = rank_within_groups(cluster, order)
    return rank < budget[cluster]


def _random_keys(cluster: np.ndarray, uid_hi: np.ndarray, uid_lo: np.ndarray, seed: int
                 ) -> np.ndarray:
    """A seeded uniform random priority per sample, independent of input order.

    Members of each concept are sorted by uid and given a permutation drawn from a
    generator seeded by (seed, concept), so the outcome depends only on the set of members.
    """
    keys = np.empty(len(cluster), dtype=np.float64)
    order = np.lexsort((uid_lo, uid_hi, cluster))
    c_sorted = cluster[order]
    bounds = np.flatnonzero(np.r_[True, c_sorted[1:] != c_sorted[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rng = np.random.default_rng([seed, int(c_sorted[a])])
        keys[order[a:b]] = rng.permutation(b - a)
    return keys
