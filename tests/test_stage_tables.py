"""What the steps store in the work folder reads back as it was written, and an empty concept
reads as null (not NaN) in the concept table and the report."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.stages.clip_filter import ClipFilterResult
from pipeline.stages.dbp import DBPResult, concept_table
from pipeline.stages.semdedup import SemDeDupResult


def test_an_empty_concept_is_null_in_the_concept_table() -> None:
    size = np.array([3, 0, 2])
    d_intra = np.array([0.2, np.nan, 0.1])
    d_inter = np.array([0.5, np.nan, 0.4])
    table = concept_table(size, d_intra, d_inter, np.array([0.6, 0.0, 0.4]),
                          np.array([2, 0, 1]), np.array([2, 0, 1]))
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert table.schema.field("id").type == pa.int32()
    assert rows[1]["d_intra"] is None and rows[1]["d_inter"] is None
    assert rows[1]["complexity"] is None
    assert rows[0]["complexity"] == 0.2 * 0.5 and rows[2]["complexity"] == 0.1 * 0.4


def test_step_results_round_trip() -> None:
    sem = SemDeDupResult(
        cluster=np.array([0, -1, 1, 0], dtype=np.int32),
        distance=np.array([0.1, np.nan, 0.3, 0.2], dtype=np.float32),
        dup_of=np.array([-1, -1, -1, 0], dtype=np.int64),
        similarity=np.array([np.nan, np.nan, np.nan, 0.99], dtype=np.float32),
        removed=np.array([False, False, False, True]),
        centroids=np.eye(2, dtype=np.float32), k=2)
    back = SemDeDupResult.from_table(sem.table(), sem.centroids)
    for name in ("cluster", "distance", "dup_of", "similarity", "removed"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sem, name))
    assert back.k == 2

    clusters = concept_table(np.array([2, 1]), np.array([0.1, 0.2]), np.array([0.3, 0.3]),
                             np.array([0.5, 0.5]), np.array([1, 1]), np.array([1, 1]))
    dbp = DBPResult(cluster=np.array([1, -1, 0], dtype=np.int32),
                    distance=np.array([0.2, np.nan, 0.1], dtype=np.float32),
                    removed=np.array([True, False, False]), clusters=clusters, target=2,
                    centroids=np.eye(2, dtype=np.float32))
    back_dbp = DBPResult.from_tables(dbp.table(), clusters, dbp.centroids, 2)
    for name in ("cluster", "distance", "removed"):
        np.testing.assert_array_equal(getattr(back_dbp, name), getattr(dbp, name))

    clip = ClipFilterResult(np.array([False, True]), np.array([None, "low"], dtype=object))
    back_clip = ClipFilterResult.from_table(clip.table())
    np.testing.assert_array_equal(back_clip.removed, clip.removed)
    assert list(back_clip.reason) == [None, "low"]
