"""report/report.json: what was pruned, by which step, and the concept budget (SPEC §7)."""

from __future__ import annotations

from typing import Any

from pipeline.config import RunConfig


def stage_rows(n: int, failed: int, steps: list[tuple[str, int, int]]) -> list[dict[str, int]]:
    """[{name, in, out, removed}] for read and each enabled step, given (name, in, removed)."""
    rows = [{"name": "read", "in": n, "out": n - failed, "removed": failed}]
    for name, n_in, removed in steps:
        rows.append({"name": name, "in": n_in, "out": n_in - removed, "removed": removed})
    return rows


def build_report(cfg: RunConfig, n: int, kept: int, failed: int,
                 steps: list[tuple[str, int, int]], extra: dict[str, Any],
                 shards: dict[str, dict[str, int]], timings: dict[str, float]
                 ) -> dict[str, Any]:
    """The report: the funnel, the settings and the sections of ``extra`` (the steps' own,
    the output's); dbp's concept table (``clusters``) comes last, being the longest."""
    extra = dict(extra)
    clusters = extra.pop("clusters", None)
    report: dict[str, Any] = {
        "input_samples": n,
        "kept": kept,
        "failed": failed,
        "keep_fraction": kept / n if n else 0.0,
        "stages": stage_rows(n, failed, steps),
        "parameters": cfg.model_dump(mode="json"),
        "shards": shards,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        **extra,
    }
    if clusters is not None:
        report["clusters"] = clusters
    return report
