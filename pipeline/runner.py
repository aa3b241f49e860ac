"""Runs the steps of SPEC §1 in order on an engine, resuming from the work folder's markers."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline import remote_output
from pipeline.algorithms.exact import EXACT_VERSION
from pipeline.config import RunConfig
from pipeline.engines.base import Engine, Resources
from pipeline.engines.factory import make_engine
from pipeline.errors import BUG_MESSAGE, ConceptpruneError, RunError
from pipeline.io.embeddings import (
    EmbeddingPart,
    discover,
    discover_clip_retrieval,
    local_path,
)
from pipeline.io.vector_store import VectorStore
from pipeline.logs import run_log
from pipeline.output_guard import (
    check_folder_paths,
    claim_output,
    claim_work,
    inside,
    own,
    settle,
    written_by_runs,
)
from pipeline.report.publish import publish
from pipeline.run_lock import run_lock
from pipeline.stages import ledger_summary, subset
from pipeline.stages.clip_filter import run_clip_filter
from pipeline.stages.context import RunContext, StepResult
from pipeline.stages.dbp import reason as dbp_reason
from pipeline.stages.dbp import run_dbp
from pipeline.stages.ingest import IngestedPart, ingest_part
from pipeline.stages.ledger import LedgerTask, check_invariant, write_ledger_part
from pipeline.stages.report import build_report
from pipeline.stages.semdedup import reason as semdedup_reason
from pipeline.stages.semdedup import run_semdedup
from pipeline.workdir import (
    WorkDir,
    fingerprint,
    staged_dir,
    write_parquet,
)

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


def _file_identity(url: str | None) -> Any:
    """What pins an input file: its path, size and mtime; for a remote object its URL,
    size and ETag (or whatever version fields its store reports), so an object
    replaced in place is read again."""
    if url is None:
        return None
    path = local_path(url)
    if path is not None:
        st = path.stat()
        return [str(path.resolve()), st.st_size, st.st_mtime_ns]
    import fsspec

    fs, fs_path = fsspec.core.url_to_fs(url)
    info = fs.info(fs_path)
    version = [str(info.get(k)) for k in _VERSION_FIELDS if info.get(k) is not None]
    return [url, info.get("size"), *version]


# what an object store reports that changes when an object is replaced (s3fs, gcsfs, adlfs)
_VERSION_FIELDS = ("ETag", "etag", "VersionId", "generation", "md5Hash", "LastModified",
                   "last_modified", "mtime", "updated", "created")


@dataclass(frozen=True)
class IngestTask:
    part: EmbeddingPart
    out_dir: str
    keep_vectors: bool


def run_ingest_task(task: IngestTask) -> tuple[IngestedPart, np.ndarray | None]:
    return ingest_part(task.part, Path(task.out_dir), keep_vectors=task.keep_vectors)


def _part_fingerprint(part: EmbeddingPart) -> str:
    return fingerprint("ingest", EXACT_VERSION, part.shard, part.npz_image_key,
                       part.npz_text_key,
                       _file_identity(part.metadata_path), _file_identity(part.image_path),
                       _file_identity(part.text_path))


class Runner:
    """One run of the pipeline over precomputed embeddings."""

    def __init__(self, cfg: RunConfig, engine: Engine | None = None) -> None:
        self.cfg = cfg
        self.owns_engine = engine is None
        self.engine = engine or make_engine(cfg)
        self.work = WorkDir(cfg.work_dir)
        self.output = Path(cfg.output)
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []
        self.shard_urls: list[str] | None = None  # the image path's input shards
        self.embedded: list[dict[str, Any]] = []
        self.inputs: list[dict[str, Any]] = []  # the input set as pinned (report "inputs")
        self.ledger_summary: dict[str, Any] = {}
        self.derived_uids = (0, 0)  # (derived, read) on the embeddings path

    # -- steps ---------------------------------------------------------------------------
    def _ingest(self, parts: list[EmbeddingPart], fps: list[str]
                ) -> tuple[list[IngestedPart], dict[int, np.ndarray]]:
        """Ingest every part not done yet; also the unit vectors kept in memory, by part."""
        out_dir = self.work.step_dir("ingest")
        budget = int(self.cfg.vector_cache_gb * 2**30)
        cached: dict[int, np.ndarray] = {}
        # vectors come back to this process only on the local engine, within the cache budget
        keep = budget > 0 and self.engine.name == "local"
        done: dict[int, IngestedPart] = {}
        todo = []
        for part, fp in zip(parts, fps, strict=True):
            name = f"ingest-{part.index:05d}"
            if self.work.done(name, fp):
                done[part.index] = IngestedPart(**self.work.stats(name))
            else:
                todo.append((part, fp))
        tasks = [IngestTask(part, str(out_dir), keep) for part, _ in todo]
        results = self.engine.map(run_ingest_task, tasks, desc="read", total=len(tasks),
                                  unit="part", concurrent=True)
        for (part, fp), (ingested_part, vectors) in zip(todo, results, strict=True):
            if vectors is not None and vectors.nbytes <= budget:
                cached[part.index] = vectors
                budget -= vectors.nbytes
            else:
                budget = 0
            self.work.mark(f"ingest-{part.index:05d}", fp, ingested_part.to_json())
            done[part.index] = ingested_part
        ingested = [done[part.index] for part in parts]
        dims = {p.dim for p in ingested}
        if len(dims) > 1:
            first = {d: next(p.image_path for p, i in zip(parts, ingested, strict=True)
                             if i.dim == d) for d in sorted(dims)}
            raise RunError(
                "input parts have different embedding dimensions ("
                + ", ".join(f"{path} has dimension {d}" for d, path in first.items())
                + "): every part must come from the same model; re-embed the odd parts with "
                "it or move them out of the input"
            )
        return ingested, cached

    def step_fingerprints(self, part_fps: list[str]) -> dict[str, str]:
        """The fingerprint of every enabled step, each chained on the one before."""
        cfg = self.cfg
        seed_fp = [cfg.seed, cfg.kmeans.niter, cfg.kmeans.max_points_per_centroid]
        fps = {"read": fingerprint("ingest-all", part_fps)}
        fps["uids"] = fingerprint("uids", fps["read"])  # a function of what was read
        fp = fps["read"]
        for step in cfg.enabled_steps():
            section = getattr(cfg, step).model_dump()
            fp = fps[step] = fingerprint(step, fp, section,
                                         seed_fp if step != "clip_filter" else None)
        fps["write"] = fingerprint("write", fp, str(Path(cfg.output).resolve()),
                                   cfg.write.model_dump() if cfg.input.shards else None)
        return fps

    def _context(self, parts: list[IngestedPart], fps: dict[str, str]) -> RunContext:
        return RunContext(cfg=self.cfg, work=self.work, engine=self.engine, parts=parts,
                          store=VectorStore([p.vectors for p in parts], [p.rows for p in parts]),
                          fingerprints=fps)

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

    def _step(self, ctx: RunContext, name: str, earlier: tuple[str, ...], alive: list[int]
              ) -> StepResult:
        """A finished step's result, or the step run (resuming its finished units)."""
        start = time.perf_counter()
        fp = ctx.fingerprints[name]
        if self.work.done(name, fp):
            log.info("%s: already done, reusing %s", name, self.work.root / name)
            self.skipped.append(name)
            result = StepResult.from_json(self.work.stats(name))
        else:
            self.work.begin_step(name, fp)
            if name == "semdedup":
                result = run_semdedup(ctx, earlier, alive)
            elif name == "clip_filter":
                result = run_clip_filter(ctx, earlier, alive)
            else:
                result, clusters = run_dbp(ctx, earlier, alive)
                write_parquet(self.work.root / "dbp" / "clusters.parquet", clusters)
            self.work.mark(name, fp, result.to_json())
        self.timings[name] = time.perf_counter() - start
        return result

    def _nothing_usable(self, n: int, parts: int) -> str:
        """The error of an input without a single usable sample, with the commonest
        reasons (blaming the input, not a setting that needs samples)."""
        from pipeline.stages.context import ingest_path

        what = "input shards" if self.cfg.input.shards else "input parts"
        if n == 0:
            return (f"no usable sample in the input: no sample could be read from the {parts} "
                    f"{what} (empty, or damaged before their first sample); check them with "
                    "`tar tvf` or point the input at other files")
        reasons: Counter = Counter()
        for part in range(min(parts, 16)):
            path = ingest_path(self.work.root, part)
            if path.exists():
                reasons.update(pq.read_table(path, columns=["failed_reason"])
                               .column(0).drop_null().to_pylist())
        common = "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common(3))
        return (f"no usable sample in the input: all {n} samples read from the {parts} {what} "
                f"failed (commonest reasons: {common}); fix the input, or see every sample's "
                "reason in the work folder's ingest/ tables")

    # -- the run -------------------------------------------------------------------------
    def _embed(self) -> list[EmbeddingPart]:
        """Embed the input shards not embedded yet; their clip-retrieval folder's parts."""
        from pipeline.io.decode import DECODE_VERSION
        from pipeline.io.shards import expand_shards, shard_names

        cfg = self.cfg
        self.shard_urls = self._outside_output(expand_shards(cfg.input.shards))
        names = shard_names(self.shard_urls)  # their derived uids depend on the whole list
        out_dir = self.work.step_dir("embed")
        settings = {**cfg.embed.model_dump(exclude={"workers"}), "decode": DECODE_VERSION,
                    "exact": EXACT_VERSION}
        self.inputs = [{"shard": name, "file": _file_identity(url)}
                       for url, name in zip(self.shard_urls, names, strict=True)]
        fps = {i: fingerprint("embed", pinned, settings) for i, pinned in enumerate(self.inputs)}
        todo = [(i, url, names[i]) for i, url in enumerate(self.shard_urls)
                if not self.work.done(f"embed-{i:05d}", fps[i])]
        # what another input list or other settings left: shard numbers past this list's
        # end, and every file of a shard embedded again (its settings may write fewer files)
        again = {i for i, _, _ in todo}
        _remove_embed_files(out_dir, lambda num: num >= len(self.shard_urls) or num in again)
        for marker in self.work.markers.glob("embed-*.json"):
            if int(marker.stem.split("-")[1]) >= len(self.shard_urls):
                marker.unlink()
        start = time.perf_counter()
        if len(todo) < len(self.shard_urls):
            log.info("embed: %d of %d shards already embedded with these settings, reusing "
                     "them", len(self.shard_urls) - len(todo), len(self.shard_urls))
        if todo:
            self._embed_shards(todo, out_dir, fps)
        self.timings["embed"] = time.perf_counter() - start
        self.embedded = [self.work.stats(f"embed-{i:05d}") for i in range(len(self.shard_urls))]
        return discover_clip_retrieval(str(out_dir))

    def _embed_shards(self, todo: list[tuple[int, str, str]], out_dir: Path,
                      fps: dict[int, str]) -> None:
        """A map over the shards: models loaded once per worker (on a GPU when the embed
        device is one), every shard marked done by its worker after its files."""
        from functools import partial

        from pipeline.stages.embed import EmbedTask, embed_task, load_models

        cfg = self.cfg.embed
        local = self.engine.name == "local"
        # this process: one task keeps one decoding pipeline across all shards; a cluster:
        # a task per shard, spread over the workers
        groups = [todo] if local else [[shard] for shard in todo]
        tasks = [EmbedTask(tuple(g), tuple(fps[i] for i, _, _ in g), str(out_dir),
                           str(self.work.root), cfg.batch_size, cfg.workers,
                           self.cfg.progress and local, cfg.decoding()) for g in groups]
        gpu = Resources(gpus=1.0) if _embeds_on_gpu(cfg.device) else Resources()
        log.info("embedding %d shards", len(todo))
        for _ in self.engine.map(embed_task, tasks, desc="embed", total=len(tasks),
                                 unit="shard" if not local else "run", resources=gpu,
                                 setup=partial(load_models, cfg, self.cfg.seed)):
            pass

    def _ours(self, url: str) -> bool:
        path = local_path(url)
        return path is not None and written_by_runs(path, self.output, self.work.root)

    def _outside_output(self, urls: list[str]) -> list[str]:
        """The input shards, less those where a run writes (the output's shards/, the work
        folder): a run never reads what a run wrote, as when an input glob matches an
        earlier run's output shards."""
        ours = {u for u in urls if self._ours(u)}
        if ours and len(ours) == len(urls):
            raise RunError(
                f"every input shard lies where this run writes its output ({self.output}; e.g. "
                f"{sorted(ours)[0]}): a run never reads what a run wrote; move the shards out "
                "or choose another output folder")
        if ours:
            log.warning("%d input shards are an earlier run's output, in %s, and are left out "
                        "(a run never reads what a run wrote): %s%s", len(ours), self.output,
                        ", ".join(sorted(ours)[:3]), ", ..." if len(ours) > 3 else "")
        return [u for u in urls if u not in ours]

    def _parts(self) -> list[EmbeddingPart]:
        if self.cfg.input.shards:
            return self._embed()
        for folder in (self.cfg.input.embeddings, self.cfg.input.datacomp):
            if folder and self._ours(folder):
                raise RunError(
                    f"the input {folder} lies where this run writes its output "
                    f"({self.output}): a run never reads what a run wrote; choose another "
                    "output folder")
        parts = discover(self.cfg.input)
        self.inputs = [{"part": p.shard, "files": [_file_identity(f) for f in
                                                   (p.metadata_path, p.image_path, p.text_path)
                                                   if f is not None]} for p in parts]
        return parts

    def run(self) -> RunSummary:
        cfg = self.cfg
        parts = self._parts()
        part_fps = [_part_fingerprint(p) for p in parts]
        fps = self.step_fingerprints(part_fps)
        report_path = self.output / "report" / "report.json"
        if self.work.done("write", fps["write"]) and report_path.exists():
            log.info("run already complete for this input and config: %s", report_path)
            report = json.loads(report_path.read_text())
            return RunSummary(self.output, report["input_samples"], report["kept"], report,
                              ["read", *cfg.enabled_steps(), "write"])

        t0 = time.perf_counter()
        ingested, cached = self._ingest(parts, part_fps)
        self.timings["read"] = time.perf_counter() - t0
        ctx = self._context(ingested, fps)
        for index, vectors in cached.items():
            ctx.store.preload(index, vectors)
        del cached
        n = sum(p.rows for p in ingested)
        failed = sum(p.failed for p in ingested)
        self.derived_uids = (sum(p.derived for p in ingested), n)
        alive = [p.rows - p.failed for p in ingested]
        duplicates = self._unique_uids(ctx, alive)
        failed += sum(duplicates)
        alive = [a - d for a, d in zip(alive, duplicates, strict=True)]
        if sum(alive) == 0:
            raise RunError(self._nothing_usable(n, len(ingested)))
        steps: list[tuple[str, int, int]] = []
        extra: dict[str, Any] = {}
        done: list[str] = []
        for name in cfg.enabled_steps():
            result = self._step(ctx, name, tuple(done), alive)
            steps.append((name, sum(alive), sum(result.removed)))
            alive = result.alive_out
            done.append(name)
            if name == "semdedup":
                extra["semdedup"] = {"k": result.extra["k"], "eps": cfg.semdedup.eps}
            elif name == "dbp":
                extra["dbp"] = {key: result.extra[key]
                                for key in ("k", "target", "reaching", "keep")}
        clusters = (pq.read_table(self.work.root / "dbp" / "clusters.parquet")
                    if cfg.dbp.enabled else None)

        start = time.perf_counter()
        shards, kept_per_part = self._write(ctx, tuple(done))
        kept = sum(kept_per_part)
        self.timings["write"] = time.perf_counter() - start
        written = self._write_shards(kept_per_part)

        if self.shard_urls is not None:
            extra["embed"] = self._embed_report()
        extra["subset"] = self._subset_report(extra.get("embed"), kept)
        if written is not None:
            extra["output_shards"] = written
        extra["engine"] = self.engine.name
        extra["inputs"] = self.inputs
        extra.update(self.ledger_summary)
        report = build_report(cfg, n, kept, failed, steps, clusters, extra, shards,
                              self.timings)
        publish(report, report_path.parent, cfg.model_dump(mode="json"), self._examples(report))
        settle(self.output)
        self.work.mark("write", fps["write"])
        ctx.store.close()
        return RunSummary(self.output, n, kept, report, self.skipped)

    def _write(self, ctx: RunContext, steps: tuple[str, ...]) -> tuple[dict, list[int]]:
        """The ledger, part by part, then subset.npy by uid ranges; returns the per-shard
        counts and the kept count of every part."""
        cfg = self.cfg
        reasons = []
        if "semdedup" in steps:
            reasons.append(("semdedup", semdedup_reason(cfg.semdedup.eps)))
        if "dbp" in steps:
            reasons.append(("dbp", dbp_reason(cfg.dbp.keep)))
        last = steps[-1] if steps else "read"
        self.work.reset_step("subset")
        subset_dir = self.work.step_dir("subset")
        read_per_shard: Counter = Counter()
        kept: list[int] = []
        summaries: list[dict[str, Any]] = []
        # a fresh folder swapped in whole: parts of an earlier run over other inputs never
        # mix with these, and a broken invariant leaves the last good ledger in place
        with staged_dir(self.output / "ledger") as staging:
            tasks = [LedgerTask(str(self.work.root), p.index, steps, tuple(reasons), last,
                                str(staging / f"part-{p.index:05d}.parquet"), str(subset_dir))
                     for p in ctx.parts]
            for got in self.engine.map(write_ledger_part, tasks, desc="ledger",
                                       total=len(tasks), unit="part", concurrent=True):
                read_per_shard.update(got["read"])
                kept.append(got["kept"])
                summaries.append(got["summary"])
            shards = check_invariant(staging, read_per_shard)
            own(self.output, "ledger", staging)
        self.ledger_summary = ledger_summary.merge(summaries)
        bounds = subset.range_bounds(sum(kept))
        ranges = [subset.RangeTask(str(subset_dir), len(ctx.parts), i, bounds[i], bounds[i + 1])
                  for i in range(len(bounds) - 1)]
        total = sum(self.engine.map(subset.gather_range, ranges, desc="subset",
                                    total=len(ranges), unit="range", concurrent=True))
        subset.concatenate(subset_dir, len(ranges), total, self.output / "subset.npy")
        return shards, kept

    def _write_shards(self, kept: list[int]) -> dict[str, Any] | None:
        """Copy the kept samples into new shards (image path, write.enabled): a map over runs
        of input shards, then the shards numbered on in run order."""
        if self.shard_urls is None or not self.cfg.write.enabled:
            return None
        from pipeline.stages import write_shards as ws

        cfg = self.cfg.write
        start = time.perf_counter()
        ledger = self.output / "ledger"
        metadata = self.work.step_dir("embed") / "metadata"
        ranges = ws.plan_ranges(kept, cfg.shards_per_task * cfg.max_count)
        # written beside the output's shards/ and swapped in whole: no shard of an earlier
        # run (more shards, other samples) or of a killed one is ever left among them
        with staged_dir(self.output / "shards") as staging:
            tasks = [ws.WriteTask(
                tuple(self.shard_urls[a:b]),
                tuple(str(ledger / f"part-{i:05d}.parquet") for i in range(a, b)),
                tuple(str(metadata / f"metadata_{i}.parquet") for i in range(a, b)),
                str(staging / f".range-{r:05d}"), cfg.max_count, cfg.max_bytes)
                for r, (a, b) in enumerate(ranges)]
            results = list(self.engine.map(ws.write_range, tasks, desc="write shards",
                                           total=len(tasks), unit="run", concurrent=True))
            written = ws.number_shards(staging, results, cfg.shard_name)
            ws.write_indexes(staging, written)
            own(self.output, "shards", staging)
        by_span = sum(r["by_span"] for r in results)
        by_parsing = sum(r["by_parsing"] for r in results)
        not_copied = sum(r["not_copied"] for r in results)
        log.info("write: %d samples copied by their recorded spans, %d by reading their shard "
                 "again", by_span, by_parsing)
        self.timings["write_shards"] = time.perf_counter() - start
        return {"folder": str(self.output / "shards"), "count": len(written),
                "sizes": str(self.output / "shards" / ws.SIZES),
                "samples": sum(w[1] for w in written), "bytes": sum(w[2] for w in written),
                "copied_by_span": by_span, "copied_by_parsing": by_parsing,
                "kept_not_copied": not_copied}

    def _examples(self, report: dict[str, Any]) -> Callable[[Path], dict] | None:
        """How the page's pictures are made (image path with dbp), or None."""
        if self.shard_urls is None or not report.get("clusters"):
            return None
        from pipeline.io.shards import shard_names
        from pipeline.report.examples import collect_examples

        urls = dict(zip(shard_names(self.shard_urls), self.shard_urls, strict=True))
        return lambda folder: collect_examples(
            self.output / "ledger", report["clusters"], urls, folder,
            self.cfg.embed.decoding(), "semdedup" in report)

    def _subset_report(self, embed: dict[str, Any] | None, kept: int) -> dict[str, Any]:
        """What subset.npy holds, and whether its uids are the samples' own (``given``),
        derived from shard names and keys (``derived``), or both (``mixed``): a subset of
        derived uids matches no json uid, which DataComp's resharder needs."""
        if embed is not None:
            derived, read = embed["derived_uids"], sum(e["samples"] for e in self.embedded)
        else:
            derived, read = self.derived_uids
        kind = "given" if not derived else "derived" if derived >= read else "mixed"
        return {"file": "subset.npy", "uids": kept, "uid_source": kind}

    def _embed_report(self) -> dict[str, Any]:
        damaged = [{"shard": e["url"], "samples_read": e["samples"], "damage": e["damage"],
                    "expected": e["expected"]} for e in self.embedded if e.get("damage")]
        models = self.embedded[0]["models"] if self.embedded else {}
        if models.get("clip_random_weights"):
            log.warning("the CLIP model had RANDOM WEIGHTS: clip scores carry no meaning")
        from pipeline.io.decode import DECODE_VERSION

        decoding = {"rules": "SPEC §5b", "version": DECODE_VERSION,
                    "max_pixels": self.cfg.embed.max_pixels,
                    "background": self.cfg.embed.background}
        derived = sum(e.get("derived", 0) for e in self.embedded)
        if derived:
            log.warning(
                "%d of %d samples have no uid in their json: their uids are derived (sha256 of "
                "the shard's name and the key, SPEC §5) and appear in no sample's json, so "
                "tools that match subset.npy against json uids (DataComp's resharder) find "
                "none of them; carry real uids with img2dataset's --save_additional_columns "
                "'[\"uid\"]' or DataComp's metadata", derived,
                sum(e["samples"] for e in self.embedded))
        return {"models": models, "shards": len(self.embedded), "damaged_shards": damaged,
                "failed": sum(e["failed"] for e in self.embedded), "decoding": decoding,
                "derived_uids": derived}


def _run_to_remote(cfg: RunConfig, engine: Engine | None) -> RunSummary:
    """The run into a local mirror of the remote output, its report saying the remote
    output and how to rerun it, then the upload."""
    from pipeline.report.publish import restate

    try:
        mirror, work = remote_output.local_places(cfg.output, cfg.work)
        remote_output.claim_remote(cfg.output, cfg.overwrite)
    except Exception as err:
        _log_error(err)
        raise
    summary = run(cfg.model_copy(update={"output": str(mirror), "work": str(work)}), engine)
    report = restate(mirror / "report", cfg.model_dump(mode="json"),
                     f"conceptprune run {cfg.output}/report/config.yaml")
    remote_output.upload(mirror, cfg.output)
    return RunSummary(summary.output, summary.input_samples, summary.kept, report,
                      summary.skipped_steps, remote=cfg.output)


def _remove_embed_files(folder: Path, stale: Callable[[int], bool]) -> None:
    """Remove the embed step's numbered files (``KIND/KIND_N.ext``) whose N is ``stale``."""
    for path in folder.glob("*/*_*.*"):
        num = path.stem.rsplit("_", 1)[-1]
        if num.isdigit() and stale(int(num)):
            path.unlink(missing_ok=True)


def _embeds_on_gpu(device: str) -> bool:
    """Whether embed tasks declare a GPU: a CUDA device named, or auto with one visible here."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def run(cfg: RunConfig, engine: Engine | None = None) -> RunSummary:
    """One run, holding its output (and work) folder alone, in folders it owns; its log goes
    to OUTPUT/logs/run.log. An engine made here from ``cfg.engine`` is closed at the end.
    An output in object storage is written locally first, then uploaded
    (``remote_output``)."""
    if remote_output.is_remote(cfg.output):
        return _run_to_remote(cfg, engine)
    output, work = Path(cfg.output), cfg.work_dir
    try:
        check_folder_paths(output, work)
        with ExitStack() as held:
            held.enter_context(run_lock(output, "output folder"))
            if inside(work, output):
                claim_output(output, cfg.overwrite)
                claim_work(work, cfg.overwrite)
            else:  # a refused work folder leaves the output as it was
                held.enter_context(run_lock(work, "work folder"))
                claim_work(work, cfg.overwrite)
                claim_output(output, cfg.overwrite)
            held.enter_context(run_log(output / "logs" / "run.log"))
            try:
                runner = Runner(cfg, engine)
                try:
                    return runner.run()
                finally:
                    if runner.owns_engine:
                        runner.engine.close()
            except Exception as err:
                _log_error(err)  # while the run's log file is attached
                raise
    except Exception as err:
        _log_error(err)  # a folder refused or held by another run: nothing was written
        raise


def _log_error(err: BaseException) -> None:
    """An error a person can fix as its one-line message; anything else (a bug) with its
    traceback, saying so."""
    if getattr(err, "_logged", False):
        return
    logger = logging.getLogger("conceptprune")
    if isinstance(err, ConceptpruneError | OSError):
        logger.error("%s", err)
    else:
        logger.critical(BUG_MESSAGE.replace("above", "below"), exc_info=err)
    err._logged = True  # type: ignore[attr-defined]


