"""Exact decisions (SPEC §2, §3): fast kernels propose, fixed-order float64 decides.

The values that decide do not depend on the backend (faiss, BLAS, torch), the thread count or
how work is cut into pieces; near-ties are re-decided with SPEC's tie rules, so a proposer
that rounds differently (or is wrong by up to the proven error bound) changes nothing.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import faiss
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pipeline.algorithms import exact, kmeans, proposers
from pipeline.algorithms.kmeans import Assigner, cluster_sums, fit_spherical, nearest
from pipeline.algorithms.proposers import FaissProposer, blas_earlier
from pipeline.algorithms.semdedup import dedup_cluster, max_earlier_similarity
from pipeline.io.buffers import thread_scratch


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def backends() -> list[proposers.Proposer]:
    out: list[proposers.Proposer] = [FaissProposer(), proposers.BlasProposer()]
    with contextlib.suppress(proposers.BackendError):  # torch is installed in CI
        out.append(proposers.TorchProposer())
    return out


def true_dot(a: np.ndarray, b: np.ndarray) -> Fraction:
    """The exact rational inner product of two float32 rows."""
    return sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a, b, strict=True)),
               Fraction(0))


# ---------------------------------------------------------------- the fixed-order sum


def pairwise_reference(values: list[float]) -> float:
    """The documented order in plain Python floats: fewer than 8 values added one by one to
    0; up to 128 in 8 round-robin sums combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), the
    rest past the last multiple of 8 added one by one; longer rows split after n/2 rounded
    down to a multiple of 8."""
    n = len(values)
    if n < 8:
        total = 0.0
        for v in values:
            total += v
        return total
    if n <= 128:
        r = list(values[:8])
        full = n - n % 8
        for i in range(8, full, 8):
            for j in range(8):
                r[j] += values[i + j]
        total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for v in values[full:]:
            total += v
        return total
    half = n // 2 - (n // 2) % 8
    return pairwise_reference(values[:half]) + pairwise_reference(values[half:])


@pytest.mark.parametrize("d", [1, 2, 3, 5, 7, 8, 9, 64, 129, 511, 512, 768, 1030])
@pytest.mark.parametrize("fast", [True, False], ids=["numpy-reduce", "spelled-out"])
def test_dot_rows_is_the_documented_order(d: int, fast: bool,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit for bit the documented order, whether numpy's reduction computes it (checked) or,
    where that check fails, the order spelled out column by column."""
    if not fast:
        monkeypatch.setattr(exact, "_reduce_is_pairwise", lambda d: False)
    else:
        assert exact._reduce_is_pairwise(d)  # this numpy sums in the documented order
    rng = np.random.default_rng(d)
    a = rng.standard_normal((4, d)).astype(np.float32)
    b = (rng.standard_normal((4, d)) * 10.0 ** rng.integers(-6, 6, (4, d))).astype(np.float32)
    got = exact.dot_rows(a, b)
    for i in range(4):
        want = pairwise_reference([float(x) * float(y) for x, y in zip(a[i], b[i], strict=True)])
        assert got[i] == want  # bit for bit
    # every pair alike, whichever function computes it
    assert np.array_equal(exact.dots(a, b)[np.arange(4), np.arange(4)], got)


def test_a_numpy_summing_in_another_order_is_caught(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The check before numpy's reduction is trusted: a reduction in any other order (here
    the sequential one) fails it, and the documented order is computed instead."""
    def sequential(p, axis=-1, out=None):  # noqa: ANN001, ANN202
        sums = np.cumsum(p, axis=axis)[..., -1]
        if out is not None:
            out[...] = sums
        return sums if out is None else out

    monkeypatch.setattr(exact, "_CHECKED", {})
    monkeypatch.setattr(exact, "_REDUCE", sequential)
    assert not exact._reduce_is_pairwise(512)
    assert "slower" in caplog.text and "512" in caplog.text  # the speed loss is not silent
    rows = np.random.default_rng(0).standard_normal((3, 512)) * 1e8
    rows[:, ::7] *= 1e-9
    got = exact.row_sums(rows)
    assert [float(v) for v in got] == [pairwise_reference(r.tolist()) for r in rows]
    assert not np.array_equal(got, sequential(rows))  # the orders differ on these rows


def test_dot_rows_has_the_same_bits_on_any_thread_count_and_piece_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    a = unit(rng.standard_normal((40000, 96)))
    b = unit(rng.standard_normal((40000, 96)))
    monkeypatch.setattr(exact, "threads", lambda: 1)
    one = exact.dot_rows(a, b)
    monkeypatch.setattr(exact, "threads", lambda: 4)
    monkeypatch.setattr(exact, "_PIECE_ELEMENTS", 999)
    assert np.array_equal(exact.dot_rows(a, b), one)
    assert np.array_equal(exact.dot_rows(a[123:456], b[123:456]), one[123:456])
    at, to = rng.integers(0, len(a), 30000), rng.integers(0, len(b), 30000)  # gathered rows
    assert np.array_equal(exact.dot_rows(a, b, at, to), exact.dot_rows(a[at], b[to]))
    for wrong in (-1, len(a)):  # rows it cannot have are an error, not a clipped row
        with pytest.raises(IndexError, match="rows outside"):
            exact.dot_rows(a, b, np.r_[at[:5], wrong], to[:6])
        with pytest.raises(IndexError, match="rows outside"):
            exact.dot_rows(a, b, at[:6], np.r_[wrong, to[:5]])


def test_dot_rows_reuses_its_threads_buffers_and_no_other_threads() -> None:
    """Every call on a thread computes in that thread's scratch (no fresh memory per call),
    two threads never share one, and a row with itself (norms: one side widened and
    squared) gives the bits of two separate copies."""
    rng = np.random.default_rng(5)
    pairs = [(unit(rng.standard_normal((700, 64))), unit(rng.standard_normal((700, 64))))
             for _ in range(2)]
    barrier = threading.Barrier(2)

    def run(pair: tuple[np.ndarray, np.ndarray]) -> tuple[bool, int]:
        a, b = pair
        first = exact.dot_rows(a, b)
        held = thread_scratch("dot_rows x", 1, np.float64)  # the buffer it computed in
        barrier.wait(timeout=30)  # both threads hold their scratch at once
        again = exact.dot_rows(a[:300], b[:300])
        squares = exact.dot_rows(a, a)
        same = thread_scratch("dot_rows x", 1, np.float64) is held \
            and np.array_equal(again, first[:300]) \
            and np.array_equal(squares, exact.dot_rows(a, a.copy())) \
            and np.array_equal(first, [pairwise_reference((x.astype(np.float64) * y).tolist())
                                       for x, y in zip(a, b, strict=True)])
        return same, id(held)

    with ThreadPoolExecutor(2) as pool:
        (ok_a, buf_a), (ok_b, buf_b) = pool.map(run, pairs)
    assert ok_a and ok_b
    assert buf_a != buf_b


def test_the_window_bounds_every_float32_kernel() -> None:
    """|fast - exact| <= the proven bound (window / (2 SLACK)) for numpy's BLAS, faiss and
    torch, on rows built for cancellation (large terms of both signs summing to little)."""
    rng = np.random.default_rng(1)
    for d in (16, 64, 512):
        x = rng.standard_normal((300, d))
        x[:, : d // 2] *= 1e3  # heavy components cancel: a hard case for float32 sums
        x, c = unit(x), unit(np.c_[x[:, : d // 2] * -1, rng.standard_normal((300, d - d // 2))])
        bound = exact.window(d) / (2 * exact.SLACK)
        v = exact.dots(x, c)
        errors = [np.abs((x @ c.T) - v).max()]
        index = faiss.IndexFlatIP(d)
        index.add(c)
        scores, ids = index.search(x, 5)
        errors.append(np.abs(scores - np.take_along_axis(v, ids, axis=1)).max())
        for p in backends()[1:]:
            s, i = p.index(c).top(x, 5)
            errors.append(np.abs(s - np.take_along_axis(v, i, axis=1)).max())
        assert max(errors) <= bound, (d, errors, bound)
        # and the tree itself is within a float64 bound of the true value
        for i in range(3):
            assert abs(Fraction(v[i, i]) - true_dot(x[i], c[i])) <= exact.gamma(d, exact.U64)


def test_above_compares_with_the_decimal_exactly() -> None:
    t = 1 - Fraction("0.07")  # 0.93, not the double nearest to it
    near = float(t)
    below, over = np.nextafter(near, 0), np.nextafter(near, 1)
    got = exact.above(np.array([below, near, over]), t)
    assert got.tolist() == [False, Fraction(near) > t, True]
    assert exact.above(np.array([0.5, np.nextafter(0.5, 1)]), Fraction(1, 2)).tolist() == \
        [False, True]


# ---------------------------------------------------------------- k-means near-ties


def two_close_centroids(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Queries and centroids where each query's two nearest centroids differ by less than
    1e-7 in inner product, either way: c1 is c0 with two coordinates swapped that differ by
    a few ulps, so <x, c1> - <x, c0> = (x_0 - x_1)(c0_1 - c0_0)."""
    c0 = unit(rng.standard_normal((1, d)))[0]
    c0[1] = np.nextafter(np.nextafter(np.nextafter(c0[0], 1), 1), 1)  # 3 ulps above c0[0]
    c1 = c0.copy()
    c1[[0, 1]] = c0[[1, 0]]
    far = unit(rng.standard_normal((6, d)))
    x = unit(c0 + 0.05 * rng.standard_normal((400, d)))
    return x, np.concatenate([far[:3], c0[None], far[3:], c1[None]]).astype(np.float32)


@pytest.mark.parametrize("proposer", backends(), ids=lambda p: p.name)
def test_centroids_equidistant_within_1e7_are_decided_exactly(proposer) -> None:  # noqa: ANN001
    rng = np.random.default_rng(7)
    x, c = two_close_centroids(rng, 48)
    ids, dist = Assigner(c, proposer).assign(x)
    exact_values = [[true_dot(row, col) for col in c] for row in x[:60]]
    wrong_fast = 0
    fast = x[:60] @ c.T
    for i, values in enumerate(exact_values):
        top = max(values)
        assert ids[i] == values.index(top), i  # the exact nearest, the lower id on a tie
        assert dist[i] == np.float32(1.0 - exact.dot_rows(x[i : i + 1], c[ids[i]][None])[0])
        wrong_fast += int(fast[i].argmax() != ids[i])
    assert {int(i) for i in ids} <= {3, 7} and len(set(ids.tolist())) == 2
    # the case is a real near-tie: float32 alone gets some of them wrong on this machine,
    # or at least the margins are inside the window
    margin = np.sort(fast, axis=1)[:, -1] - np.sort(fast, axis=1)[:, -2]
    assert wrong_fast or (margin < exact.window(48)).all()


@pytest.mark.parametrize("proposer", backends(), ids=lambda p: p.name)
def test_identical_centroids_go_to_the_lower_id(proposer) -> None:  # noqa: ANN001
    rng = np.random.default_rng(3)
    c = unit(rng.standard_normal((9, 32)))
    c[7] = c[2]  # a bit-identical pair: every query ties exactly between 2 and 7
    c[5] = c[2]
    x = unit(c[2] + 0.05 * rng.standard_normal((300, 32)))
    ids, _ = Assigner(c, proposer).assign(x)
    assert (ids == 2).all()
    # more identical centroids than proposals: every centroid is read for the decision
    c[[0, 1, 3, 4, 6, 8]] = c[2]
    assert (Assigner(c, proposer).assign(x)[0] == 0).all()


# ---------------------------------------------------------------- semdedup near the line


@pytest.mark.parametrize("proposer", backends(), ids=lambda p: p.name)
def test_a_similarity_within_1e7_of_the_line_is_decided_exactly(proposer) -> None:  # noqa: ANN001
    """For members whose highest similarity lies within 1e-7 of 1 - eps, removal follows the
    exact value, on every backend."""
    rng = np.random.default_rng(11)
    d = 64
    for trial in range(20):
        e = unit(rng.standard_normal((2, d)))
        e[1] = unit(e[:1] + 0.4 * unit(rng.standard_normal((1, d))))[0]
        v = true_dot(e[0], e[1])
        offset = Fraction(int(rng.integers(-99, 100)), 10**9)  # within 1e-7 of the line
        eps = float(round(1 - v + offset, 12))
        removed, _, sim = dedup_cluster(e, eps, 8, proposer)
        assert removed[1] == (v > 1 - Fraction(repr(eps))), trial
        assert sim[1] == np.float32(float(v))


class NoisyIndex:
    """A proposer's index whose scores are the exact values plus noise up to ``noise``:
    a kernel as wrong as the proven bound allows."""

    def __init__(self, base: np.ndarray, noise: float, rng: np.random.Generator) -> None:
        self.base, self.noise, self.rng = base, noise, rng

    def top(self, queries: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        s = exact.dots(queries, self.base)
        s += self.rng.uniform(-self.noise, self.noise, s.shape)
        ids = np.argsort(-s, axis=1, kind="stable")[:, :r]
        return np.take_along_axis(s, ids, axis=1).astype(np.float32), ids


class NoisyProposer:
    name, gpu = "noisy", False

    def __init__(self, noise: float, seed: int) -> None:
        self.noise, self.rng = noise, np.random.default_rng(seed)

    def index(self, base: np.ndarray) -> NoisyIndex:
        return NoisyIndex(base, self.noise, self.rng)

    def earlier(self, vectors, block_rows, window, eligible):  # noqa: ANN001, ANN201
        def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            s = exact.dots(a, b)
            return (s + self.rng.uniform(-self.noise, self.noise, s.shape)).astype(np.float32)
        return blas_earlier(vectors, block_rows, window, eligible, product)


def crowded(seed: int, n: int = 600, d: int = 16) -> np.ndarray:
    """Rows in tight bunches: many runner-ups within a few 1e-7 of the best."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((12, d)))
    return unit(centres[rng.integers(0, 12, n)] + 3e-4 * rng.standard_normal((n, d)))


def test_a_proposer_wrong_by_the_bound_changes_no_decision(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    x = crowded(0)
    d = x.shape[1]
    bound = exact.window(d) / (2 * exact.SLACK)
    centroids = unit(x[:40] + 1e-6 * np.random.default_rng(1).standard_normal((40, d)))
    want_ids, want_sims = nearest(x, centroids, FaissProposer().index(centroids))
    want_m, want_arg = max_earlier_similarity(x, 64, FaissProposer())
    for seed in range(3):
        noisy = NoisyProposer(bound, seed)
        ids, sims = nearest(x, centroids, noisy.index(centroids))
        assert np.array_equal(ids, want_ids) and np.array_equal(sims, want_sims)
        m, arg = max_earlier_similarity(x, 64, noisy)
        assert np.array_equal(m, want_m) and np.array_equal(arg, want_arg)
    # without the window the same noise changes decisions: the re-check is what holds them
    monkeypatch.setattr(exact, "window", lambda d: 0.0)
    noisy = NoisyProposer(bound, 0)
    ids, _ = nearest(x, centroids, noisy.index(centroids))
    _, arg = max_earlier_similarity(x, 64, noisy)
    assert not np.array_equal(ids, want_ids) or not np.array_equal(arg, want_arg)


# ---------------------------------------------------------------- whole fits


def test_fit_is_the_same_bytes_on_every_backend_and_thread_count() -> None:
    x = np.concatenate([crowded(5, 1500, 24), unit(np.random.default_rng(6).standard_normal(
        (1500, 24)))])
    got = {}
    for p in backends():
        for threads in (1, 2, 3):
            with threadpool_limits(threads):
                before = faiss.omp_get_max_threads()
                faiss.omp_set_num_threads(threads)
                try:
                    c = fit_spherical(x, 30, 8, seed=4, proposer=p)
                    ids, dist = Assigner(c, p).assign(x)
                    m, arg = max_earlier_similarity(x[ids == ids[0]], 7, p)
                finally:
                    faiss.omp_set_num_threads(before)
            got[(p.name, threads)] = (c.tobytes(), ids.tobytes(), dist.tobytes(), m.tobytes(),
                                      arg.tobytes())
    assert len(set(got.values())) == 1, list(got)


def lloyd(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """``fit_spherical`` as SPEC §2 states it: every row searched and every sum added again
    in every iteration."""
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), size=k, replace=False)]
    for it in range(niter):
        cluster, _ = nearest(x, centroids, proposers.BlasProposer().index(centroids), False)
        sums, counts = cluster_sums(x, cluster, k)
        means = sums / np.maximum(counts, 1)[:, None]
        kmeans.split_empty(means, counts, np.random.default_rng([seed, it]))
        centroids = kmeans.unit_centroids(means)
    return centroids


def test_a_fit_that_spares_settled_rows_is_the_same_bytes_as_one_that_searches_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows whose bounds clear (``ClusterBounds``) are not searched again and clusters that
    kept their members are not summed again, and the fit is the bytes of one that searches
    and sums everything in every iteration: on every backend, and on a proposer whose
    scores are as wrong as the proven bound allows."""
    x = np.concatenate([crowded(7, 2000, 24), unit(np.random.default_rng(8).standard_normal(
        (2000, 24)))])
    searched: list[int] = []
    real = kmeans.nearest

    def counting(part: np.ndarray, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        searched.append(len(part))
        return real(part, *args, **kwargs)

    want = lloyd(x, 40, 25, seed=3)
    monkeypatch.setattr(kmeans, "nearest", counting)
    summed: list[int] = []  # clusters summed per call
    real_sums = kmeans.cluster_sums

    def counting_sums(x, cluster, k, only=None):  # noqa: ANN001, ANN202
        summed.append(k if only is None else len(only))
        return real_sums(x, cluster, k, only)

    monkeypatch.setattr(kmeans, "cluster_sums", counting_sums)
    noisy = NoisyProposer(exact.window(x.shape[1]) / (2 * exact.SLACK), 0)
    for p in [*backends(), noisy]:
        searched.clear()
        summed.clear()
        got = fit_spherical(x, 40, 25, seed=3, proposer=p)
        assert got.tobytes() == want.tobytes(), p.name
        assert sum(searched) < 0.7 * 25 * len(x), (p.name, sum(searched))
        assert sum(summed) < 0.7 * 25 * 40, (p.name, sum(summed))
    # more centroids than distinct rows: clusters empty in every iteration, and are split
    few = np.repeat(unit(np.random.default_rng(9).standard_normal((30, 8))), 20, axis=0)
    for p in [*backends(), NoisyProposer(exact.window(8) / (2 * exact.SLACK), 1)]:
        assert fit_spherical(few, 40, 12, seed=2, proposer=p).tobytes() == \
            lloyd(few, 40, 12, seed=2).tobytes(), p.name


@pytest.mark.parametrize(("threads", "piece"), [(1, 1024), (3, 1024), (1, 37), (3, 37)])
def test_cluster_sums_add_members_in_row_order(threads: int, piece: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequential sums in row order, whether one thread adds every cluster or three share
    them, and whether a big cluster's members are added in one piece or in many (each piece
    continuing the running sum)."""
    monkeypatch.setattr(exact, "threads", lambda: threads)
    monkeypatch.setattr(kmeans, "_PARALLEL_SUM_ROWS", 1000)
    monkeypatch.setattr(kmeans, "SUM_PIECE_ROWS", piece)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5000, 8)) * 10.0 ** rng.integers(-8, 8, (5000, 1))).astype(
        np.float32)
    cluster = rng.integers(0, 7, 5000)
    cluster[:40] = 2  # sizes unequal: the threads' shares end at different ranks
    sums, counts = cluster_sums(x, cluster, 9)
    for c in range(9):
        want = np.zeros(8)
        for row in x[cluster == c].astype(np.float64):
            want = want + row  # one by one, in row order
        assert np.array_equal(sums[c], want)
    assert counts.tolist() == np.bincount(cluster, minlength=9).tolist()


def test_block_products_use_one_buffer_per_thread() -> None:
    """The block products land in a buffer reused by the thread that made them (no fresh
    memory per block) and never in another thread's: two threads hold theirs at once."""
    rng = np.random.default_rng(4)
    pairs = [(rng.standard_normal((6, 8), dtype=np.float32),
              rng.standard_normal((9, 8), dtype=np.float32)) for _ in range(2)]
    barrier = threading.Barrier(2)

    def product(pair: tuple[np.ndarray, np.ndarray]) -> bool:
        rows, cols = pair
        got = proposers._matmul(rows, cols)
        barrier.wait(timeout=30)  # both threads' products exist at once
        ok = np.array_equal(got, rows @ cols.T)
        again = proposers._matmul(cols, rows)  # the next block: the same buffer
        return ok and np.shares_memory(got, again) and np.array_equal(again, cols @ rows.T)

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(product, pairs))


def test_the_blas_index_on_several_threads_and_blocks_decides_as_on_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Row ranges on several threads, in other block shapes, round the products otherwise;
    the rows they are sure of keep their proposal and every decision stays the exact one."""
    x = crowded(3, n=3000)
    centroids = unit(x[:60] + 1e-6 * np.random.default_rng(2).standard_normal((60, 16)))
    index = proposers.BlasProposer().index(centroids)
    win = exact.window(16)
    v = exact.dots(x, centroids)
    want = (v == v.max(axis=1, keepdims=True)).argmax(axis=1)  # exact, the lowest id
    monkeypatch.setattr(exact, "threads", lambda: 1)
    best, rows, _ = index.near(x, win)
    ids, _ = nearest(x, centroids, index)
    monkeypatch.setattr(exact, "threads", lambda: 3)
    monkeypatch.setattr(proposers, "NEAR_THREAD_ROWS", 100)
    monkeypatch.setattr(proposers, "NEAR_BLOCK_ELEMENTS", 60 * 7)  # blocks of 7 rows
    monkeypatch.setattr(proposers, "NEAR_MIN_ROWS", 7)
    assert proposers.near_block_rows(60) == 7
    best3, rows3, _ = index.near(x, win)
    ids3, _ = nearest(x, centroids, index)
    assert len(np.unique(rows)) > 100  # crowded: plenty of rows decided exactly
    sure = np.setdiff1d(np.arange(len(x)), np.union1d(rows, rows3))
    np.testing.assert_array_equal(best3[sure], best[sure])
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_array_equal(ids3, want)


def test_blas_blocks_hold_enough_queries_against_many_centroids() -> None:
    """A block is the cache's worth of products for few centroids, at least NEAR_MIN_ROWS
    queries against thousands (thin products ran at half BLAS's speed), and never more than
    NEAR_MAX_ELEMENTS products however many centroids there are."""
    assert proposers.near_block_rows(100) == proposers.NEAR_BLOCK_ELEMENTS // 100
    assert proposers.near_block_rows(500) >= proposers.NEAR_MIN_ROWS
    assert proposers.near_block_rows(5000) == proposers.NEAR_MIN_ROWS
    huge = 10 * proposers.NEAR_MAX_ELEMENTS // proposers.NEAR_MIN_ROWS
    assert 1 <= proposers.near_block_rows(huge) * huge <= proposers.NEAR_MAX_ELEMENTS
    assert proposers.near_block_rows(0) >= 1


def test_auto_proposes_on_blas_on_a_cpu_and_blas_refuses_a_gpu() -> None:
    assert proposers.choose("auto", "cpu") == ("blas", False)
    if not proposers.torch_gpus() and not proposers.faiss_gpus():
        assert proposers.choose("auto", "auto") == ("blas", False)
    assert proposers.choose("faiss", "cpu") == ("faiss", False)
    assert proposers.choose("blas", "auto") == ("blas", False)
    assert isinstance(proposers.make_proposer("blas", False), proposers.BlasProposer)
    with pytest.raises(proposers.BackendError, match="kmeans.backend=blas runs on the CPU"):
        proposers.choose("blas", "gpu")


def test_rows_taken_from_a_widened_copy_give_the_same_values() -> None:
    """``dot_rows`` on a float64 copy of float32 rows (the assignment's centroids, widened
    once) gives the bits of the float32 rows themselves."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 40), dtype=np.float32)
    c = rng.standard_normal((17, 40), dtype=np.float32)
    rows = rng.integers(0, 17, 3000)
    want = exact.dot_rows(x, c, b_rows=rows)
    assert np.array_equal(exact.dot_rows(x, c.astype(np.float64), b_rows=rows), want)
    assert np.array_equal(Assigner(c, proposers.BlasProposer()).assign(x)[1],
                          exact.round_once(1.0 - exact.dot_rows(
                              x, c, b_rows=nearest(x, c, proposers.BlasProposer().index(c))[0])))


def test_cluster_sums_check_that_numpy_adds_rows_one_by_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the reduction over rows would not add them one by one (a pairwise one here),
    the check says so and every cluster is summed by rank: still the sequential sums."""
    def pairwise(rows, axis=0, out=None):  # noqa: ANN001, ANN202
        rows = np.asarray(rows)
        while len(rows) > 1:
            half = len(rows) // 2
            rows = np.concatenate([rows[:half] + rows[half : 2 * half], rows[2 * half :]])
        if out is None:
            return rows[0].copy()
        out[...] = rows[0]
        return out

    monkeypatch.setattr(kmeans, "_ROWS_REDUCE", pairwise)
    monkeypatch.setattr(kmeans, "_SEQUENTIAL", {})
    assert not kmeans._reduce_is_sequential(6)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((900, 6)) * 10.0 ** rng.integers(-8, 8, (900, 1))).astype(
        np.float32)
    cluster = np.where(np.arange(900) < 600, 0, 1)  # one cluster big enough to sum alone
    sums, _ = cluster_sums(x, cluster, 2)
    for c in range(2):
        want = np.zeros(6)
        for row in x[cluster == c].astype(np.float64):
            want = want + row
        assert np.array_equal(sums[c], want)
