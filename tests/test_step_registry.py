"""A pruning step is an object the runner takes from the registry: a step added there alone
runs in its place, resumes, and shows in the ledger, the funnel and subset.npy."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import RunConfig, validate_config
from pipeline.ids import uids_to_u128
from pipeline.runner import run
from pipeline.stages import registry
from pipeline.stages.context import (
    RunContext,
    StepResult,
    alive_rows,
    ingest_path,
    step_part_path,
)
from pipeline.stages.step import Step
from pipeline.synth.embeddings import SynthSpec, synth_embeddings
from pipeline.workdir import write_parquet

SPEC = SynthSpec(samples=1200, dim=16, concepts=6, files=3, seed=7, near_dup_noise=0.001)
REASON = "key ends in the toy digit"


@dataclass(frozen=True)
class ToyTask:
    work: str
    part: int
    earlier: tuple[str, ...]
    digit: str


def toy_part(task: ToyTask) -> list[int]:
    """Remove the alive samples of one part whose key ends in ``digit``."""
    keys = np.asarray(pq.read_table(ingest_path(Path(task.work), task.part),
                                    columns=["key"]).column(0).to_pylist(), dtype=object)
    rows = alive_rows(task.work, task.part, task.earlier)
    removed = np.zeros(len(keys), dtype=bool)
    removed[rows] = [str(k).endswith(task.digit) for k in keys[rows]]
    write_parquet(step_part_path(Path(task.work), "toy", task.part), pa.table({
        "removed": removed,
        "reason": pa.array([REASON if r else None for r in removed], pa.string()),
    }))
    return [len(rows), int(removed.sum())]


class ToyStep(Step):
    """Drops every sample whose key ends in a digit; it has no config section."""

    name = "toy"
    runs = 0

    def __init__(self, digit: str) -> None:
        self.digit = digit

    def enabled(self, cfg: RunConfig) -> bool:
        return True

    def settings(self, cfg: RunConfig) -> Any:  # noqa: ANN401
        return {"digit": self.digit}

    def run(self, ctx: RunContext, earlier: tuple[str, ...], alive: list[int]) -> StepResult:
        ToyStep.runs += 1
        tasks = [ToyTask(ctx.root, p.index, earlier, self.digit) for p in ctx.parts]
        got = ctx.map_units("toy", "part", toy_part, tasks, [p.index for p in ctx.parts],
                            desc="toy", unit="part")
        return StepResult([a for a, _ in got], [r for _, r in got], {"digit": self.digit})

    def report(self, cfg: RunConfig, result: StepResult, ctx: RunContext) -> dict[str, Any]:
        return {"toy": {"digit": self.digit, "removed": sum(result.removed)}}


@pytest.fixture
def toy_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry with the toy step listed between clip_filter and dbp."""
    first, clip, dbp = registry.STEPS
    monkeypatch.setattr(registry, "STEPS", (first, clip, ToyStep("7"), dbp))
    ToyStep.runs = 0


def config(data: Path, out: Path, **dbp: Any) -> RunConfig:  # noqa: ANN401
    return validate_config({
        "input": {"embeddings": str(data)}, "output": str(out), "seed": 2, "progress": False,
        "semdedup": {"k": 4, "eps": 0.01},
        "clip_filter": {"enabled": True, "keep_fraction": 0.9},
        "dbp": {"k": 5, "keep_fraction": 0.5, **dbp},
    })


def test_a_step_listed_in_the_registry_alone_runs_resumes_and_is_reported(
        tmp_path: Path, toy_registry: None) -> None:
    data = synth_embeddings(tmp_path / "data", SPEC)
    out = tmp_path / "out"
    summary = run(config(data, out))
    report = json.loads((out / "report" / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert [s["name"] for s in report["stages"]] == ["read", "semdedup", "clip_filter", "toy",
                                                    "dbp"]
    assert report["toy"] == {"digit": "7", "removed": stages["toy"]["removed"]}
    assert stages["toy"]["in"] == stages["clip_filter"]["out"]
    assert stages["dbp"]["in"] == stages["toy"]["out"]

    ledger = pq.read_table(out / "ledger").to_pylist()
    by_toy = [r for r in ledger if r["stage"] == "toy" and r["status"] == "removed"]
    assert len(by_toy) == stages["toy"]["removed"] > 0
    assert all(r["key"].endswith("7") and r["reason"] == REASON for r in by_toy)
    # what reached it with such a key is gone; nothing it left is removed by it
    kept = [r for r in ledger if r["status"] == "kept"]
    assert kept and not any(r["key"].endswith("7") for r in kept)
    hi, lo, _ = uids_to_u128([r["uid"] for r in kept])
    subset = np.load(out / "subset.npy")
    assert set(zip(subset["f0"], subset["f1"], strict=True)) == set(zip(hi, lo, strict=True))
    assert summary.kept == len(kept) and ToyStep.runs == 1

    # a setting of a step after it changes: the toy step is reused, not run again
    again = run(config(data, out, keep_fraction=0.4))
    assert "toy" in again.skipped_steps and ToyStep.runs == 1
    assert "dbp" not in again.skipped_steps


def test_without_the_toy_step_the_same_run_keeps_its_samples(tmp_path: Path) -> None:
    """The registry as shipped has no such step: keys ending in 7 are kept."""
    data = synth_embeddings(tmp_path / "data", SPEC)
    run(config(data, tmp_path / "out"))
    kept = [r for r in pq.read_table(tmp_path / "out" / "ledger").to_pylist()
            if r["status"] == "kept"]
    assert any(r["key"].endswith("7") for r in kept)
    assert [s.name for s in registry.STEPS] == ["semdedup", "clip_filter", "dbp"]
