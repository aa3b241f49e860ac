"""SemDeDup within one cluster (SPEC section 3) against a brute-force O(n^2) reference."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.algorithms import exact, proposers, semdedup
from pipeline.algorithms.semdedup import (
    auto_block_rows,
    dedup_cluster,
    dedup_order,
    first_identical,
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


def assert_exact_brute_force(vectors: np.ndarray, m: np.ndarray, arg: np.ndarray) -> None:
    """Every m_j and its member are the exact brute force's: the highest exact inner product
    with an earlier row, the earliest row among equal values (none for the first row)."""
    gram = exact.dots(vectors, vectors)  # exact values, the decisive ones
    for j in range(1, len(vectors)):
        row = gram[j, :j]
        assert m[j] == row.max() and arg[j] == int(np.flatnonzero(row == row.max())[0]), j
    assert np.isneginf(m[0]) and arg[0] == -1


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


@pytest.mark.parametrize("heavy", [1, 3, 10**9])  # copies decided from their first: all,
# those of members with 3 copies or more, none
@pytest.mark.parametrize("block_rows", [1, 3, 7, 64])
@pytest.mark.parametrize("copy_bytes", [0, 1 << 30])  # copies' columns masked, or left out
def test_copies_barred_as_columns_change_no_bit(block_rows: int, heavy: int, copy_bytes: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit-identical copies are barred as columns (never the earliest best: masked, or left
    out of the products where the eligible rows fit ``ELIGIBLE_COPY_BYTES``), and are rows
    or, from ``HEAVY_COPIES`` of one member, decided from that member: every m_j and its
    member are the exact brute force's, on rows where copies, copies of copies and near
    copies of them are interleaved."""
    monkeypatch.setattr(semdedup, "HEAVY_COPIES", heavy)
    monkeypatch.setattr(proposers, "ELIGIBLE_COPY_BYTES", copy_bytes)
    rng = np.random.default_rng(40 + block_rows)
    rows = list(clustered_vectors(90, 16, rng))
    for _ in range(60):  # copies of any earlier row (copies included), anywhere after it
        at = int(rng.integers(1, len(rows) + 1))
        source = rows[int(rng.integers(0, at))]
        near = rng.random() < 0.3
        rows.insert(at, normalise((source + 1e-4 * rng.standard_normal(16))[None])[0]
                    if near else source.copy())
    vectors = np.array(rows, dtype=np.float32)
    m, arg = max_earlier_similarity(vectors, block_rows)
    assert_exact_brute_force(vectors, m, arg)


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


@pytest.mark.parametrize("pair_batch", [1, semdedup.PAIR_BATCH])
@pytest.mark.parametrize("heavy", [2, 10**9])
@pytest.mark.parametrize("seed", range(4))
def test_many_copies_of_a_member_among_near_ties(seed: int, heavy: int, pair_batch: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Members with many copies, the first row among them, and near copies of them within
    1e-7 (float32 scores misorder those) placed before and between the copies: whether the
    copies are rows or decided from their member, and whether the candidates are decided
    after every block or all at once, every m_j and its member are the exact brute force's,
    ties to the earliest member."""
    monkeypatch.setattr(semdedup, "HEAVY_COPIES", heavy)
    monkeypatch.setattr(semdedup, "PAIR_BATCH", pair_batch)
    rng = np.random.default_rng(seed)
    rows = list(clustered_vectors(40, 16, rng))
    for source in (0, 5, 17):
        for _ in range(12):
            at = int(rng.integers(source + 1, len(rows) + 1))
            tiny = rng.random() < 0.4
            rows.insert(at, normalise((rows[source] + 1e-7 * rng.standard_normal(16))[None])[0]
                        if tiny else rows[source].copy())
    vectors = np.array(rows, dtype=np.float32)
    m, arg = max_earlier_similarity(vectors, 5)
    assert_exact_brute_force(vectors, m, arg)


def basis_like(d: int, *tiny: int) -> np.ndarray:
    """e_0, with 1e-30 at the given places: its exact inner product with e_0 is 1, as e_0's
    own, but its bits differ (a distinct member at an exact tie)."""
    v = np.zeros(d, dtype=np.float32)
    v[0] = 1.0
    for at in tiny:
        v[at] = 1e-30
    return v


@pytest.mark.parametrize("heavy", [2, 10**9])
def test_copies_at_exact_ties_take_the_earliest_member(heavy: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A member f = e_0 with copies, distinct members at exactly f's own value 1 before f
    and between its copies: each copy's member is the earliest of the equal ones: the one
    before f where there is one, else f itself, never a later one."""
    monkeypatch.setattr(semdedup, "HEAVY_COPIES", heavy)
    d = 8
    z = normalise(np.arange(1.0, d + 1)[None])[0].astype(np.float32)
    f = basis_like(d)
    for before in (True, False):
        rows = [z, *([basis_like(d, 1)] if before else []), f]
        for i in range(6):
            rows += [f.copy(), basis_like(d, 2 + i % 5), f.copy()]
        vectors = np.array(rows, dtype=np.float32)
        m, arg = max_earlier_similarity(vectors, 4)
        f_at = 2 if before else 1
        copies = [j for j in range(f_at + 1, len(rows)) if vectors[j].tobytes() == f.tobytes()]
        assert len(copies) == 12
        earliest = 1  # the member before f (before), else f itself: either is row 1
        assert vectors[earliest].tobytes() != f.tobytes() if before else \
            vectors[earliest].tobytes() == f.tobytes()
        assert (m[copies] == 1.0).all() and (arg[copies] == earliest).all(), arg[copies]


@pytest.mark.parametrize("seed", range(3))
def test_copies_after_members_closer_than_float32_can_order(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the copies of f lie distinct members f (1 + t) + 1e-3 g, g random and
    orthogonal to f, t within a few 1e-8: their exact values with f straddle f's own, 1,
    closer than float32 scores (rounded independently, as the vectors differ) can order.
    The copies' members are still the exact brute force's: the float32 column only
    proposes, and the window keeps every member it may have misordered."""
    monkeypatch.setattr(semdedup, "HEAVY_COPIES", 2)
    rng = np.random.default_rng(seed)
    d = 512
    f = normalise(rng.standard_normal((1, d)))[0]
    rows = [normalise(rng.standard_normal((1, d)))[0].astype(np.float32), f.astype(np.float32)]
    for _ in range(100):
        g = rng.standard_normal(d)
        g = normalise((g - (g @ f) * f)[None])[0]  # a direction orthogonal to f
        t = 2e-8 * rng.standard_normal()
        rows += [((1 + t) * f + 1e-3 * g).astype(np.float32), rows[1].copy()]
    vectors = np.array(rows, dtype=np.float32)
    m, arg = max_earlier_similarity(vectors, 8)
    assert_exact_brute_force(vectors, m, arg)


def test_many_copies_of_a_member_are_not_rows_of_the_blocks() -> None:
    """From ``HEAVY_COPIES`` copies of one member on, its copies are decided from it: the
    block proposer sees the other rows only (30,000 copies of one member among 2,000 others
    took 4.9 s as rows of the blocks, quadratic in the copies)."""
    from pipeline.algorithms.proposers import BlasProposer

    seen: list[int] = []

    class Spy(BlasProposer):
        def earlier(self, vectors, *args):  # noqa: ANN001, ANN002, ANN202
            seen.append(len(vectors))
            return super().earlier(vectors, *args)

    rng = np.random.default_rng(3)
    base = clustered_vectors(50, 16, rng)
    rows = [*base, *[base[3]] * semdedup.HEAVY_COPIES, *[base[7]] * 5]
    order = np.r_[np.arange(4), 4 + rng.permutation(len(rows) - 4)]  # base[3] stays first
    vectors = np.array(rows, dtype=np.float32)[order]
    m, arg = max_earlier_similarity(vectors, 16, Spy())
    assert seen == [len(rows) - semdedup.HEAVY_COPIES]  # base[7]'s 5 copies stay rows
    assert_exact_brute_force(vectors, m, arg)


def test_first_identical_is_bitwise_even_when_hashes_collide(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row's first bit-identical row, with copies, rows that share their first four
    values only, -0.0 against 0.0 (equal numbers, other bits), and, with every hash made to
    collide, the same answer from the exact fallback."""
    rng = np.random.default_rng(5)
    base = clustered_vectors(30, 8, rng)
    twin = base[4].copy()
    twin[7] = np.nextafter(twin[7], np.float32(2))  # the first four values shared only
    signed = np.zeros(8, dtype=np.float32)
    signed[6] = -0.0
    rows = np.array([*base, twin, base[4], np.zeros(8, np.float32), signed, base[4], twin,
                     np.zeros(8, np.float32)], dtype=np.float32)
    rows = rows[np.r_[np.arange(30), 30 + rng.permutation(len(rows) - 30)]]
    want = np.array([next(i for i in range(j + 1) if rows[i].tobytes() == rows[j].tobytes())
                     for j in range(len(rows))])
    assert (first_identical(rows) == want).all()
    assert (want != np.arange(len(rows))).sum() == 4  # base[4] twice, twin, a zero row
    monkeypatch.setattr(semdedup, "_row_hashes", lambda words: np.zeros(len(words), np.uint64))
    assert (first_identical(rows) == want).all()


def test_candidates_are_decided_in_batches_of_whole_blocks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Near-ties in every block: with PAIR_BATCH = 1 the candidates are decided after each
    block that has some (their memory bounded by a block's), the same pairs as in one batch,
    and the result is the one-batch result, the brute force's."""
    rng = np.random.default_rng(11)
    base = clustered_vectors(12, 16, rng)
    rows = [r for v in base for r in (v, normalise((v + 1e-7 * rng.standard_normal(16))[None])[0])]
    vectors = np.array(rows, dtype=np.float32)
    batches: list[int] = []
    dot_pairs = exact.dot_pairs

    def recorded(x, base, rows, cols):  # noqa: ANN001, ANN202
        batches.append(len(rows))
        return dot_pairs(x, base, rows, cols)

    monkeypatch.setattr(exact, "dot_pairs", recorded)
    whole_m, whole_arg = max_earlier_similarity(vectors, 4)
    assert len(batches) == 1
    monkeypatch.setattr(semdedup, "PAIR_BATCH", 1)
    m, arg = max_earlier_similarity(vectors, 4)
    assert len(batches) > 4 and sum(batches[1:]) == batches[0]
    assert np.array_equal(m, whole_m) and np.array_equal(arg, whole_arg)
    assert_exact_brute_force(vectors, m, arg)
