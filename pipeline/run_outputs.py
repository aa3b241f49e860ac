"""A run's output side: the ledger and subset.npy, the kept samples copied into new shards,
and the report's sections about them (SPEC §6, §7)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.engines.base import Engine
from pipeline.output_guard import own
from pipeline.progress import Samples, step_progress
from pipeline.run_inputs import Inputs
from pipeline.stages import ledger_summary, subset
from pipeline.stages.context import RunContext
from pipeline.stages.ledger import LedgerTask, check_invariant, write_ledger_part
from pipeline.stages.step import Step
from pipeline.workdir import WorkDir, staged_dir

log = logging.getLogger(__name__)
LISTED_SHARDS = 20  # output shards the report names one by one (all are in shards/sizes.json)


class OutputSide:
    """The steps after the last pruning step, on one engine, work folder and output."""

    def __init__(self, cfg: RunConfig, engine: Engine, work: WorkDir) -> None:
        self.cfg = cfg
        self.engine = engine
        self.work = work
        self.output = Path(cfg.output)
        self.ledger_summary: dict[str, Any] = {}

    def write(self, ctx: RunContext, steps: Sequence[Step]
              ) -> tuple[dict[str, dict[str, int]], list[int]]:
        """The ledger, part by part, then subset.npy by uid ranges; returns the per-shard
        counts and the kept count of every part."""
        names = tuple(step.name for step in steps)
        reasons = tuple((step.name, why) for step in steps
                        if (why := step.ledger_reason(self.cfg)) is not None)
        last = names[-1] if names else "read"
        self.work.reset_step("subset")
        subset_dir = self.work.step_dir("subset")
        read_per_shard: Counter = Counter()
        kept: list[int] = []
        summaries: list[dict[str, Any]] = []
        # a fresh folder swapped in whole: parts of an earlier run over other inputs never
        # mix with these, and a broken invariant leaves the last good ledger in place
        with staged_dir(self.output / "ledger") as staging:
            tasks = [LedgerTask(str(self.work.root), p.index, names, reasons, last,
                                str(staging / f"part-{p.index:05d}.parquet"), str(subset_dir))
                     for p in ctx.parts]
            with step_progress(self.cfg, "ledger", len(tasks), "part") as meter:
                for got in self.engine.map(write_ledger_part, tasks, desc="ledger",
                                           total=len(tasks), unit="part", concurrent=True,
                                           progress=meter):
                    read_per_shard.update(got["read"])
                    kept.append(got["kept"])
                    summaries.append(got["summary"])
            shards = check_invariant(staging, read_per_shard)
            own(self.output, "ledger", staging)
        self.ledger_summary = {**ledger_summary.merge(summaries), "ledger": {
            "folder": "ledger", "parts": len(tasks), "rows": sum(read_per_shard.values())}}
        bounds = subset.range_bounds(sum(kept))
        ranges = [subset.RangeTask(str(subset_dir), len(ctx.parts), i, bounds[i], bounds[i + 1])
                  for i in range(len(bounds) - 1)]
        total = sum(self.engine.map(subset.gather_range, ranges, desc="subset",
                                    total=len(ranges), unit="range", concurrent=True))
        subset.concatenate(subset_dir, len(ranges), total, self.output / "subset.npy")
        return shards, kept

    def write_shards(self, inputs: Inputs, kept: list[int], timings: dict[str, float]
                     ) -> dict[str, Any] | None:
        """Copy the kept samples into new shards (image path, write.enabled): a map over runs
        of input shards, then the shards numbered on in run order."""
        if inputs.shard_urls is None or not self.cfg.write.enabled:
            return None
        from pipeline.stages import write_shards as ws

        cfg = self.cfg.write
        urls = inputs.shard_urls
        start = time.perf_counter()
        ledger = self.output / "ledger"
        metadata = self.work.step_dir("embed") / "metadata"
        ranges = ws.plan_ranges(kept, cfg.shards_per_task * cfg.max_count)
        # written beside the output's shards/ and swapped in whole: no shard of an earlier
        # run (more shards, other samples) or of a killed one is ever left among them
        with staged_dir(self.output / "shards") as staging:
            tasks = [ws.WriteTask(
                tuple(urls[a:b]),
                tuple(str(ledger / f"part-{i:05d}.parquet") for i in range(a, b)),
                tuple(str(metadata / f"metadata_{i}.parquet") for i in range(a, b)),
                str(staging / f".range-{r:05d}"), cfg.max_count, cfg.max_bytes)
                for r, (a, b) in enumerate(ranges)]
            results = []
            with step_progress(self.cfg, "write shards", len(tasks), "range",
                               Samples(sum(kept), "samples", "samples")) as meter:
                for got in self.engine.map(ws.write_range, tasks, desc="write shards",
                                           total=len(tasks), unit="range", concurrent=True,
                                           progress=meter):
                    meter.advance(samples=sum(count for _, count, _ in got["shards"]))
                    results.append(got)
            written = ws.number_shards(staging, results, cfg.shard_name)
            ws.write_indexes(staging, written)
            own(self.output, "shards", staging)
        by_span = sum(r["by_span"] for r in results)
        by_parsing = sum(r["by_parsing"] for r in results)
        not_copied = sum(r["not_copied"] for r in results)
        log.info("write: %d samples copied by their recorded spans, %d by reading their shard "
                 "again", by_span, by_parsing)
        timings["write_shards"] = time.perf_counter() - start
        return {"folder": str(self.output / "shards"), "count": len(written),
                "sizes": str(self.output / "shards" / ws.SIZES),
                "samples": sum(w[1] for w in written), "bytes": sum(w[2] for w in written),
                "copied_by_span": by_span, "copied_by_parsing": by_parsing,
                "kept_not_copied": not_copied,
                "listed": [{"file": f"{name}.tar", "samples": count, "bytes": size}
                           for name, count, size in written[:LISTED_SHARDS]]}

    def examples(self, inputs: Inputs, report: dict[str, Any]
                 ) -> Callable[[Path], dict] | None:
        """How the page's pictures are made (image path with dbp), or None."""
        if inputs.shard_urls is None or not report.get("clusters"):
            return None
        from pipeline.io.shards import shard_names
        from pipeline.report.examples import collect_examples

        urls = dict(zip(shard_names(inputs.shard_urls), inputs.shard_urls, strict=True))
        clip_filter = any(s["name"] == "clip_filter" for s in report["stages"])
        return lambda folder: collect_examples(
            self.output / "ledger", report["clusters"], urls, folder,
            self.cfg.embed.decoding(), "semdedup" in report, seed=self.cfg.seed,
            metadata=self.work.step_dir("embed") / "metadata", clip_filter=clip_filter)

    @staticmethod
    def subset_report(inputs: Inputs, embed: dict[str, Any] | None, kept: int,
                      derived_uids: tuple[int, int]) -> dict[str, Any]:
        """What subset.npy holds, and whether its uids are the samples' own (``given``),
        derived from shard names and keys (``derived``), or both (``mixed``): a subset of
        derived uids matches no json uid, which DataComp's resharder needs."""
        if embed is not None:
            derived, read = embed["derived_uids"], sum(e["samples"] for e in inputs.embedded)
        else:
            derived, read = derived_uids
        kind = "given" if not derived else "derived" if derived >= read else "mixed"
        return {"file": "subset.npy", "uids": kept, "uid_source": kind}

    def embed_report(self, inputs: Inputs) -> dict[str, Any]:
        """The report's ``embed`` section: models, damaged shards, decoding rules."""
        embedded = inputs.embedded
        damaged = [{"shard": e["url"], "samples_read": e["samples"], "damage": e["damage"],
                    "expected": e["expected"]} for e in embedded if e.get("damage")]
        models = embedded[0]["models"] if embedded else {}
        if models.get("clip_random_weights"):
            log.warning("the CLIP model had RANDOM WEIGHTS: clip scores carry no meaning")
        from pipeline.io.decode import DECODE_VERSION

        decoding = {"rules": "SPEC §5b", "version": DECODE_VERSION,
                    "max_pixels": self.cfg.embed.max_pixels,
                    "background": self.cfg.embed.background}
        derived = sum(e.get("derived", 0) for e in embedded)
        if derived:
            log.warning(
                "%d of %d samples have no uid in their json: their uids are derived (sha256 of "
                "the shard's name and the key, SPEC §5) and appear in no sample's json, so "
                "tools that match subset.npy against json uids (DataComp's resharder) find "
                "none of them; carry real uids with img2dataset's --save_additional_columns "
                "'[\"uid\"]' or DataComp's metadata", derived,
                sum(e["samples"] for e in embedded))
        return {"models": models, "shards": len(embedded), "damaged_shards": damaged,
                "failed": sum(e["failed"] for e in embedded), "decoding": decoding,
                "derived_uids": derived}
