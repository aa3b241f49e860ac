"""What a pruning step is, to the runner: an object it can fingerprint, run and report on
without knowing the step by name (``registry.py`` lists them in SPEC §1's order).

A step reads the samples that reach it, writes one row-aligned table per part
(``WORK/NAME/part-NNNNN.parquet``, with a boolean ``removed`` column and, when its reasons vary
by row, a ``reason`` column) and returns a ``StepResult``. Everything else a run does with it
(resume, the ledger, the report's funnel) follows from these methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.engines.base import DEFAULT, Resources
from pipeline.workdir import fingerprint

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.stages.context import RunContext, StepResult


class Step:
    """A pruning step; subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str]
    # whether its result depends on the run's seed and k-means settings (steps that cluster)
    seeded: ClassVar[bool] = False

    def enabled(self, cfg: RunConfig) -> bool:
        """Whether a run with ``cfg`` runs this step (its section's ``enabled``)."""
        return bool(getattr(cfg, self.name).enabled)

    def settings(self, cfg: RunConfig) -> Any:  # noqa: ANN401 - any JSON-able value
        """The settings its result depends on (besides the seed, for seeded steps)."""
        return getattr(cfg, self.name).model_dump()

    def fingerprint(self, cfg: RunConfig, previous: str) -> str:
        """Its resume fingerprint, chained on the step before it: a changed setting or an
        earlier step redone makes it run again."""
        seeds = ([cfg.seed, cfg.kmeans.niter, cfg.kmeans.max_points_per_centroid]
                 if self.seeded else None)
        return fingerprint(self.name, previous, self.settings(cfg), seeds)

    def resources(self, cfg: RunConfig) -> Resources:
        """What each task of its heaviest map asks of a worker."""
        return DEFAULT

    def run(self, ctx: RunContext, earlier: tuple[str, ...], alive: list[int]) -> StepResult:
        """Decide the samples alive after ``earlier`` (``alive`` per part); write its part
        tables and artefacts before returning, for the runner marks the step done after."""
        raise NotImplementedError

    def ledger_reason(self, cfg: RunConfig) -> str | None:
        """The one reason of all its removals, or None when its tables carry a ``reason``
        per row."""
        return None

    def report(self, cfg: RunConfig, result: StepResult, ctx: RunContext) -> dict[str, Any]:
        """Its sections of report.json (top-level keys), from its finished result."""
        return {}
