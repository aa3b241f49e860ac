"""Runs the steps of SPEC §1 in order on an engine, resuming from the work folder's markers.

The input side (``run_inputs``) and the output side (``run_outputs``) frame the pruning
steps, which come from ``stages/registry.py``; ``run`` holds the folders and the run's log."""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import blas_kernels, remote_output
from pipeline.config import RunConfig
from pipeline.engines.base import Engine
from pipeline.engines.factory import make_engine
from pipeline.errors import RunError
from pipeline.interrupts import exit_code_of, reclaim, stop_on_signals
from pipeline.io.vector_store import VectorStore
from pipeline.logs import STATUS_CONFIG, log_error, run_log, stop_name
from pipeline.output_guard import (
    check_folder_paths,
    claim_output,
    claim_work,
    inside,
    settle,
    sweep_unfinished,
)
from pipeline.run_inputs import Inputs, InputSide
from pipeline.run_lock import run_lock
from pipeline.run_outputs import OutputSide
from pipeline.stages import registry
from pipeline.stages.context import RunContext, StepResult
from pipeline.stages.report import build_report
from pipeline.stages.step import Step
from pipeline.workdir import WorkDir, fingerprint, write_json

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    output: Path
    input_samples: int
    kept: int
    report: dict[str, Any]
    skipped_steps: list[str] = field(default_factory=list)
    remote: str | None = None  # the output in object storage; ``output`` is its local mirror

    @property
    def report_path(self) -> Path:
        return self.output / "report" / "report.json"

    @property
    def page_path(self) -> Path:
        """The report as a page to open in a browser."""
        return self.output / "report" / "index.html"


def chain_fingerprints(cfg: RunConfig, steps: list[Step], part_fps: list[str]
                       ) -> dict[str, str]:
    """The fingerprint of every step a run takes, each chained on the one before: a changed
    input or setting redoes its step and every step after it, and nothing before."""
    fps = {"read": fingerprint("ingest-all", part_fps)}
    fps["uids"] = fingerprint("uids", fps["read"])  # a function of what was read
    fp = fps["read"]
    for step in steps:
        fp = fps[step.name] = step.fingerprint(cfg, fp)
    fps["write"] = fingerprint("write", fp, str(Path(cfg.output).resolve()),
                               cfg.write.model_dump() if cfg.input.shards else None)
    return fps


class Runner:
    """One run of the pipeline: the input side, then the enabled pruning steps of the registry
    in order (each resumed from the work folder when its fingerprint matches), then the
    output side and the report. The runner knows no step by name."""

    def __init__(self, cfg: RunConfig, engine: Engine | None = None) -> None:
        self.cfg = cfg
        self.owns_engine = engine is None
        self.engine = engine or make_engine(cfg)
        reclaim()  # a Ray or Spark session just started may have taken the signals
        self.work = WorkDir(cfg.work_dir)
        self.output = Path(cfg.output)
        self.steps = registry.enabled_steps(cfg)
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []
        self.at = "the start"  # the step running now, for a stop's message

    def _unique_uids(self, ctx: RunContext, alive: list[int]) -> list[int]:
        """The later copies of every uid, per part (``stages/uids.py``), or the count a
        finished attempt recorded."""
        from pipeline.stages.uids import STEP, run_unique_uids

        fp = ctx.fingerprints[STEP]
        if self.work.done(STEP, fp):
            return self.work.stats(STEP)["duplicates"]
        self.work.begin_step(STEP, fp)
        duplicates = run_unique_uids(ctx, alive, self.cfg.engine.bucket_rows)
        self.work.mark(STEP, fp, {"duplicates": duplicates})
        return duplicates

    def _step(self, ctx: RunContext, step: Step, earlier: tuple[str, ...], alive: list[int]
              ) -> StepResult:
        """A finished step's result, or the step run (resuming its finished units)."""
        start = time.perf_counter()
        self.at = step.name
        fp = ctx.fingerprints[step.name]
        if self.work.done(step.name, fp):
            log.info("%s: already done, reusing %s", step.name, self.work.root / step.name)
            self.skipped.append(step.name)
            result = StepResult.from_json(self.work.stats(step.name))
        else:
            self.work.begin_step(step.name, fp)
            result = step.run(ctx, earlier, alive)
            self.work.mark(step.name, fp, result.to_json())
        self.timings[step.name] = time.perf_counter() - start
        return result

    def _missing_outputs(self, inputs: Inputs) -> list[str]:
        """What a finished run wrote that is no longer there."""
        wanted = ["subset.npy", "ledger", "report/report.json"]
        if inputs.shard_urls is not None and self.cfg.write.enabled:
            wanted.append("shards")
        return [str(self.output / name) for name in wanted
                if not (self.output / name).exists()]

    def run(self) -> RunSummary:
        cfg = self.cfg
        source = InputSide(cfg, self.engine, self.work)
        self.at = "embed" if cfg.input.shards else "finding the input"
        inputs = source.find()
        if inputs.embed_seconds is not None:
            self.timings["embed"] = inputs.embed_seconds
        part_fps = inputs.fingerprints
        fps = chain_fingerprints(cfg, self.steps, part_fps)
        report_path = self.output / "report" / "report.json"
        if self.work.done("write", fps["write"]):
            missing = self._missing_outputs(inputs)
            if not missing:
                log.info("run already complete for this input and config: %s", report_path)
                report = json.loads(report_path.read_text())
                return RunSummary(self.output, report["input_samples"], report["kept"],
                                  report, ["read", *(s.name for s in self.steps), "write"])
            log.warning("the run was complete, but %s is gone: writing the outputs again "
                        "from the work folder", ", ".join(missing))

        t0 = time.perf_counter()
        self.at = "read"
        ingested, cached = source.ingest(inputs.parts, part_fps)
        self.timings["read"] = time.perf_counter() - t0
        ctx = RunContext(cfg=cfg, work=self.work, engine=self.engine, parts=ingested,
                         store=VectorStore([p.vectors for p in ingested],
                                           [p.rows for p in ingested]),
                         fingerprints=fps)
        for index, vectors in cached.items():
            ctx.store.preload(index, vectors)
        del cached
        n = sum(p.rows for p in ingested)
        failed = sum(p.failed for p in ingested)
        derived_uids = (sum(p.derived for p in ingested), n)
        alive = [p.rows - p.failed for p in ingested]
        self.at = "uids"
        duplicates = self._unique_uids(ctx, alive)
        failed += sum(duplicates)
        alive = [a - d for a, d in zip(alive, duplicates, strict=True)]
        if sum(alive) == 0:
            raise RunError(source.nothing_usable(n, len(ingested)))
        funnel: list[tuple[str, int, int]] = []
        extra: dict[str, Any] = {}
        done: list[str] = []
        for step in self.steps:
            result = self._step(ctx, step, tuple(done), alive)
            funnel.append((step.name, sum(alive), sum(result.removed)))
            alive = result.alive_out
            done.append(step.name)
            extra.update(step.report(cfg, result, ctx))

        sink = OutputSide(cfg, self.engine, self.work)
        start = time.perf_counter()
        self.at = "ledger"
        shards, kept_per_part = sink.write(ctx, self.steps)
        kept = sum(kept_per_part)
        self.timings["write"] = time.perf_counter() - start
        self.at = "write shards"
        written = sink.write_shards(inputs, kept_per_part, self.timings)
        self.at = "report"

        if inputs.shard_urls is not None:
            extra["embed"] = sink.embed_report(inputs)
        extra["subset"] = sink.subset_report(inputs, extra.get("embed"), kept, derived_uids)
        if written is not None:
            extra["output_shards"] = written
        extra["engine"] = self.engine.name
        extra["inputs"] = inputs.pinned
        extra.update(sink.ledger_summary)
        report = build_report(cfg, n, kept, failed, funnel, extra, shards, self.timings)
        # imported here: its page templates and schema checks (jinja2, jsonschema: 0.12 s)
        # are needed only now, after subset.npy, not before a run's first step
        from pipeline.report.publish import publish

        publish(report, report_path.parent, cfg.model_dump(mode="json"),
                sink.examples(inputs, report))
        settle(self.output)
        self.work.mark("write", fps["write"])
        ctx.store.close()
        return RunSummary(self.output, n, kept, report, self.skipped)


def _run_to_remote(cfg: RunConfig, engine: Engine | None) -> RunSummary:
    """The run into a local mirror of the remote output, its report saying the remote
    output and how to rerun it, then the upload."""
    from pipeline.report.publish import restate

    try:
        mirror, work = remote_output.local_places(cfg.output, cfg.work)
        remote_output.claim_remote(cfg.output, cfg.overwrite)
    except Exception as err:
        log_error(err)
        raise
    summary = run(cfg.model_copy(update={"output": str(mirror), "work": str(work)}), engine)
    report = restate(mirror / "report", cfg.model_dump(mode="json"),
                     f"conceptprune run {cfg.output}/report/config.yaml")
    remote_output.upload(mirror, cfg.output)
    return RunSummary(summary.output, summary.input_samples, summary.kept, report,
                      summary.skipped_steps, remote=cfg.output)


def run(cfg: RunConfig, engine: Engine | None = None) -> RunSummary:
    """One run, holding its output (and work) folder alone, in folders it owns; its log goes
    to OUTPUT/logs/run.log. An engine made here from ``cfg.engine`` is closed at the end.
    An output in object storage is written locally first, then uploaded
    (``remote_output``). SIGTERM, SIGHUP and SIGINT stop it cleanly (``interrupts``)."""
    with stop_on_signals():
        if remote_output.is_remote(cfg.output):
            return _run_to_remote(cfg, engine)
        return _run_here(cfg, engine)


def _run_here(cfg: RunConfig, engine: Engine | None) -> RunSummary:
    output, work = Path(cfg.output), cfg.work_dir
    try:
        check_folder_paths(output, work)
        with ExitStack() as held:
            held.enter_context(run_lock(output, "output folder", cfg.lock_stale_after_s))
            if inside(work, output):
                claim_output(output, cfg.overwrite)
                claim_work(work, cfg.overwrite)
            else:  # a refused work folder leaves the output as it was
                held.enter_context(run_lock(work, "work folder", cfg.lock_stale_after_s))
                claim_work(work, cfg.overwrite)
                claim_output(output, cfg.overwrite)
            held.enter_context(run_log(output / "logs" / "run.log"))
            log.info(blas_kernels.describe())
            # what `conceptprune status OUTPUT` plans from, while the run runs and after
            write_json(output / "logs" / STATUS_CONFIG, cfg.model_dump(mode="json"))
            runner: Runner | None = None
            try:
                runner = Runner(cfg, engine)
                try:
                    return runner.run()
                except BaseException:
                    runner.engine.cancel()
                    # writes a task still made while the driver cleaned up (an unfinished
                    # file, a staging folder made again) go now that no task runs
                    sweep_unfinished(output, work)
                    raise
                finally:
                    if runner.owns_engine:
                        runner.engine.close()
            except Exception as err:
                log_error(err, output, work)  # while the run's log file is attached
                raise
            except BaseException as err:  # a signal: the folders are released on the way out
                if exit_code_of(err) is not None:
                    logging.getLogger("conceptprune").warning(
                        "%s at %s; run the same command to resume", stop_name(err),
                        runner.at if runner is not None else "the start")
                raise
    except Exception as err:
        log_error(err)  # a folder refused or held by another run: nothing was written
        raise
