"""What every step of a run sees: the config, the work folder, the engine and the parts.

The driver holds only per-part and per-cluster state. Per-sample state lives in the work
folder, one row-aligned file per part and step (``STEP/part-NNNNN.parquet``), and is read by
the workers that need it; the vectors stay on disk behind the ``VectorStore``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import RunConfig
from pipeline.engines.base import DEFAULT, Engine, Resources
from pipeline.io.tables import read_columns
from pipeline.io.vector_store import VectorStore
from pipeline.progress import Samples, step_progress
from pipeline.stages.ingest import IngestedPart
from pipeline.units import Unit, as_result, run_unit, run_unit_with
from pipeline.workdir import WorkDir, fingerprint

log = logging.getLogger(__name__)


def ingest_path(work: Path, part: int) -> Path:
    return Path(work) / "ingest" / f"part-{part:05d}.parquet"


def step_part_path(work: Path, step: str, part: int) -> Path:
    return Path(work) / step / f"part-{part:05d}.parquet"


def uids_path(work: Path, part: int) -> Path:
    """Row-aligned ``duplicate`` flags and reasons of one part (``stages/uids.py``)."""
    return Path(work) / "uids" / f"part-{part:05d}.parquet"


def alive_rows(work: str | Path, part: int, earlier: Sequence[str]) -> np.ndarray:
    """Rows of one part that reach a step: usable at read, not a later copy of a uid, and
    removed by no earlier step."""
    failed = read_columns(ingest_path(Path(work), part), columns=["failed_reason"])
    alive = failed.column("failed_reason").is_null().to_numpy(zero_copy_only=False)
    path = uids_path(Path(work), part)
    if path.exists():
        alive &= ~read_columns(path, columns=["duplicate"]).column(0).to_numpy(
            zero_copy_only=False)
    for step in earlier:
        removed = read_columns(step_part_path(Path(work), step, part), columns=["removed"])
        alive &= ~removed.column("removed").to_numpy(zero_copy_only=False)
    return np.flatnonzero(alive)


@dataclass
class StepResult:
    """What a finished step tells the driver, per part (stored in the step's marker)."""

    alive_in: list[int]
    removed: list[int]
    extra: dict[str, Any]

    @property
    def alive_out(self) -> list[int]:
        return [a - r for a, r in zip(self.alive_in, self.removed, strict=True)]

    def to_json(self) -> dict[str, Any]:
        return {"alive_in": self.alive_in, "removed": self.removed, "extra": self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepResult:
        return cls(data["alive_in"], data["removed"], data["extra"])


@dataclass
class RunContext:
    cfg: RunConfig
    work: WorkDir
    engine: Engine
    parts: list[IngestedPart]
    store: VectorStore
    fingerprints: dict[str, str]

    @property
    def root(self) -> str:
        return str(self.work.root)

    @property
    def offsets(self) -> np.ndarray:
        return self.store.offsets

    def step_folder(self, step: str, sub: str | None = None) -> Path:
        return self.work.step_dir(step if sub is None else f"{step}/{sub}")

    def map_units(self, step: str, kind: str, fn: Callable[..., Any], tasks: Sequence[Any],
                  ids: Sequence[int], *, desc: str, unit: str,
                  resources: Resources = DEFAULT, setup: Callable[[], Any] | None = None,
                  concurrent: bool = False, plan: Any = None,  # noqa: ANN401
                  work: tuple[Sequence[int], str] | None = None) -> list[Any]:
        """Run ``fn`` over the units not finished yet under this step's fingerprint.

        Each unit's marker is written by its worker after its outputs, holding its
        (JSON-able) result (``pipeline.units``), so a resubmitted run redoes only unfinished
        units, also when the driver died before the results came back, and still returns
        every result, in task order. ``plan`` names how the units were cut (the bucket size,
        say) when that is not implied by the step's fingerprint: units of another plan are
        not reused. ``work``, (each task's amount, its noun), is what the progress lines
        count besides the units, and take the ETA from: units of very unequal work (semdedup
        buckets, by their pairs) would make an ETA from their number wrong.
        """
        fp = self.fingerprints[step] if plan is None else fingerprint(self.fingerprints[step],
                                                                       plan)
        names = [f"{step}/{kind}-{i:05d}" for i in ids]
        todo = [i for i, name in enumerate(names) if not self.work.done(name, fp)]
        if len(todo) < len(tasks):
            log.info("%s: %d of %d %s units already done, reusing them", step,
                     len(tasks) - len(todo), len(tasks), kind)
        results: list[Any] = [None] * len(tasks)
        worker = partial(run_unit if setup is None else run_unit_with, fn, as_result)
        units = [Unit(self.root, names[i], fp, tasks[i]) for i in todo]
        amounts = [0] * len(todo) if work is None else [int(work[0][i]) for i in todo]
        samples = None if work is None else Samples(sum(amounts), work[1], work[1])
        with step_progress(self.cfg, desc, len(todo), unit, samples) as meter:  # and summary
            for j, _ in enumerate(self.engine.map(worker, units, desc=desc, total=len(todo),
                                                  unit=unit, resources=resources, setup=setup,
                                                  concurrent=concurrent, progress=meter)):
                meter.advance(0, amounts[j])  # results come in task order
        for i, name in enumerate(names):
            results[i] = self.work.stats(name)["result"]
        return results
