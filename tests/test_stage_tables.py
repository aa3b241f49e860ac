"""An empty concept reads as null (not NaN) in the concept table and the report."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.stages.dbp import concept_table


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
