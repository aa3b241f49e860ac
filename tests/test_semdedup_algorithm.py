"""SemDeDup within one cluster (SPEC section 3) against a brute-force O(n^2) reference."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.algorithms import exact
from pipeline.algorithms.semdedup import (
    auto_block_rows,
    dedup_cluster,
    dedup_order,
    max_earlier_similarity,
)

BAND = 1e-5  # decisions within this distance of the threshold may go either way in float32


def reference(vectors: np.ndarray, eps: float):
    """Full Gram matrix in float64: m_j = max_{i<j} <e_i, e_j>, the smallest i achieving it,
    the margin to the runner-up (the argmax is only well defined when it is clear of float32
    rounding) and the removal flags."""
    e = vectors.astype(np.float64)
    gram = e @ e.T
    n = len(e)
    m = np.full(n, -np.inf)
    second = np.full(n, -np.inf)
    arg = np.full(n, -1)
    for j in range(1, n):
        row = gram[j, :j]
        arg[j] = int(np.argmax(row))  # first maximum = smallest i
        m[j] = row[arg[j]]
        if j > 1:
            second[j] = np.partition(row, j - 2)[j - 2]
    with np.errstate(invalid="ignore"):
        margin = np.where(np.isneginf(second), np.inf, m - second)
    return m, arg, margin, m > 1.0 - eps


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_vectors(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around a common direction with near-duplicates at many similarity levels,
    so that m_j falls on both sides of 1 - eps."""
    centre = rng.standard_normal(d)
    rows = []
    for j in range(n):
        if j and rng.random() < 0.6:
            parent = rows[rng.integers(len(rows))]
            rows.append(parent + rng.choice([0.02, 0.1, 0.2, 0.3]) * rng.standard_normal(d))
        else:
            rows.append(centre + 0.6 * rng.standard_normal(d))
    return normalise(np.array(rows))


def check_against_reference(vectors: np.ndarray, eps: float, block_rows: int) -> None:
    removed, dup_pos, sim = dedup_cluster(vectors, eps, block_rows)
    m_ref, arg_ref, margin_ref, removed_ref = reference(vectors, eps)
    n = len(vectors)
    assert removed.shape == dup_pos.shape == sim.shape == (n,)
    assert removed.dtype == bool
    # the first member is never compared
    assert not removed[0] and dup_pos[0] == -1 and np.isnan(sim[0])
    if n == 1:
        return
    np.testing.assert_allclose(sim[1:], m_ref[1:], atol=1e-5)
    clear = np.abs(m_ref - (1.0 - eps)) > BAND
    assert np.array_equal(removed[clear], removed_ref[clear])
    unique_max = margin_ref > BAND
    assert np.array_equal(dup_pos[unique_max], arg_ref[unique_max])
    # wherever the argmax is not unique the recorded member still achieves the maximum
    assert (dup_pos[1:] >= 0).all() and (dup_pos[1:] < np.arange(1, n)).all()
    achieved = np.einsum("ij,ij->i", vectors[1:].astype(np.float64),
                         vectors[dup_pos[1:]].astype(np.float64))
    np.testing.assert_allclose(achieved, m_ref[1:], atol=1e-5)


@pytest.mark.parametrize("block_rows", [1, 2, 5, 64])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 65, 129])
def test_matches_brute_force(n: int, block_rows: int) -> None:
    rng = np.random.default_rng(1000 * n + block_rows)
    vectors = clustered_vectors(n, 24, rng)
    for eps in (0.01, 0.05, 0.2):
        check_against_reference(vectors, eps, block_rows)


def test_reference_cases_exercise_both_decisions() -> None:
    # guard against a vacuous comparison: the data above does produce removals and survivors
    vectors = clustered_vectors(129, 24, np.random.default_rng(7))
    removed, _, _ = dedup_cluster(vectors, 0.05, 5)
    assert 10 < removed.sum() < 119


@pytest.mark.parametrize("block_rows", [1, 3, 64, 256])
def test_block_size_does_not_change_the_result(block_rows: int) -> None:
    vectors = clustered_vectors(200, 16, np.random.default_rng(3))
    m_all, arg_all = max_earlier_similarity(vectors, block_rows=10_000)
    m, arg = max_earlier_similarity(vectors, block_rows=block_rows)
    np.testing.assert_allclose(m, m_all, atol=1e-6)
    m_ref, arg_ref, margin_ref, _ = reference(vectors, 0.05)
    unique_max = margin_ref > BAND
    assert np.array_equal(arg[unique_max], arg_all[unique_max])
    assert m[0] == -np.inf and arg[0] == -1


def test_chain_uses_all_earlier_members_removed_or_not() -> None:
    # A, B, C at angles 0, 0.2, 0.4: cos 0.2 = 0.980 > 0.97 > cos 0.4 = 0.921
    angles = np.array([0.0, 0.2, 0.4])
    vectors = np.c_[np.cos(angles), np.sin(angles)].astype(np.float32)
    removed, dup_pos, sim = dedup_cluster(vectors, 0.03, block_rows=2)
    assert removed.tolist() == [False, True, True]  # C is removed by B, itself removed
    assert dup_pos.tolist() == [-1, 0, 1]
    np.testing.assert_allclose(sim[1:], [np.cos(0.2), np.cos(0.2)], atol=1e-6)
    assert sim.dtype == np.float32


def test_threshold_is_strict() -> None:
    vectors = np.array([[1.0, 0.0], [0.5, 0.75]], dtype=np.float32)  # <e_0, e_1> = 0.5 exactly
    assert dedup_cluster(vectors, 0.5, 8)[0].tolist() == [False, False]  # 0.5 > 0.5 is false
    assert dedup_cluster(vectors, 0.51, 8)[0].tolist() == [False, True]
    assert dedup_cluster(vectors, 0.49, 8)[0].tolist() == [False, False]


def test_threshold_compares_the_stored_values_with_the_decimal_setting() -> None:
    # float32(0.6) = 0.6000000238...: the stored vectors' cosine is above 1 - 0.4 = 0.6
    vectors = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    removed, _, sim = dedup_cluster(vectors, 0.4, 8)
    assert removed.tolist() == [False, True] and sim[1] == np.float32(0.6)
    # the line moves by 1e-8: 0.60000003 is above the stored cosine, 0.60000002 below it
    assert dedup_cluster(vectors, 0.39999997, 8)[0].tolist() == [False, False]
    assert dedup_cluster(vectors, 0.39999998, 8)[0].tolist() == [False, True]


@pytest.mark.parametrize("block_rows", [1, 2, 3, 64])
def test_exact_ties_go_to_the_smallest_earlier_position(block_rows: int) -> None:
    # coordinates 0 and 1 only: every product is exact, so the ties are exact in float32
    a, b = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]
    vectors = np.array([a, b, a, a, b, a, b], dtype=np.float32)
    removed, dup_pos, sim = dedup_cluster(vectors, 0.05, block_rows)
    assert removed.tolist() == [False, False, True, True, True, True, True]
    assert dup_pos.tolist() == [-1, 0, 0, 0, 1, 0, 1]
    assert sim[1] == 0.0 and (sim[2:] == 1.0).all()


@pytest.mark.parametrize("block_rows", [1, 2, 5, 64])
def test_planted_exact_duplicates_collapse_to_first_in_dedup_order(block_rows: int) -> None:
    rng = np.random.default_rng(11 + block_rows)
    d = 32
    base = normalise(rng.standard_normal((25, d)))  # random directions: cos well below 0.9
    copies = rng.integers(1, 5, size=25)  # 1..4 members per group
    group = np.repeat(np.arange(25), copies)
    vectors = base[group]
    n = len(group)
    uid_hi = rng.permutation(n).astype(np.uint64)
    uid_lo = rng.integers(0, 2**63, size=n).astype(np.uint64)
    centroid = normalise(base.mean(axis=0, keepdims=True))[0]
    # exact copies are exactly equidistant from the centroid (as faiss assigns them)
    distance = (1.0 - base @ centroid).astype(np.float32)[group]

    order = dedup_order(distance, uid_hi, uid_lo)
    removed, dup_pos, sim = dedup_cluster(vectors[order], 0.03, block_rows)
    g = group[order]

    for label in range(25):
        pos = np.flatnonzero(g == label)
        # exactly one survivor: the first in dedup order (equal distances -> smallest uid)
        assert removed[pos].tolist() == [False] + [True] * (len(pos) - 1)
        members = order[pos]
        assert uid_hi[members[0]] == uid_hi[members].min()
        # every removed copy points at the survivor: equal exact similarities go to the
        # earliest member, whatever BLAS rounded for two identical columns
        assert (dup_pos[pos[1:]] == pos[0]).all()
        assert (sim[pos[1:]] > 0.9999).all()
    assert removed.sum() == n - 25


@pytest.mark.parametrize("block_rows", [1, 3, 7, 64])
def test_copies_barred_as_columns_change_no_bit(block_rows: int) -> None:
    """Bit-identical copies are barred as columns (never the earliest best) but stay rows:
    every m_j and its member are the exact brute force's, on rows where copies, copies of
    copies and near copies of them are interleaved."""
    rng = np.random.default_rng(40 + block_rows)
    rows = list(clustered_vectors(90, 16, rng))
    for _ in range(60):  # copies of any earlier row (copies included), anywhere after it
        at = int(rng.integers(1, len(rows) + 1))
        source = rows[int(rng.integers(0, at))]
        near = rng.random() < 0.3
        rows.insert(at, normalise((source + 1e-4 * rng.standard_normal(16))[None])[0]
                    if near else source.copy())
    vectors = np.array(rows, dtype=np.float32)
    gram = exact.dots(vectors, vectors)  # exact values, the decisive ones
    m, arg = max_earlier_similarity(vectors, block_rows)
    for j in range(1, len(vectors)):
        row = gram[j, :j]
        assert m[j] == row.max() and arg[j] == int(np.flatnonzero(row == row.max())[0]), j
    assert np.isneginf(m[0]) and arg[0] == -1


def test_dedup_order_farthest_first_ties_by_uid() -> None:
    distance = np.array([0.1, 0.5, 0.5, 0.3, 0.5, 0.3], dtype=np.float32)
    uid_hi = np.array([0, 2, 1, 7, 1, 2**63 + 1], dtype=np.uint64)
    uid_lo = np.array([0, 0, 9, 0, 3, 0], dtype=np.uint64)
    # 0.5: (1,3) < (1,9) < (2,0) -> 4, 2, 1; 0.3: hi 7 < 2**63 + 1 (unsigned) -> 3, 5
    assert dedup_order(distance, uid_hi, uid_lo).tolist() == [4, 2, 1, 3, 5, 0]


def test_dedup_order_low_half_breaks_ties_of_equal_high_half() -> None:
    distance = np.zeros(3, dtype=np.float32)
    uid_hi = np.full(3, 5, dtype=np.uint64)
    uid_lo = np.array([2**64 - 1, 0, 2**63], dtype=np.uint64)
    assert dedup_order(distance, uid_hi, uid_lo).tolist() == [1, 2, 0]


def test_auto_block_rows_bounds() -> None:
    assert auto_block_rows(10, 256) == 128
    assert auto_block_rows(8000, 4096) == 1000
    assert auto_block_rows(8000, 256) == 256
    assert auto_block_rows(10, 0) == 1
