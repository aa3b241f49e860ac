"""Concepts are named by their ids everywhere: the report's table, its plots and the plan's
figure label concepts with the ids of WORK/dbp/clusters.parquet, never with a rank."""

from __future__ import annotations

LABELLED = 40  # concepts up to which every one is labelled with its id


def id_ticks(count: int) -> list[int]:
    """Positions (of ``count`` concepts in plot order) labelled with their concept ids: all
    of them up to ``LABELLED``, else evenly spaced ones, the first and the last included."""
    if count <= LABELLED:
        return list(range(count))
    return sorted({round(i * (count - 1) / (LABELLED - 1)) for i in range(LABELLED)})
