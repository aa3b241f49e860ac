"""The pruning steps a run can take, in SPEC §1's order. A new step is a module with a
``Step`` subclass, listed here; the runner, the resume logic, the ledger and the report
take it from this list."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.config import RunConfig
from pipeline.stages.clip_filter import ClipFilter
from pipeline.stages.dbp import DensityBasedPruning
from pipeline.stages.semdedup import SemDedup
from pipeline.stages.step import Step

STEPS: tuple[Step, ...] = (SemDedup(), ClipFilter(), DensityBasedPruning())


def enabled_steps(cfg: RunConfig, steps: Sequence[Step] | None = None) -> list[Step]:
    """The steps a run with ``cfg`` takes, in order (``steps`` defaults to ``STEPS``)."""
    return [step for step in (STEPS if steps is None else steps) if step.enabled(cfg)]
