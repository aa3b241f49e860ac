"""The CLIP-score filter and within-concept selection (SPEC sections 1 and 4)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.algorithms.ordering import grouped_order
from pipeline.algorithms.selection import (
    clip_filter_keep,
    rank_within_groups,
    round_half_up,
    select_within_concepts,
)


def u64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64)


@pytest.mark.parametrize("x, expected", [
    (0.0, 0), (0.49, 0), (0.5, 1), (1.5, 2), (2.5, 3), (3.5, 4), (2.4999, 2), (7.0, 7),
])
def test_round_half_up(x: float, expected: int) -> None:
    assert round_half_up(x) == expected


# ---------------------------------------------------------------- clip filter


def test_clip_filter_threshold_keeps_score_at_or_above() -> None:
    score = np.array([0.2, 0.25, 0.3, 0.31, 0.2499], dtype=np.float32)
    uid = u64(np.arange(5))
    assert clip_filter_keep(score, uid, uid, threshold=0.25).tolist() == [
        False, True, True, True, False]
    # a float32 score equal to the threshold is kept (>=), even for an inexact decimal
    assert clip_filter_keep(score, uid, uid, threshold=0.3).tolist() == [
        False, False, True, True, False]


@pytest.mark.parametrize("q, n_keep", [
    (0.25, 3),   # 2.5 -> 3 (half up)
    (0.05, 1),   # 0.5 -> 1
    (0.04, 0),   # 0.4 -> 0
    (0.34, 3),   # 3.4 -> 3
    (1.0, 10),
])
def test_clip_filter_keep_fraction_count(q: float, n_keep: int) -> None:
    score = np.linspace(0.1, 0.9, 10).astype(np.float32)[::-1].copy()
    uid = u64(np.arange(10))
    keep = clip_filter_keep(score, uid, uid, keep_fraction=q)
    assert keep.sum() == n_keep
    assert keep.tolist() == [True] * n_keep + [False] * (10 - n_keep)  # the best scores


def test_clip_filter_keep_fraction_ties_by_uid() -> None:
    score = np.array([0.5, 0.9, 0.9, 0.9, 0.1, 0.9], dtype=np.float32)
    uid_hi = u64([0, 3, 1, 1, 0, 2**63])
    uid_lo = u64([0, 0, 8, 2, 0, 0])
    # M = 6, q = 0.5 -> 3 kept; the four 0.9 rows by uid: (1,2) < (1,8) < (3,0) < (2^63,0)
    keep = clip_filter_keep(score, uid_hi, uid_lo, keep_fraction=0.5)
    assert keep.tolist() == [False, True, True, True, False, False]
    keep = clip_filter_keep(score, uid_hi, uid_lo, keep_fraction=1 / 3)  # 2 kept
    assert keep.tolist() == [False, False, True, True, False, False]


def test_clip_filter_keep_fraction_matches_sorting_reference() -> None:
    rng = np.random.default_rng(5)
    n = 500
    score = rng.choice(np.linspace(0, 1, 23), size=n).astype(np.float32)  # many ties
    uid_hi = rng.integers(0, 4, size=n).astype(np.uint64)
    uid_lo = rng.integers(0, 2**63, size=n).astype(np.uint64)
    q = 0.37
    n_keep = int(np.floor(q * n + 0.5))
    ranked = sorted(range(n), key=lambda i: (-float(score[i]), int(uid_hi[i]), int(uid_lo[i])))
    expected = np.zeros(n, dtype=bool)
    expected[ranked[:n_keep]] = True
    assert np.array_equal(clip_filter_keep(score, uid_hi, uid_lo, keep_fraction=q), expected)


# ---------------------------------------------------------------- within concepts


def test_rank_within_groups() -> None:
    group = np.array([1, 0, 1, 1, 0])
    order = np.array([4, 1, 3, 0, 2])  # sorted by group, then by some key
    assert rank_within_groups(group, order).tolist() == [1, 1, 2, 0, 0]
    assert rank_within_groups(np.zeros(0, dtype=int), np.zeros(0, dtype=int)).tolist() == []


# concept 0: rows 0-3, concept 1: rows 4-6, concept 2: row 7
CLUSTER = np.array([0, 0, 0, 0, 1, 1, 1, 2])
DISTANCE = np.array([0.1, 0.4, 0.4, 0.2, 0.3, 0.1, 0.3, 0.5], dtype=np.float32)
UID_HI = u64([5, 9, 2, 1, 4, 3, 4, 0])
UID_LO = u64([0, 0, 0, 0, 7, 0, 1, 0])
BUDGET = np.array([2, 2, 0])


def test_hard_keeps_farthest_ties_by_uid() -> None:
    keep = select_within_concepts(CLUSTER, DISTANCE, UID_HI, UID_LO, BUDGET, "hard", 0)
    # concept 0: 0.4 (uid 2) and 0.4 (uid 9); concept 1: the 0.3 tie, uid (4,1) < (4,7)
    assert np.flatnonzero(keep).tolist() == [1, 2, 4, 6]


def test_hard_ties_by_uid_choose_the_smaller_uid() -> None:
    keep = select_within_concepts(CLUSTER, DISTANCE, UID_HI, UID_LO, np.array([1, 1, 1]),
                                  "hard", 0)
    assert np.flatnonzero(keep).tolist() == [2, 6, 7]


def test_easy_keeps_closest_ties_by_uid() -> None:
    keep = select_within_concepts(CLUSTER, DISTANCE, UID_HI, UID_LO, BUDGET, "easy", 0)
    assert np.flatnonzero(keep).tolist() == [0, 3, 5, 6]
    keep = select_within_concepts(CLUSTER, DISTANCE, UID_HI, UID_LO, np.array([3, 1, 1]),
                                  "easy", 0)
    assert np.flatnonzero(keep).tolist() == [0, 2, 3, 5, 7]  # 0.4 tie in concept 0: uid 2


def select_reference(cluster, distance, uid_hi, uid_lo, budget, mode) -> np.ndarray:
    sign = -1.0 if mode == "hard" else 1.0
    keep = np.zeros(len(cluster), dtype=bool)
    for c in np.unique(cluster):
        rows = np.flatnonzero(cluster == c)
        ranked = sorted(rows, key=lambda i: (sign * float(distance[i]), int(uid_hi[i]),
                                              int(uid_lo[i])))
        keep[ranked[: budget[c]]] = True
    return keep


def random_concepts(n: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, k, size=n)
    distance = rng.choice(np.linspace(0, 1, 17), size=n).astype(np.float32)  # ties
    uid_hi = rng.integers(0, 3, size=n).astype(np.uint64)
    uid_lo = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64)
    size = np.bincount(cluster, minlength=k)
    budget = np.array([rng.integers(0, s + 1) for s in size])
    return cluster, distance, uid_hi, uid_lo, budget


@pytest.mark.parametrize("mode", ["hard", "easy"])
def test_hard_easy_match_sorting_reference(mode: str) -> None:
    cluster, distance, uid_hi, uid_lo, budget = random_concepts(600, 9, 3)
    keep = select_within_concepts(cluster, distance, uid_hi, uid_lo, budget, mode, 0)
    assert np.array_equal(keep, select_reference(cluster, distance, uid_hi, uid_lo, budget,
                                                 mode))
    assert np.bincount(cluster[keep], minlength=9).tolist() == budget.tolist()


def test_random_exact_budget_deterministic_and_seeded() -> None:
    cluster, distance, uid_hi, uid_lo, _ = random_concepts(1200, 4, 8)
    budget = np.bincount(cluster, minlength=4) // 2
    a = select_within_concepts(cluster, distance, uid_hi, uid_lo, budget, "random", 17)
    b = select_within_concepts(cluster, distance, uid_hi, uid_lo, budget, "random", 17)
    c = select_within_concepts(cluster, distance, uid_hi, uid_lo, budget, "random", 18)
    assert np.array_equal(a, b)
    assert np.bincount(cluster[a], minlength=4).tolist() == budget.tolist()
    assert np.bincount(cluster[c], minlength=4).tolist() == budget.tolist()
    for concept in range(4):  # ~300 members, half kept: two seeds agreeing is ~impossible
        rows = cluster == concept
        assert not np.array_equal(a[rows], c[rows])
    # not the hard or easy choice in disguise
    hard = select_within_concepts(cluster, distance, uid_hi, uid_lo, budget, "hard", 17)
    assert not np.array_equal(a, hard)


def test_random_does_not_depend_on_row_order() -> None:
    cluster, distance, uid_hi, uid_lo, _ = random_concepts(800, 5, 9)
    budget = np.bincount(cluster, minlength=5) // 3
    keep = select_within_concepts(cluster, distance, uid_hi, uid_lo, budget, "random", 4)
    kept = set(zip(uid_hi[keep].tolist(), uid_lo[keep].tolist(), strict=True))
    perm = np.random.default_rng(0).permutation(800)
    keep_p = select_within_concepts(cluster[perm], distance[perm], uid_hi[perm], uid_lo[perm],
                                    budget, "random", 4)
    kept_p = set(zip(uid_hi[perm][keep_p].tolist(), uid_lo[perm][keep_p].tolist(), strict=True))
    assert kept == kept_p and len(kept) == budget.sum()


def test_random_choice_of_a_concept_ignores_other_concepts() -> None:
    cluster, distance, uid_hi, uid_lo, _ = random_concepts(400, 3, 10)
    budget = np.bincount(cluster, minlength=3) // 2
    keep = select_within_concepts(cluster, distance, uid_hi, uid_lo, budget, "random", 2)
    only = cluster == 1
    keep_only = select_within_concepts(cluster[only], distance[only], uid_hi[only],
                                       uid_lo[only], budget, "random", 2)
    assert np.array_equal(keep[only], keep_only)


def test_random_is_roughly_uniform() -> None:
    n, budget = 20, 5
    cluster = np.zeros(n, dtype=np.int64)
    uid = np.arange(n, dtype=np.uint64)
    counts = np.zeros(n)
    for seed in range(400):
        counts += select_within_concepts(cluster, np.zeros(n, np.float32), uid, uid,
                                         np.array([budget]), "random", seed)
    # each member is expected 400 * 5 / 20 = 100 times (sd ~ 8.7)
    assert counts.sum() == 400 * budget
    assert counts.min() > 65 and counts.max() < 135


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="medium"):
        select_within_concepts(CLUSTER, DISTANCE, UID_HI, UID_LO, BUDGET, "medium", 0)


def test_targets_use_the_decimal_setting() -> None:
    """0.145 x 100 is 14.5 on paper: floor(14.5 + 1/2) = 15, not the binary double's 14."""
    from pipeline.algorithms.budget import lower_bounds
    from pipeline.algorithms.selection import fraction_of

    assert fraction_of(0.145, 100) == 15
    assert fraction_of(0.5, 3) == 2
    assert fraction_of(1.0, 7) == 7
    # m = floor(0.57 x 200 / 57) = floor(2.0) = 2
    assert lower_bounds(np.array([5, 5]), 200, 57, 0.57).tolist() == [2, 2]
    score = np.array([0.3, 0.2999], dtype=np.float64)
    z = np.zeros(2, dtype=np.uint64)
    assert clip_filter_keep(score, z, z, threshold=0.3).tolist() == [True, False]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_grouped_order_equals_four_key_lexsort(n: int, groups: int, keys: int, seed: int) -> None:
    """Few distinct keys and uids force ties at every level, including equal uids."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, groups, n).astype(np.int32)
    key = rng.integers(0, keys, n).astype(np.float32) / 7
    hi = rng.integers(0, 3, n).astype(np.uint64)
    lo = rng.integers(0, 3, n).astype(np.uint64)
    # both sorts are stable, so even rows equal on all four keys come in the same order
    np.testing.assert_array_equal(grouped_order(group, key, hi, lo),
                                  np.lexsort((lo, hi, key, group)))
