"""The shuffle's file contracts (pipeline/stages/shuffle.py): a bucket gathered from every
part's scatter file is in the one member order of all rows taken together, ties in distance
and uid included; a bucket's decisions come back to each part in row order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.algorithms.ordering import member_order
from pipeline.algorithms.semdedup import dedup_order
from pipeline.stages import shuffle


def _parts(rng: np.random.Generator, k: int) -> list[dict[str, np.ndarray]]:
    out = []
    for n in (50, 0, 70, 33):
        out.append({
            "row": np.sort(rng.permutation(n * 3)[:n]).astype(np.int64),  # alive rows: gaps
            "cluster": rng.integers(0, k, n).astype(np.int32),
            "distance": rng.choice(np.float32([0.1, 0.25, 0.5]), n),  # many distance ties
            "uid_hi": rng.integers(0, 3, n).astype(np.uint64),  # and uid ties across parts
            "uid_lo": rng.integers(0, 2, n).astype(np.uint64)})
    return out


def test_gathered_buckets_are_in_the_member_order_of_all_parts_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    k = 7
    parts = _parts(rng, k)
    for p, d in enumerate(parts):
        shuffle.write_scatter(tmp_path, p, k, d["row"], d["cluster"], d["distance"],
                              d["uid_hi"], d["uid_lo"])
        # a part's file alone: its rows in member order, then by row
        want = member_order(d["cluster"], d["distance"], d["uid_hi"], d["uid_lo"])
        assert shuffle.read_scatter(tmp_path, p)["row"].tolist() == d["row"][want].tolist()
    # everything, in (part, row) order, sorted once
    every = {f: np.concatenate([d[f] for d in parts]) for f in parts[0]}
    every["part"] = np.concatenate([np.full(len(d["row"]), p) for p, d in enumerate(parts)])
    order = member_order(every["cluster"], every["distance"], every["uid_hi"], every["uid_lo"])
    sizes = sum(shuffle.part_counts(tmp_path, p) for p in range(len(parts)))
    got_part, got_row = [], []
    for b in sorted(shuffle.plan_buckets(sizes, max_rows=40), key=lambda b: b.first):
        m = shuffle.gather_bucket(tmp_path, len(parts), b.first, b.stop)
        got_part += m.part.tolist()
        got_row += m.row.tolist()
        for c, a, z in m.cluster_bounds():  # semdedup's scan order within a cluster
            assert (dedup_order(m.distance[a:z], m.uid_hi[a:z], m.uid_lo[a:z])
                    == np.arange(z - a)).all(), c
    assert got_part == every["part"][order].tolist()
    assert got_row == every["row"][order].tolist()


def test_decisions_reach_each_part_in_row_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    dtype = np.dtype([("row", "<i8"), ("removed", "?")])
    truth: dict[int, list[tuple[int, bool]]] = {0: [], 1: [], 2: []}
    for bucket in range(3):
        n = 30
        part = rng.integers(0, 3, n).astype(np.int32)
        values = np.empty(n, dtype)
        values["row"] = rng.permutation(1000)[:n]
        values["removed"] = rng.random(n) < 0.5
        shuffle.write_results(tmp_path, bucket, 3, part, values)
        for p, v in zip(part.tolist(), values.tolist(), strict=True):
            truth[p].append(v)
    for p in range(3):
        got = shuffle.read_results(tmp_path, 3, p)
        # bucket by bucket, each in row order
        want, start = [], 0
        assert got is not None and len(got) == len(truth[p])
        for bucket in range(3):
            data, offsets = shuffle.result_paths(tmp_path, bucket)
            off = np.load(offsets)
            piece = np.load(data)[off[p] : off[p + 1]]
            assert (np.diff(piece["row"]) > 0).all()
            want += piece.tolist()
            start += len(piece)
        assert got.tolist() == want
        assert sorted(got.tolist()) == sorted(truth[p])
