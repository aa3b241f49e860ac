"""``conceptprune describe CONFIG``: the plan of a run before it runs.

Every step the run would take, in order, with what the work folder already holds for it under
the same fingerprint (done and reused, or the units an interrupted attempt finished), and
what each task asks of a worker. Nothing is embedded, read or written: the inputs are pinned
by their sizes and times only, and the steps after embed are planned only once every shard
is embedded (their fingerprints chain on the embedded files).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.engines.base import Resources
from pipeline.run_inputs import InputSide, embeds_on_gpu, part_fingerprint
from pipeline.stages import registry
from pipeline.workdir import WorkDir, fingerprint

DONE, PARTLY, TO_RUN, WAITS = "done", "partly done", "to run", "to run (after embed)"
MOVED = "moved with their shard"  # embed units reused at a new place in the input list


@dataclass
class StepPlan:
    name: str
    state: str  # DONE (reused), PARTLY (its finished units are reused), TO_RUN or WAITS
    units: dict[str, int] = field(default_factory=dict)  # finished units by kind
    total: int | None = None  # units of its first map, where known beforehand
    resources: str = "1 CPU"
    folder: str = ""


@dataclass
class Description:
    engine: str
    input: str
    output: str
    work: str
    steps: list[StepPlan]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def lines(self) -> list[str]:
        """The plan as text, a line per step."""
        out = [f"input:  {self.input}", f"output: {self.output}", f"work:   {self.work}",
               f"engine: {self.engine}", "",
               f"{'step':<13}{'state':<22}{'units finished':<28}per task"]
        for step in self.steps:
            units = ", ".join(f"{kind} {n}" for kind, n in step.units.items())
            if step.total is not None:
                units = f"{sum(step.units.values())} of {step.total}" + (
                    f" ({units})" if len(step.units) > 1 else "")
            out.append(f"{step.name:<13}{step.state:<22}{units or '-':<28}{step.resources}")
        return out


def _resources(res: Resources) -> str:
    return f"{res.gpus:g} GPU" if res.gpus else f"{res.cpus:g} CPU"


def _units(work: WorkDir, step: str, fps: set[str]) -> dict[str, int]:
    """The unit markers of ``step`` written under one of ``fps``, counted by kind."""
    found: Counter = Counter()
    for marker in sorted((work.markers / step).glob("*.json")):
        try:
            fp = json.loads(marker.read_text()).get("fingerprint")
        except (OSError, ValueError):
            continue
        if fp in fps:
            found[marker.stem.rsplit("-", 1)[0]] += 1
    return dict(found)


def _state(work: WorkDir, name: str, fp: str, plans: set[Any]) -> tuple[str, dict[str, int]]:
    if work.done(name, fp):
        return DONE, {}
    if work.done(f"{name}.started", fp):
        units = _units(work, name, {fp, *(fingerprint(fp, p) for p in plans)})
        if units:
            return PARTLY, units
    return TO_RUN, {}


def describe(cfg: RunConfig) -> Description:
    """The plan of a run of ``cfg`` against its work folder as it is now."""
    work = WorkDir(cfg.work_dir)
    source = InputSide(cfg, engine=None, work=work)  # type: ignore[arg-type] - maps nothing
    steps: list[StepPlan] = []
    parts = None
    if cfg.input.shards:
        from pipeline.stages.embed_files import foreseen_moves

        plan = source.embed_plan()
        done = len(plan.urls) - len(plan.todo)
        # shards at a new place in the list whose embeddings move with them
        moves = len(foreseen_moves(work, work.root / "embed", len(plan.urls),
                                   [i for i, _, _ in plan.todo], plan.fingerprints))
        units = {kind: n for kind, n in (("shard", done), (MOVED, moves)) if n}
        gpu = Resources(gpus=1) if embeds_on_gpu(cfg.embed.device) else Resources()
        steps.append(StepPlan("embed", DONE if not plan.todo else PARTLY if units else TO_RUN,
                              units, len(plan.urls), _resources(gpu),
                              str(work.root / "embed")))
        where = f"{len(plan.urls)} shards ({cfg.input.shards})"
        if not plan.todo:
            from pipeline.io.embeddings import discover_clip_retrieval

            parts = discover_clip_retrieval(str(work.root / "embed"))
    else:
        parts = source.find().parts
        where = f"{len(parts)} embedding parts ({cfg.input.embeddings or cfg.input.datacomp})"
    enabled = registry.enabled_steps(cfg)
    names = ["read", "uids", *(s.name for s in enabled), "write"]
    resources = {s.name: _resources(s.resources(cfg)) for s in enabled}
    if parts is None:
        steps += [StepPlan(n, WAITS, resources=resources.get(n, "1 CPU")) for n in names]
    else:
        part_fps = [part_fingerprint(p) for p in parts]
        read = sum(work.done(f"ingest-{p.index:05d}", fp) for p, fp in zip(parts, part_fps,
                                                                            strict=True))
        steps.append(StepPlan("read", DONE if read == len(parts) else PARTLY if read else
                              TO_RUN, {"part": read} if read else {}, len(parts),
                              folder=str(work.root / "ingest")))
        from pipeline.runner import chain_fingerprints

        fps = chain_fingerprints(cfg, enabled, part_fps)
        plans = {cfg.engine.bucket_rows}  # how map_units keys units cut by bucket size
        for name in names[1:-1]:
            state, units = _state(work, name, fps[name], plans)
            steps.append(StepPlan(name, state, units, resources=resources.get(name, "1 CPU"),
                                  folder=str(work.root / name)))
        report = Path(cfg.output) / "report" / "report.json"
        finished = work.done("write", fps["write"]) and report.exists()
        steps.append(StepPlan("write", DONE if finished else TO_RUN, folder=str(cfg.output)))
    return Description(cfg.engine.name, where, str(cfg.output), str(work.root), steps)
