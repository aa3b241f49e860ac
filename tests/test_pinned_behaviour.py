"""Behaviour no other module pins on its own: the shuffle's cluster bounds reach every member
of a bucket, the ledger summary's histograms count the right samples, and the local engine
builds a map's setup state once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.engines.local import LocalEngine
from pipeline.stages import shuffle
from pipeline.stages.ledger_summary import SCORE_BINS, part_summary


def test_every_member_of_every_cluster_of_a_bucket_is_gathered_and_bounded(
        tmp_path: Path) -> None:
    """A bucket's cluster bounds tile its members: each cluster, the last one of the bucket
    too, gets every member it has in every part."""
    rng = np.random.default_rng(5)
    k, parts = 9, 3
    members = set()
    for p, n in enumerate([40, 0, 65]):
        rows = np.arange(n, dtype=np.int64) * 2
        cluster = rng.integers(0, k, n).astype(np.int32)
        cluster[cluster == 4] = 5  # an empty cluster inside a bucket
        distance = rng.random(n).astype(np.float32)
        hi, lo = rng.integers(0, 2**63, n).astype(np.uint64), np.zeros(n, np.uint64)
        shuffle.write_scatter(tmp_path, p, k, rows, cluster, distance, hi, lo)
        members |= {(p, int(r), int(c)) for r, c in zip(rows, cluster, strict=True)}
    sizes = sum(shuffle.part_counts(tmp_path, p) for p in range(parts))
    buckets = shuffle.plan_buckets(sizes, max_rows=30)
    assert len(buckets) > 2 and any(b.stop - b.first > 1 for b in buckets)
    seen = []
    for b in buckets:
        m = shuffle.gather_bucket(tmp_path, parts, b.first, b.stop)
        assert len(m.row) == b.rows == sizes[b.first : b.stop].sum()
        bounds = m.cluster_bounds()
        present = [c for c in range(b.first, b.stop) if sizes[c]]
        assert [c for c, _, _ in bounds] == present
        assert [(a, z) for _, a, z in bounds] == list(zip(
            np.r_[0, np.cumsum(sizes[present])[:-1]].tolist(),
            np.cumsum(sizes[present]).tolist(), strict=True))
        assert bounds[-1][2] == len(m.row)  # the bucket's last cluster up to its last member
        for c, a, z in bounds:
            assert (m.cluster[a:z] == c).all() and z - a == sizes[c]
            seen += [(int(p), int(r), c) for p, r in zip(m.part[a:z], m.row[a:z], strict=True)]
    assert len(seen) == len(members) and set(seen) == members


def _ledger_part(rows: list[tuple[str, str, float | None, float | None]]) -> pa.Table:
    """A ledger part of (status, stage, clip score, dup similarity) rows."""
    return pa.table({
        "key": [f"k{i}" for i in range(len(rows))],
        "shard": ["00000.tar"] * len(rows),
        "status": [r[0] for r in rows],
        "stage": [r[1] for r in rows],
        "reason": [("cannot decode image" if r[0] == "failed" else None) for r in rows],
        "clip_score": pa.array([r[2] for r in rows], pa.float32()),
        "dup_similarity": pa.array([r[3] for r in rows], pa.float32()),
    })


def _bin(value: float) -> int:
    return int(np.searchsorted(SCORE_BINS, value, side="right")) - 1


def test_ledger_summary_histograms_count_by_the_ledgers_stage_names() -> None:
    """clip_before: the samples semdedup let through; clip_after: less those the stage named
    'clip_filter' removed; dup_similarity: every member semdedup ranked, before its
    removals (the ones it removed included)."""
    table = _ledger_part([
        ("failed", "read", None, None),
        ("kept", "dbp", 0.305, None),  # the first of its dedup cluster: no similarity
        ("kept", "dbp", 0.305, 0.555),
        ("removed", "semdedup", 0.305, 0.995),
        ("removed", "semdedup", 0.105, 0.995),
        ("removed", "clip_filter", 0.105, 0.555),
        ("removed", "clip_filter", 0.105, 0.255),
        ("removed", "dbp", 0.305, 0.255),
    ])
    got = part_summary(table)
    clip_before = np.zeros(len(SCORE_BINS) - 1, int)
    clip_before[_bin(0.305)], clip_before[_bin(0.105)] = 3, 2
    clip_after = clip_before.copy()
    clip_after[_bin(0.105)] = 0
    similarity = np.zeros(len(SCORE_BINS) - 1, int)
    similarity[[_bin(0.995), _bin(0.555), _bin(0.255)]] = 2
    assert got["clip_before"] == clip_before.tolist()
    assert got["clip_after"] == clip_after.tolist()
    assert got["dup_similarity"] == similarity.tolist()
    assert got["failures"] == {"read: cannot decode image": 1}


def test_the_local_engine_runs_a_maps_setup_once() -> None:
    for threads, concurrent in ((1, False), (3, True)):
        engine = LocalEngine(progress=False, threads=threads)
        calls = []

        def setup(calls: list = calls) -> dict:
            calls.append(1)
            return {"state": len(calls)}

        got = list(engine.map(lambda state, x: (state["state"], x * x), range(10), desc="t",
                              setup=setup, concurrent=concurrent))
        assert got == [(1, x * x) for x in range(10)] and len(calls) == 1
        assert list(engine.map(lambda state, x: state["state"], range(4), desc="t",
                               setup=setup, concurrent=concurrent)) == [2] * 4  # one per map
        assert len(calls) == 2
        engine.close()


def test_a_concurrent_local_map_runs_each_items_kernels_on_one_thread() -> None:
    """Items of a concurrent map share the cores: each one's BLAS and faiss run on one
    thread while the map runs (not every item on every core), and the engine's own count
    is back afterwards; a map in order keeps that count."""
    import faiss
    from threadpoolctl import threadpool_info

    def counts(_: int) -> tuple[int, frozenset[int]]:
        return faiss.omp_get_max_threads(), frozenset(p["num_threads"] for p in threadpool_info())

    engine = LocalEngine(progress=False, threads=2)
    try:
        assert set(engine.map(counts, range(4), desc="t", concurrent=True)) == {(1, frozenset({1}))}
        assert set(engine.map(counts, range(2), desc="t")) == {(2, frozenset({2}))}
        assert counts(0) == (2, frozenset({2}))
    finally:
        engine.close()
