"""Concept complexity and the per-concept budget (SPEC section 4)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.algorithms import budget, exact
from pipeline.algorithms.budget import (
    BudgetError,
    concept_budget,
    concept_probability,
    integerize,
    inter_distance,
    intra_distance,
    lower_bounds,
    water_fill,
)

PROPS = settings(max_examples=60, deadline=None)


def unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def has_number(message: str, number: int) -> bool:
    return re.search(rf"(?<![\d.]){number}(?![\d.])", message) is not None


def bisect_water_fill(ideal, lower, upper, total, iters: int = 200) -> np.ndarray:
    """Reference: bisection on lambda of sum_j clip(ideal_j + lambda, lower_j, upper_j)."""
    ideal, lower, upper = (np.asarray(a, dtype=np.float64) for a in (ideal, lower, upper))
    lo = float(np.min(lower - ideal)) - 1.0
    hi = float(np.max(upper - ideal)) + 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if np.clip(ideal + mid, lower, upper).sum() < total:
            lo = mid
        else:
            hi = mid
    return np.clip(ideal + 0.5 * (lo + hi), lower, upper)


def objective(x, ideal) -> float:
    return float(np.sum((np.asarray(x, dtype=np.float64) - ideal) ** 2))


# ---------------------------------------------------------------- d_intra, d_inter, softmax


def test_intra_distance_hand_computed() -> None:
    cluster = np.array([0, 0, 2, 0, 2])
    distance = np.array([0.1, 0.3, 0.5, 0.2, 0.25], dtype=np.float32)
    size, d_intra = intra_distance(cluster, distance, 4)
    assert size.tolist() == [3, 0, 2, 0]
    assert d_intra[0] == pytest.approx(0.2, abs=1e-7)
    assert d_intra[2] == pytest.approx(0.375, abs=1e-7)
    assert np.isnan(d_intra[1]) and np.isnan(d_intra[3])


def test_intra_distance_is_mean_of_one_minus_inner_product() -> None:
    c = unit(1.0, 0.0)
    members = np.stack([unit(1.0, 0.0), unit(0.6, 0.8), unit(0.0, 1.0)])
    distance = 1.0 - members @ c  # 0, 0.4, 1
    size, d_intra = intra_distance(np.zeros(3, dtype=np.int64), distance, 1)
    assert size.tolist() == [3]
    assert d_intra[0] == pytest.approx((0.0 + 0.4 + 1.0) / 3, abs=1e-12)


# centroids: c0=(1,0), c1=(0,1), c2=(-1,0), c3=(0.6,0.8); c4 = c0 but empty
# pairwise 1-<ci,cj>: d01=1, d02=2, d03=0.4, d12=1, d13=0.2, d23=1.6
CENTROIDS = np.array([[1, 0], [0, 1], [-1, 0], [0.6, 0.8], [1, 0]], dtype=np.float32)
NONEMPTY = np.array([True, True, True, True, False])


@pytest.mark.parametrize("l, expected", [
    (1, [0.4, 0.2, 1.0, 0.2]),
    (2, [0.7, 0.6, 1.3, 0.3]),
    (3, [3.4 / 3, 2.2 / 3, 4.6 / 3, 2.2 / 3]),
    (20, [3.4 / 3, 2.2 / 3, 4.6 / 3, 2.2 / 3]),  # clamped to k_nonempty - 1 = 3
])
def test_inter_distance_hand_computed(l: int, expected: list[float]) -> None:  # noqa: E741
    d_inter = inter_distance(CENTROIDS, NONEMPTY, l)
    np.testing.assert_allclose(d_inter[:4], expected, atol=1e-6)
    # the empty cluster (a copy of c0, at distance 0 from it) is neither scored nor a neighbour
    assert np.isnan(d_inter[4])


def test_inter_distance_single_and_no_nonempty_cluster() -> None:
    only = np.array([False, False, True, False, False])
    d_inter = inter_distance(CENTROIDS, only, 20)
    assert d_inter[2] == 1.0
    assert np.isnan(np.delete(d_inter, 2)).all()
    assert np.isnan(inter_distance(CENTROIDS, np.zeros(5, dtype=bool), 20)).all()


def whole_matrix_inter_distance(centroids: np.ndarray, nonempty: np.ndarray, l: int  # noqa: E741
                                ) -> np.ndarray:
    """SPEC §4 over the whole exact k x k matrix: the definition the blocked one must give."""
    out = np.full(len(centroids), np.nan)
    ids = np.flatnonzero(nonempty)
    if len(ids) < 2:
        out[ids] = 1.0
        return out
    dist = 1.0 - exact.dots(centroids[ids], centroids[ids])
    np.fill_diagonal(dist, np.inf)
    out[ids] = np.sort(dist, axis=1)[:, : min(l, len(ids) - 1)].mean(axis=1)
    return out


@pytest.mark.parametrize("block", [1 << 24, 7 * 300])  # one block; blocks of 7 rows
def test_inter_distance_is_the_whole_exact_matrix_s_bits(block: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocked, proposed d_inter is the bits of the whole exact matrix's: with copies of
    a centroid, neighbours within 1e-7 of each other (float32 scores misorder them), empty
    clusters, and l below, at and above the non-empty count."""
    monkeypatch.setattr(budget, "INTER_BLOCK_PRODUCTS", block)
    rng = np.random.default_rng(11)
    base = rng.standard_normal((60, 32))
    c = np.concatenate([base, base[:5],  # exact copies
                        base[5:25] + 1e-7 * rng.standard_normal((20, 32)),  # near-ties
                        base[25:45] * -1.0 + rng.standard_normal((20, 32))])
    c = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)
    rng.shuffle(c)
    nonempty = rng.random(len(c)) > 0.1
    for ll in (1, 2, 7, 20, int(nonempty.sum()) - 1, 10_000):
        got = inter_distance(c, nonempty, ll)
        want = whole_matrix_inter_distance(c, nonempty, ll)
        assert np.array_equal(got, want, equal_nan=True), ll
        assert got.tobytes() == want.tobytes()


def test_inter_distance_empty_clusters_are_not_neighbours() -> None:
    # c1 and c3 are empty; among {c0, c2, c4} the only candidates are each other
    nonempty = np.array([True, False, True, False, True])
    d_inter = inter_distance(CENTROIDS, nonempty, 1)
    # c0 and c4 coincide: distance 0 to each other; c2 is at distance 2 from both
    np.testing.assert_allclose(d_inter[[0, 2, 4]], [0.0, 2.0, 0.0], atol=1e-6)
    assert np.isnan(d_inter[[1, 3]]).all()


def test_complexity_and_softmax_hand_computed() -> None:
    d_intra = np.array([0.2, 0.5, np.nan, 0.1])
    d_inter = np.array([0.5, 0.4, np.nan, 4.0])
    complexity = d_intra * d_inter  # 0.1, 0.2, nan, 0.4
    p = concept_probability(complexity, 0.1)
    e = np.exp([1.0, 2.0, 4.0])
    np.testing.assert_allclose(p[[0, 1, 3]], e / e.sum(), rtol=1e-12)
    assert p[2] == 0.0
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    # temperature matters: tau=1 flattens the distribution
    p1 = concept_probability(complexity, 1.0)
    e1 = np.exp([0.1, 0.2, 0.4])
    np.testing.assert_allclose(p1[[0, 1, 3]], e1 / e1.sum(), rtol=1e-12)


def test_softmax_is_stable_for_huge_values() -> None:
    p = concept_probability(np.array([1000.0, 1000.0, np.nan]), 1e-3)  # exp(1e6) overflows
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0])
    p = concept_probability(np.array([5000.0, 5000.0 + 1e-3 * np.log(3.0)]), 1e-3)
    np.testing.assert_allclose(p, [0.25, 0.75], rtol=1e-9)
    p = concept_probability(np.array([-1e6, -1e6 + 1.0]), 0.5)  # exp underflows
    np.testing.assert_allclose(p, [np.exp(-2.0) / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-2.0))])
    assert np.isfinite(p).all()
    assert concept_probability(np.array([np.nan, np.nan]), 0.1).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- lower bounds


@pytest.mark.parametrize("balance, target, expected", [
    (0.0, 40, [1, 0, 1, 1]),     # m = max(1, 0) = 1
    (0.05, 40, [1, 0, 1, 1]),    # floor(0.5) = 0 -> 1
    (0.5, 40, [5, 0, 3, 5]),     # m = 5, capped by M_j
    (0.45, 40, [4, 0, 3, 4]),    # floor(4.5) = 4
    (0.475, 40, [4, 0, 3, 4]),   # floor(4.75) = 4, not rounded
    (1.0, 40, [10, 0, 3, 10]),
    (1.0, 400, [10, 0, 3, 50]),  # m = 100
])
def test_lower_bounds(balance: float, target: int, expected: list[int]) -> None:
    size = np.array([10, 0, 3, 50])
    assert lower_bounds(size, target, 4, balance).tolist() == expected


# ---------------------------------------------------------------- water fill


def test_water_fill_hand_solved_upper_bound_active() -> None:
    # x0 = 5 + lam is capped at 3; then (1 + lam) + (0.5 + lam) = 6 -> lam = 2.25
    x = water_fill(np.array([5.0, 1.0, 0.5]), np.array([1, 1, 1]), np.array([3, 10, 10]), 9.0)
    np.testing.assert_allclose(x, [3.0, 3.25, 2.75], atol=1e-12)


def test_water_fill_hand_solved_lower_bound_active() -> None:
    # x0, x1 held at their lower bound 1, x2 = 9.7 + lam = 8 -> lam = -1.7
    x = water_fill(np.array([0.1, 0.2, 9.7]), np.ones(3), np.full(3, 10.0), 10.0)
    np.testing.assert_allclose(x, [1.0, 1.0, 8.0], atol=1e-12)


def test_water_fill_unconstrained_shift_and_extremes() -> None:
    ideal = np.array([1.0, 2.0, 3.0])
    lower, upper = np.zeros(3), np.full(3, 100.0)
    np.testing.assert_allclose(water_fill(ideal, lower, upper, 9.0), [2.0, 3.0, 4.0])
    np.testing.assert_allclose(water_fill(ideal, lower, upper, 0.0), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(water_fill(ideal, lower, upper, 300.0), [100.0, 100.0, 100.0])


@st.composite
def fill_problems(draw):
    k = draw(st.integers(1, 12))
    ideal = np.array(draw(st.lists(st.floats(0, 100), min_size=k, max_size=k)))
    lower = np.array(draw(st.lists(st.integers(0, 6), min_size=k, max_size=k)), dtype=float)
    room = np.array(draw(st.lists(st.integers(0, 40), min_size=k, max_size=k)), dtype=float)
    upper = lower + room
    u = draw(st.floats(0, 1))
    total = float(lower.sum() + u * (upper.sum() - lower.sum()))
    if draw(st.booleans()):
        total = float(np.floor(total))
    return ideal, lower, upper, total


@PROPS
@given(fill_problems())
def test_water_fill_matches_bisection_and_is_optimal(problem) -> None:
    ideal, lower, upper, total = problem
    x = water_fill(ideal, lower, upper, total)
    assert x.sum() == pytest.approx(total, abs=1e-8)
    assert (x >= lower - 1e-12).all() and (x <= upper + 1e-12).all()
    np.testing.assert_allclose(x, bisect_water_fill(ideal, lower, upper, total), atol=1e-8)

    # no feasible move of (up to) one unit of mass from cluster j to cluster i lowers the
    # objective; a quadratic is convex, so this also rules out every smaller move
    base = objective(x, ideal)
    for i in range(len(x)):
        for j in range(len(x)):
            delta = min(1.0, x[j] - lower[j], upper[i] - x[i])
            if i == j or delta <= 1e-9:
                continue
            y = x.copy()
            y[i] += delta
            y[j] -= delta
            assert objective(y, ideal) >= base - 1e-7 * max(1.0, base)
            # and the first-order condition: the gradient does not favour the move
            assert (x[i] - ideal[i]) - (x[j] - ideal[j]) >= -1e-8


# ---------------------------------------------------------------- integerisation


def test_integerize_largest_fractions_ties_by_cluster_id() -> None:
    # floors 1,2,0,3 = 6; two units left: 0.75 (id 2) first, then the 0.5 tie goes to id 0
    out = integerize(np.array([1.5, 2.25, 0.75, 3.5]), np.full(4, 5), 8)
    assert out.tolist() == [2, 2, 1, 3]
    assert integerize(np.full(4, 0.5), np.full(4, 9), 2).tolist() == [1, 1, 0, 0]
    assert integerize(np.array([1.5, 0.5, 2.5]), np.full(3, 9), 5).tolist() == [2, 1, 2]


def test_integerize_skips_clusters_already_at_their_size() -> None:
    # cluster 0 has the largest fractional part but floor(2.7) = 2 = M_0: no room
    out = integerize(np.array([2.7, 1.2, 1.1]), np.array([2, 5, 5]), 5)
    assert out.tolist() == [2, 2, 1]


def test_integerize_exact_integers_unchanged() -> None:
    # float noise just below an integer must not lose the unit
    x = np.array([3.0 - 1e-12, 2.0, 1.0 + 1e-12])
    assert integerize(x, np.full(3, 9), 6).tolist() == [3, 2, 1]


# ---------------------------------------------------------------- concept_budget


def test_concept_budget_hand_solved_with_cap_and_tie() -> None:
    # ideal N*P = [4, 2, 0, 2]; cluster 1 holds only 1 -> lam = 0.5 -> [4.5, 1, 0, 2.5];
    # floors sum to 7, and the last unit goes to the 0.5 tie with the smaller id (0)
    size = np.array([10, 1, 0, 8])
    p = np.array([0.5, 0.25, 0.0, 0.25])
    assert concept_budget(size, p, 8, 4, 0.0).tolist() == [5, 1, 0, 2]
    assert concept_budget(np.array([10, 2, 0, 8]), p, 8, 4, 0.0).tolist() == [4, 2, 0, 2]


def test_concept_budget_balance_lower_bound() -> None:
    size = np.array([100, 5, 5])
    p = np.array([0.9, 0.05, 0.05])
    assert concept_budget(size, p, 20, 3, 0.0).tolist() == [18, 1, 1]
    # balance 0.6: m = floor(0.6 * 20 / 3) = 4, so lb = [4, 4, 4] and x0 = 20 - 8
    assert concept_budget(size, p, 20, 3, 0.6).tolist() == [12, 4, 4]


def test_concept_budget_boundaries() -> None:
    size = np.array([3, 0, 4, 2])
    p = np.array([0.7, 0.0, 0.2, 0.1])
    assert concept_budget(size, p, 9, 4, 0.0).tolist() == [3, 0, 4, 2]   # N = M: keep all
    assert concept_budget(size, p, 3, 4, 0.0).tolist() == [1, 0, 1, 1]   # N = sum lb


def test_concept_budget_target_above_available_names_numbers() -> None:
    with pytest.raises(BudgetError) as err:
        concept_budget(np.array([3, 4]), np.array([0.5, 0.5]), 8, 2, 0.0)
    msg = str(err.value)
    assert has_number(msg, 8) and has_number(msg, 7)


def test_concept_budget_lower_bounds_above_target_names_numbers() -> None:
    size = np.array([5, 0, 5, 5])
    with pytest.raises(BudgetError) as err:
        concept_budget(size, np.array([0.4, 0.0, 0.3, 0.3]), 2, 4, 0.0)
    msg = str(err.value)
    assert has_number(msg, 3) and has_number(msg, 2)  # sum lb = 3 > N = 2


@st.composite
def budget_problems(draw):
    k = draw(st.integers(1, 12))
    size = np.array(draw(st.lists(st.integers(0, 40), min_size=k, max_size=k)), dtype=np.int64)
    if size.sum() == 0:
        size[draw(st.integers(0, k - 1))] = draw(st.integers(1, 40))
    complexity = np.array(draw(st.lists(st.floats(0, 2), min_size=k, max_size=k)))
    complexity[size == 0] = np.nan
    tau = draw(st.sampled_from([0.01, 0.1, 1.0]))
    balance = draw(st.sampled_from([0.0, 0.25, 1.0]))
    target = draw(st.integers(1, int(size.sum())))
    return size, concept_probability(complexity, tau), target, k, balance


@PROPS
@given(budget_problems())
def test_concept_budget_properties(problem) -> None:
    size, p, target, k, balance = problem
    lb = lower_bounds(size, target, k, balance)
    if lb.sum() > target:
        with pytest.raises(BudgetError):
            concept_budget(size, p, target, k, balance)
        return
    x = concept_budget(size, p, target, k, balance)
    assert x.dtype.kind == "i"
    assert int(x.sum()) == target
    assert (lb <= x).all() and (x <= size).all()
    assert np.array_equal(x, concept_budget(size.copy(), p.copy(), target, k, balance))

    # within one unit of the exact continuous optimum
    ideal = target * p
    ref = bisect_water_fill(ideal, lb, size, float(target))
    assert (np.abs(x - ref) < 1 + 1e-7).all()

    # and no move of one unit from one cluster to another lowers ||x - N P||^2
    base = objective(x, ideal)
    for i in range(k):
        for j in range(k):
            if i != j and x[i] < size[i] and x[j] > lb[j]:
                y = x.astype(np.float64)
                y[i] += 1
                y[j] -= 1
                assert objective(y, ideal) >= base - 1e-6 * max(1.0, base)
