"""semdedup's removals at other eps, from the m_j a run recorded. m_j does not depend on eps
(SPEC §3), so one run knows them exactly: the report's removal curve and `plan --eps` read
them here, and decide with semdedup's own function (``algorithms.semdedup.removed_at``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.algorithms.semdedup import removed_count
from pipeline.io.tables import numpy_column

EXACT = "dup_similarity_exact"  # the work table's float64 m_j (the ledger has float32 only)
# the report's curve: these eps and the run's own
GRID = (0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15,
        0.175, 0.2, 0.25, 0.3)


@dataclass(frozen=True)
class PartValues:
    """One part's rows as semdedup saw them, row-aligned."""

    cluster: np.ndarray  # int32 dedup_cluster, -1 where the row did not reach semdedup
    similarity: np.ndarray  # float64 m_j, NaN where none (a cluster's first member)
    exact: bool  # False: m_j rounded to float32 (a table without the exact column)


def read_part(path: Path) -> PartValues:
    """A semdedup work table or a ledger part: exact m_j where the table has every one."""
    with pq.ParquetFile(path) as file:  # its footer read once: the names, then the columns
        names = file.schema_arrow.names
        table = file.read(columns=["dedup_cluster", "dup_similarity",
                                   *([EXACT] if EXACT in names else [])])
    cluster = numpy_column(table, "dedup_cluster", -1, "int32")
    rounded = table.column("dup_similarity")
    exact = EXACT in names and table.column(EXACT).null_count == rounded.null_count
    similarity = numpy_column(table, EXACT if exact else "dup_similarity", np.nan, "float64")
    return PartValues(cluster, similarity, exact)


def eps_grid(run_eps: float) -> list[float]:
    """The report curve's eps: ``GRID`` and the run's own, ascending."""
    return sorted({*GRID, float(run_eps)})


def removal_curve(paths: Iterable[Path], eps: Sequence[float]) -> tuple[list[int], bool]:
    """Samples semdedup removes at each eps, over the parts' tables; and whether every
    value was exact."""
    counts = np.zeros(len(eps), dtype=np.int64)
    exact = True
    for path in paths:
        part = read_part(path)
        values = np.sort(part.similarity[~np.isnan(part.similarity)])
        counts += np.array([removed_count(values, e) for e in eps], dtype=np.int64)
        exact &= part.exact
    return counts.tolist(), exact
