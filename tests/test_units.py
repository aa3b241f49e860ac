"""The pieces that let a step run as units of work: the seeded sample split over parts, the
file shuffle by cluster, the exact global select of the clip filter, and resumable units."""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pipeline.algorithms import key_select as ks
from pipeline.algorithms.ordering import grouped_order
from pipeline.algorithms.selection import clip_filter_keep
from pipeline.io import vector_store
from pipeline.io.vector_store import VectorStore, scale_path
from pipeline.stages import semdedup, shuffle
from pipeline.stages.clusters import plan_sample, sample_rows
from pipeline.stages.context import StepResult


def test_sample_plan_splits_a_uniform_sample_over_parts() -> None:
    alive = [1000, 0, 3000, 500]
    counts = plan_sample(alive, k=10, max_points_per_centroid=100, seed=4, salt=1)
    assert sum(counts) == 1000 and counts[1] == 0
    assert all(0 <= c <= a for c, a in zip(counts, alive, strict=True))
    assert counts == plan_sample(alive, 10, 100, 4, 1)
    assert counts != plan_sample(alive, 10, 100, 5, 1)
    assert counts != plan_sample(alive, 10, 100, 4, 2)
    # a uniform sample's share of each part is hypergeometric: mean size * a / total
    draws = np.array([plan_sample(alive, 10, 100, s, 1) for s in range(300)])
    np.testing.assert_allclose(draws.mean(axis=0), np.array(alive) * 1000 / 4500, rtol=0.03)
    # few enough vectors: all of them
    assert plan_sample(alive, 10, 1000, 4, 1) == alive


def test_sample_rows_are_a_seeded_sorted_subset() -> None:
    rows = np.arange(0, 3000, 3)
    got = sample_rows(rows, 100, seed=1, salt=1, part=2)
    assert len(got) == 100 and np.all(np.diff(got) > 0) and np.isin(got, rows).all()
    assert np.array_equal(got, sample_rows(rows, 100, 1, 1, 2))
    assert not np.array_equal(got, sample_rows(rows, 100, 1, 1, 3))
    assert np.array_equal(sample_rows(rows, 5000, 1, 1, 2), rows)


def test_plan_buckets_bounds_members_and_isolates_giants() -> None:
    sizes = np.array([3, 0, 4, 10, 2, 2, 0, 1])
    buckets = shuffle.plan_buckets(sizes, max_rows=5)
    assert [b.rows for b in buckets] == sorted((b.rows for b in buckets), reverse=True)
    ordered = sorted(buckets, key=lambda b: b.index)
    assert [b.index for b in ordered] == list(range(len(buckets)))
    assert ordered[0].first == 0 and ordered[-1].stop == len(sizes)
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert a.stop == b.first
    for b in buckets:
        assert b.rows == sizes[b.first : b.stop].sum()
        assert b.rows <= 5 or b.stop - b.first == 1 or sizes[b.first : b.stop].max() > 5
    assert any(b.first == 3 and b.stop == 4 for b in buckets)  # the cluster of 10 alone
    assert shuffle.plan_buckets(np.zeros(4, dtype=int), 5) == []


def test_scatter_gather_gives_the_global_order_and_results_find_their_parts(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    k, parts = 7, 4
    sizes = [50, 0, 80, 33]
    allc, alld, allh, alll, allp, allr = [], [], [], [], [], []
    for p, n in enumerate(sizes):
        rows = np.sort(rng.choice(200, n, replace=False)).astype(np.int64)
        cl = rng.integers(0, k, n).astype(np.int32)
        dist = rng.choice(np.float32([0.1, 0.2, 0.3]), n)  # many distance ties
        hi = rng.integers(0, 3, n).astype(np.uint64)  # uid ties too
        lo = np.full(n, 5, dtype=np.uint64)
        counts = shuffle.write_scatter(tmp_path, p, k, rows, cl, dist, hi, lo)
        assert np.array_equal(counts, np.bincount(cl, minlength=k))
        assert np.array_equal(shuffle.part_counts(tmp_path, p), counts)
        for a, v in zip((allc, alld, allh, alll, allp, allr),
                        (cl, dist, hi, lo, np.full(n, p), rows), strict=True):
            a.append(v)
    c, d, h, lo, p, r = (np.concatenate(a) for a in (allc, alld, allh, alll, allp, allr))
    # the global order: (cluster, -distance, uid), ties in input (part, row) order
    order = grouped_order(c, -d, h, lo)
    got = [shuffle.gather_bucket(tmp_path, parts, first, stop)
           for first, stop in ((0, 3), (3, 4), (4, 7))]
    assert np.array_equal(np.concatenate([g.part for g in got]), p[order])
    assert np.array_equal(np.concatenate([g.row for g in got]), r[order])
    assert [x[0] for x in got[0].cluster_bounds()] == sorted(set(c[c < 3].tolist()))

    dtype = np.dtype([("row", "<i8"), ("flag", "<i4")])
    for b, g in enumerate(got):
        vals = np.empty(len(g.row), dtype=dtype)
        vals["row"], vals["flag"] = g.row, g.part * 1000 + g.row
        shuffle.write_results(tmp_path / "res", b, parts, g.part, vals)
    for part in range(parts):
        back = shuffle.read_results(tmp_path / "res", len(got), part)
        if sizes[part] == 0:
            assert back is None
            continue
        assert sorted(back["row"].tolist()) == sorted(r[p == part].tolist())
        assert np.array_equal(back["flag"], part * 1000 + back["row"])


def _two_parts(tmp_path: Path) -> tuple[VectorStore, np.ndarray]:
    """A float16 part with row divisors and a float32 part; and all their unit rows."""
    rng = np.random.default_rng(1)
    half = rng.standard_normal((40, 8)).astype(np.float16)
    divisor = np.linalg.norm(half.astype(np.float32), axis=1).astype(np.float32)
    np.save(tmp_path / "a.npy", half)
    np.save(scale_path(tmp_path / "a.npy"), divisor)
    full = rng.standard_normal((30, 8)).astype(np.float32)
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    np.save(tmp_path / "b.npy", full)
    want = np.concatenate([half.astype(np.float32) / divisor[:, None], full])
    return VectorStore([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], [40, 30]), want


def test_vector_reads_come_back_in_the_order_asked(tmp_path: Path) -> None:
    store, want = _two_parts(tmp_path)
    rows = np.random.default_rng(2).integers(0, 70, 200)  # both parts, repeats, any order
    np.testing.assert_allclose(store.gather(rows), want[rows], rtol=1e-6)
    np.testing.assert_allclose(store.gather(rows[:1]), want[rows[:1]], rtol=1e-6)


def test_reads_map_each_part_once_a_call_or_once_while_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of scattered rows maps each part once, not once per piece of rows; while the
    store is ``held`` its reads share the maps, and after it they map anew."""
    store, want = _two_parts(tmp_path)
    assert store.dim == 8  # found once, from a map of its own
    maps: list[int] = []
    array = VectorStore._array
    monkeypatch.setattr(VectorStore, "_array", lambda self, part: (maps.append(part),
                                                                  array(self, part))[1])
    monkeypatch.setattr(vector_store, "SORTED_PIECE", 7)  # many pieces a read
    rows = np.random.default_rng(3).permutation(70)
    np.testing.assert_allclose(store.gather(rows), want[rows], rtol=1e-6)
    assert sorted(maps) == [0, 1]
    maps.clear()
    with store.held():
        for piece in np.array_split(rows, 4):
            np.testing.assert_allclose(store.gather(piece), want[piece], rtol=1e-6)
    assert sorted(maps) == [0, 1]
    maps.clear()
    store.gather(rows)
    assert sorted(maps) == [0, 1]


@pytest.mark.parametrize(("group_rows", "want_reads"), [
    (1, [3, 1, 6, 11, 1, 18, 30]), (5, [4, 6, 11, 1, 18, 30]), (12, [10, 12, 18, 30]),
    (1000, [70])])
def test_a_bucket_reads_clusters_in_groups_bounded_by_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group_rows: int,
        want_reads: list[int]) -> None:
    store, want = _two_parts(tmp_path)
    monkeypatch.setattr(semdedup, "GROUP_BYTES", group_rows * 4 * 8)
    rows = np.random.default_rng(3).permutation(70)
    stops = [3, 4, 10, 21, 22, 40, 70]  # clusters of 3, 1, 6, 11, 1, 18 and 30 members
    bounds = [(c, a, b) for c, (a, b) in enumerate(zip([0, *stops[:-1]], stops, strict=True))]
    reads = []
    # fresh arrays, so every group can be kept (the real reads share the store's scratch)
    monkeypatch.setattr(store, "gather", lambda r, out=None: reads.append(len(r)) or want[r])
    got = list(semdedup._clusters_read_in_groups(store, rows, bounds))
    assert [(c, a, b) for c, a, b, _ in got] == bounds
    for _, a, b, vectors in got:
        np.testing.assert_array_equal(vectors, want[rows[a:b]])
    assert reads == want_reads  # neighbours together up to the bound, a big cluster alone


def test_a_store_reads_any_rows_into_its_scratch(tmp_path: Path) -> None:
    store, want = _two_parts(tmp_path)
    rng = np.random.default_rng(5)
    for rows in (rng.permutation(70)[:33], np.arange(20, 50), np.array([69, 0, 35, 35])):
        got = store.gather(rows, out=store.scratch(len(rows)))
        np.testing.assert_array_equal(got, want[rows])
        assert np.shares_memory(got, store.scratch(1))  # the same buffer, read again


def test_a_float16_parts_scattered_rows_are_read_through_one_kept_buffer(
        tmp_path: Path) -> None:
    """Rows that are not one run of a float16 part are gathered into a float16 buffer the
    thread keeps (fresh memory for every batch cost twice the decoding), then decoded."""
    store, want = _two_parts(tmp_path)
    rng = np.random.default_rng(8)
    seen = set()
    for _ in range(3):
        rows = np.sort(rng.permutation(40)[:25])  # the float16 part, not one run
        np.testing.assert_array_equal(store.gather(rows), want[rows])
        lease = store._buffers.stored
        assert lease.buffer.dtype == np.float16
        seen.add(lease.buffer.__array_interface__["data"][0])
    assert len(seen) == 1


def test_threads_reading_at_once_each_get_their_own_scratch(tmp_path: Path) -> None:
    """Buckets run on several threads share one store: a thread's reads never land in
    another's buffer, and a pickled copy (another worker's) reads the same rows."""
    store, want = _two_parts(tmp_path)
    rng = np.random.default_rng(6)
    jobs = [rng.permutation(70)[:50] for _ in range(16)]
    barrier = threading.Barrier(4)

    def read(rows: np.ndarray) -> bool:
        got = store.gather(rows, out=store.scratch(len(rows)))
        barrier.wait(timeout=30)  # all four hold their reads at once
        ok = np.array_equal(got, want[rows])
        barrier.wait(timeout=30)
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read, jobs))
    copy = pickle.loads(pickle.dumps(store))
    rows = jobs[0]
    np.testing.assert_array_equal(copy.gather(rows, out=copy.scratch(len(rows))), want[rows])


def test_a_later_maps_threads_take_over_the_scratch_of_ended_ones(tmp_path: Path) -> None:
    """Every map starts new threads: they reuse the buffers the last map's threads left (no
    fresh pages to fault in), a thread's buffer grows to a power of two of rows, and one
    that grew again is let go rather than kept. The test holds a view of every buffer it
    saw, so no address can come back from the allocator instead of from the store."""
    store, want = _two_parts(tmp_path)
    rows = np.random.default_rng(7).permutation(70)[:50]
    held: list[np.ndarray] = []

    def address(a: np.ndarray) -> int:
        held.append(a)
        return a.__array_interface__["data"][0]

    def read(_: int) -> int:
        got = store.gather(rows, out=store.scratch(len(rows)))
        assert np.array_equal(got, want[rows])
        assert len(store.scratch(1).base) == 64  # 50 rows rounded up to a power of two
        return address(got)

    def one_thread(fn):  # noqa: ANN001, ANN202 - a map of one new thread
        with ThreadPoolExecutor(1) as pool:
            return next(pool.map(fn, [0]))

    with ThreadPoolExecutor(2) as pool:
        first = set(pool.map(read, range(8)))
    with ThreadPoolExecutor(2) as pool:
        again = set(pool.map(read, range(8)))
    assert again <= first  # the second map's threads read into the first map's buffers

    small, big = one_thread(lambda _: (address(store.scratch(10)),
                                       address(store.scratch(100))))
    assert small != big
    assert one_thread(lambda _: address(store.scratch(100))) == big  # the grown one is kept
    store.close()  # the store lets its buffers go: the next thread gets a new one
    assert one_thread(lambda _: address(store.scratch(100))) not in first | {small, big}


@pytest.mark.parametrize("limit", [1, 7, ks.GATHER_LIMIT])
def test_key_select_matches_a_full_sort(limit: int) -> None:
    """The clip filter's cut, found by histogram rounds over parts, keeps exactly the rows a
    sort of all scores keeps, ties by uid and then by row included."""
    rng = np.random.default_rng(1)
    n = 3000
    score = rng.choice(np.float32([0.25, 0.5, -0.0, 0.0, 0.75, 0.3]), n)
    score[:200] = rng.standard_normal(200).astype(np.float32)
    hi = rng.integers(0, 4, n).astype(np.uint64) << np.uint64(62)  # uid ties in the high word
    lo = rng.integers(0, 3, n).astype(np.uint64)
    keys = np.stack([ks.descending_float_key(score), hi, lo, np.arange(n, dtype=np.uint64)], 1)
    bits = (32, 64, 64, 64)
    parts = np.array_split(keys, 5)
    rounds = []

    def histograms(prefix: ks.Prefix) -> list[np.ndarray]:
        rounds.append(prefix)
        return [ks.histogram(x, prefix, bits) for x in parts]

    def candidates(prefix: ks.Prefix) -> list[np.ndarray]:
        got = [x[ks.matching(x, prefix, bits)] for x in parts]
        assert sum(len(g) for g in got) <= max(limit, 1) or len(prefix.words) == 4
        return got

    for q in (0.001, 0.3, 0.5, 0.77, 1.0):
        want = clip_filter_keep(score, hi, lo, keep_fraction=q)
        rank = int(want.sum())
        cut = ks.kth_key(rank, n, bits, histograms, candidates, gather_limit=limit)
        assert np.array_equal(ks.at_most(keys, cut), want), q
    if limit == 1:
        assert any(len(r.words) >= 2 for r in rounds)  # the rounds went into the uid words
    with pytest.raises(ValueError, match="outside"):
        ks.kth_key(0, n, bits, histograms, candidates)


def test_step_result_round_trips_through_its_marker() -> None:
    r = StepResult([5, 0, 7], [1, 0, 2], {"k": 3})
    assert r.alive_out == [4, 0, 5]
    back = StepResult.from_json(r.to_json())
    assert back == r


def test_write_ranges_cover_every_shard_in_runs_of_the_target() -> None:
    from pipeline.stages.write_shards import plan_ranges

    kept = [5, 0, 12, 3, 3, 3, 0, 9, 1]
    ranges = plan_ranges(kept, target=10)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(kept)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    for first, stop in ranges[:-1]:
        assert sum(kept[first:stop]) >= 10 > sum(kept[first : stop - 1])
    assert ranges == [(0, 3), (3, 8), (8, 9)]
    assert plan_ranges([], 10) == [] and plan_ranges([0, 0], 10) == [(0, 2)]


def test_populated_arrays_are_plain_writable_arrays() -> None:
    import mmap

    from pipeline.io import buffers

    small = buffers.populated((3, 4), np.float32)
    big = buffers.populated((buffers.POPULATE_FROM // 8, 2), np.float32)
    for arr, shape in ((small, (3, 4)), (big, (buffers.POPULATE_FROM // 8, 2))):
        assert arr.shape == shape and arr.dtype == np.float32 and arr.flags.writeable
        arr[:] = 1.5
        assert float(arr.sum()) == 1.5 * arr.size

    def mapped(arr: np.ndarray) -> bool:
        base = arr
        while base is not None and not isinstance(base, mmap.mmap):
            base = base.base if isinstance(base, np.ndarray) else getattr(base, "obj", None)
        return base is not None

    assert mapped(big) and not mapped(small)  # the large one is mapped in up front


def test_rows_taken_into_a_buffer_are_the_rows_asked_and_no_row_is_clipped() -> None:
    from pipeline.io.buffers import take_rows

    source = np.arange(40, dtype=np.float32).reshape(10, 4)
    out = np.empty((5, 4), dtype=np.float32)
    rows = np.array([9, 0, 3, 3, 7])
    assert take_rows(source, rows, out) is out and np.array_equal(out, source[rows])
    for wrong in (-1, 10):  # np.take's "clip" would have read row 0 or row 9
        with pytest.raises(IndexError, match="rows outside 0 .. 9"):
            take_rows(source, np.array([1, wrong, 2, 3, 4]), out)
