"""Runs the steps of SPEC §1 in order on an engine, resuming from the work folder's markers."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.engines.base import Engine
from pipeline.engines.factory import make_engine
from pipeline.ids import subset_array
from pipeline.io.embeddings import (
    EmbeddingPart,
    discover,
    discover_clip_retrieval,
    local_path,
)
from pipeline.io.tables import numpy_column
from pipeline.io.vector_store import VectorStore
from pipeline.stages.clip_filter import ClipFilterResult, run_clip_filter
from pipeline.stages.context import RunContext
from pipeline.stages.dbp import DBPResult, run_dbp
from pipeline.stages.ingest import IngestedPart, ingest_part
from pipeline.stages.ledger import check_invariant, decide, ledger_table
from pipeline.stages.report import build_report
from pipeline.stages.semdedup import SemDeDupResult, run_semdedup
from pipeline.workdir import (
    WorkDir,
    fingerprint,
    staged_dir,
    write_json,
    write_npy,
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

    @property
    def report_path(self) -> Path:
        return self.output / "report" / "report.json"


def _file_identity(url: str | None) -> Any:
    if url is None:
        return None
    path = local_path(url)
    if path is None:
        return url
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class IngestTask:
    part: EmbeddingPart
    out_dir: str
    keep_vectors: bool


def run_ingest_task(task: IngestTask) -> tuple[IngestedPart, np.ndarray | None]:
    return ingest_part(task.part, Path(task.out_dir), keep_vectors=task.keep_vectors)


@dataclass(frozen=True)
class LedgerTask:
    ingest_path: str
    out_path: str
    columns: tuple  # this part's slice of every per-sample decision, in ledger_table's order


def write_ledger_part(task: LedgerTask) -> Counter:
    """Write one part's ledger; returns the samples read per source shard."""
    ingest = pq.read_table(task.ingest_path, columns=["key", "uid", "shard", "failed_reason",
                                                      "failed_stage", "clip_score"])
    write_parquet(Path(task.out_path), ledger_table(ingest, *task.columns))
    return Counter({e["values"]: e["counts"]
                    for e in ingest.column("shard").value_counts().to_pylist()})


def _part_fingerprint(part: EmbeddingPart) -> str:
    return fingerprint("ingest", part.shard, part.npz_image_key, part.npz_text_key,
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
            raise ValueError(
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
        fp = fps["read"]
        for step in cfg.enabled_steps():
            section = getattr(cfg, step).model_dump()
            fp = fps[step] = fingerprint(step, fp, section,
                                         seed_fp if step != "clip_filter" else None)
        fps["write"] = fingerprint("write", fp, str(Path(cfg.output).resolve()),
                                   cfg.write.model_dump() if cfg.input.shards else None)
        return fps

    def _context(self, parts: list[IngestedPart]) -> RunContext:
        cols = ["uid_hi", "uid_lo", "failed_reason", "clip_score"]
        tables = [pq.read_table(self._ingest_path(p), columns=cols) for p in parts]
        t = pa.concat_tables(tables)
        return RunContext(
            cfg=self.cfg, work=self.work, engine=self.engine, parts=parts,
            store=VectorStore([p.vectors for p in parts], [p.rows for p in parts]),
            uid_hi=numpy_column(t, "uid_hi", 0, "uint64"),
            uid_lo=numpy_column(t, "uid_lo", 0, "uint64"),
            usable=t.column("failed_reason").is_null().to_numpy(zero_copy_only=False),
            clip_score=numpy_column(t, "clip_score", np.nan, "float32"),
        )

    def _ingest_path(self, part: IngestedPart) -> Path:
        return self.work.root / "ingest" / f"part-{part.index:05d}.parquet"

    def _step(self, name: str, fp: str, compute, load) -> Any:  # noqa: ANN001
        """Load a finished step's result, or compute it and mark it done."""
        start = time.perf_counter()
        if self.work.done(name, fp):
            log.info("%s: already done, reusing %s", name, self.work.root / name)
            self.skipped.append(name)
            result = load()
        else:
            self.work.reset_step(name)
            result = compute()
            self.work.mark(name, fp)
        self.timings[name] = time.perf_counter() - start
        return result

    def _semdedup(self, ctx: RunContext, alive: np.ndarray, fp: str) -> SemDeDupResult:
        folder = self.work.root / "semdedup"

        def compute() -> SemDeDupResult:
            res = run_semdedup(ctx, alive)
            write_npy(folder / "centroids.npy", res.centroids)
            write_parquet(folder / "decisions.parquet", res.table())
            return res

        return self._step("semdedup", fp, compute, lambda: SemDeDupResult.from_table(
            pq.read_table(folder / "decisions.parquet"), np.load(folder / "centroids.npy")))

    def _clip_filter(self, ctx: RunContext, alive: np.ndarray, fp: str) -> ClipFilterResult:
        path = self.work.root / "clip_filter" / "decisions.parquet"

        def compute() -> ClipFilterResult:
            res = run_clip_filter(ctx, alive)
            write_parquet(path, res.table())
            return res

        return self._step("clip_filter", fp, compute,
                          lambda: ClipFilterResult.from_table(pq.read_table(path)))

    def _dbp(self, ctx: RunContext, alive: np.ndarray, fp: str) -> DBPResult:
        folder = self.work.root / "dbp"

        def compute() -> DBPResult:
            res = run_dbp(ctx, alive)
            write_npy(folder / "centroids.npy", res.centroids)
            write_parquet(folder / "clusters.parquet", res.clusters)
            write_parquet(folder / "decisions.parquet", res.table())
            write_json(folder / "target.json", {"target": res.target})
            return res

        def load() -> DBPResult:
            return DBPResult.from_tables(
                pq.read_table(folder / "decisions.parquet"),
                pq.read_table(folder / "clusters.parquet"), np.load(folder / "centroids.npy"),
                json.loads((folder / "target.json").read_text())["target"])

        return self._step("dbp", fp, compute, load)

    # -- the run -------------------------------------------------------------------------
    def _embed(self) -> list[EmbeddingPart]:
        """Embed the input shards not embedded yet; their clip-retrieval folder's parts."""
        from pipeline.io.shards import expand_shards

        cfg = self.cfg
        self.shard_urls = expand_shards(cfg.input.shards)
        out_dir = self.work.step_dir("embed")
        settings = cfg.embed.model_dump(exclude={"workers"})
        fps = {i: fingerprint("embed", _file_identity(url), settings)
               for i, url in enumerate(self.shard_urls)}
        todo = [(i, url) for i, url in enumerate(self.shard_urls)
                if not self.work.done(f"embed-{i:05d}", fps[i])]
        start = time.perf_counter()
        if len(todo) < len(self.shard_urls):
            log.info("embed: %d of %d shards already embedded with these settings, reusing "
                     "them", len(self.shard_urls) - len(todo), len(self.shard_urls))
        if todo:
            self._embed_shards(todo, out_dir, fps)
        self.timings["embed"] = time.perf_counter() - start
        self.embedded = [self.work.stats(f"embed-{i:05d}") for i in range(len(self.shard_urls))]
        return discover_clip_retrieval(str(out_dir))

    def _embed_shards(self, todo: list[tuple[int, str]], out_dir: Path,
                      fps: dict[int, str]) -> None:
        from pipeline.embed.encoder import BatchEncoder
        from pipeline.embed.models import load_clip, load_cluster_encoder
        from pipeline.stages.embed import EmbeddedShard, embed_shards

        cfg = self.cfg.embed
        clip = load_clip(cfg.model, cfg.pretrained, cfg.device, cfg.precision,
                         seed=self.cfg.seed)
        cluster = None
        if cfg.cluster_model:
            cluster = load_cluster_encoder(cfg.cluster_model, cfg.cluster_weights, cfg.device,
                                           seed=self.cfg.seed)
        models = {"clip": clip.describe(), "clip_random_weights": clip.random_weights,
                  "cluster": None if cluster is None else cluster.describe(),
                  "cluster_random_weights": None if cluster is None else cluster.random_weights}
        log.info("embedding %d shards with %s%s", len(todo), models["clip"],
                 f"; clustering on {models['cluster']}" if cluster else "")
        bar = self.engine.bar("embed", total=0, unit="img")
        bar.total = None

        def done(shard: EmbeddedShard) -> None:
            self.work.mark(f"embed-{shard.index:05d}", fps[shard.index],
                           {**shard.to_json(), "models": models})

        with bar:
            embed_shards(todo, BatchEncoder(clip, cluster), out_dir, cfg.batch_size, cfg.workers,
                         done, progress=bar.update)

    def _parts(self) -> list[EmbeddingPart]:
        if self.cfg.input.shards:
            return self._embed()
        return discover(self.cfg.input)

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
        ctx = self._context(ingested)
        for index, vectors in cached.items():
            ctx.store.preload(index, vectors)
        del cached
        n = ctx.size
        alive = ctx.usable.copy()
        steps: list[tuple[str, int, int]] = []
        removals: list[tuple[str, np.ndarray, np.ndarray]] = []
        sem = dbp = None

        if cfg.semdedup.enabled:
            sem = self._semdedup(ctx, alive, fps["semdedup"])
            why = np.full(n, f"near-duplicate: similarity to dup_of > 1 - eps = "
                             f"{1 - cfg.semdedup.eps:g}", dtype=object)
            steps.append(("semdedup", int(alive.sum()), int((sem.removed & alive).sum())))
            removals.append(("semdedup", sem.removed, why))
            alive &= ~sem.removed
        if cfg.clip_filter.enabled:
            clip = self._clip_filter(ctx, alive, fps["clip_filter"])
            steps.append(("clip_filter", int(alive.sum()), int((clip.removed & alive).sum())))
            removals.append(("clip_filter", clip.removed, clip.reason))
            alive &= ~clip.removed
        if cfg.dbp.enabled:
            dbp = self._dbp(ctx, alive, fps["dbp"])
            why = np.full(n, f"over its concept's budget (keeps the {cfg.dbp.keep} members)",
                          dtype=object)
            steps.append(("dbp", int(alive.sum()), int((dbp.removed & alive).sum())))
            removals.append(("dbp", dbp.removed, why))
            alive &= ~dbp.removed

        last = (cfg.enabled_steps() or ["read"])[-1]
        start = time.perf_counter()
        shards = self._write(ctx, removals, last, alive, sem, dbp)
        self.timings["write"] = time.perf_counter() - start
        written = self._write_shards(len(parts))

        extra: dict[str, Any] = {}
        if sem is not None:
            extra["semdedup"] = {"k": sem.k, "eps": cfg.semdedup.eps}
        if dbp is not None:
            extra["dbp"] = {"k": cfg.dbp.k, "target": dbp.target,
                            "reaching": steps[-1][1], "keep": cfg.dbp.keep}
        if self.shard_urls is not None:
            extra["embed"] = self._embed_report()
        if written is not None:
            extra["output_shards"] = written
        extra["engine"] = self.engine.name
        failed = int((~ctx.usable).sum())
        report = build_report(cfg, n, int(alive.sum()), failed, steps,
                              dbp.clusters if dbp is not None else None, extra, shards,
                              self.timings)
        write_json(report_path, report)
        self.work.mark("write", fps["write"])
        ctx.store.close()
        return RunSummary(self.output, n, int(alive.sum()), report, self.skipped)

    def _write(self, ctx: RunContext, removals: list, last: str, alive: np.ndarray,
               sem: SemDeDupResult | None, dbp: DBPResult | None) -> dict:
        n = ctx.size
        status, stage, reason = decide(~ctx.usable, removals, last)
        none_i = np.full(n, -1, dtype=np.int32)
        none_f = np.full(n, np.nan, dtype=np.float32)
        dup_rows = sem.dup_of if sem is not None else np.full(n, -1, dtype=np.int64)
        has_dup = dup_rows >= 0
        dup_hi = ctx.uid_hi[np.maximum(dup_rows, 0)]
        dup_lo = ctx.uid_lo[np.maximum(dup_rows, 0)]
        offsets = ctx.store.offsets

        read_per_shard: Counter = Counter()
        # a fresh folder swapped in whole: parts of an earlier run over other inputs never
        # mix with these, and a broken invariant leaves the last good ledger in place
        with staged_dir(self.output / "ledger") as staging:
            def tasks() -> Iterator[LedgerTask]:  # slices are views: nothing copied here
                for part in ctx.parts:
                    sl = slice(int(offsets[part.index]), int(offsets[part.index + 1]))
                    yield LedgerTask(
                        str(self._ingest_path(part)),
                        str(staging / f"part-{part.index:05d}.parquet"),
                        (status[sl], stage[sl], reason[sl],
                         (sem.cluster if sem else none_i)[sl],
                         (sem.distance if sem else none_f)[sl],
                         dup_hi[sl], dup_lo[sl], has_dup[sl],
                         (sem.similarity if sem else none_f)[sl],
                         (dbp.cluster if dbp else none_i)[sl],
                         (dbp.distance if dbp else none_f)[sl]))

            for counts in self.engine.map(write_ledger_part, tasks(), desc="ledger",
                                          total=len(ctx.parts), unit="part", concurrent=True):
                read_per_shard.update(counts)
            shards = check_invariant(staging, read_per_shard)
        kept = np.flatnonzero(alive)
        write_npy(self.output / "subset.npy", subset_array(ctx.uid_hi[kept], ctx.uid_lo[kept]))
        return shards


    def _write_shards(self, n_parts: int) -> dict[str, Any] | None:
        """Copy the kept samples into new shards (image path, write.enabled)."""
        if self.shard_urls is None or not self.cfg.write.enabled:
            return None
        from pipeline.stages.write_shards import write_kept

        start = time.perf_counter()
        ledger = [self.output / "ledger" / f"part-{i:05d}.parquet" for i in range(n_parts)]
        metadata = self.work.step_dir("embed") / "metadata"
        # written beside the output's shards/ and swapped in whole: no shard of an earlier
        # run (more shards, other samples) or of a killed one is ever left among them
        with self.engine.bar("write shards", total=0, unit="sample") as bar, \
                staged_dir(self.output / "shards") as staging:
            bar.total = None
            written, counts = write_kept(
                self.shard_urls, ledger, staging, self.cfg.write.max_count,
                self.cfg.write.max_bytes, progress=bar.update,
                metadata_parts=[metadata / f"metadata_{i}.parquet" for i in range(n_parts)])
        log.info("write: %d samples copied by their recorded spans, %d by reading their shard "
                 "again", counts.by_span, counts.by_parsing)
        self.timings["write_shards"] = time.perf_counter() - start
        return {"folder": str(self.output / "shards"), "count": len(written),
                "samples": sum(w.count for w in written), "bytes": sum(w.bytes for w in written),
                "copied_by_span": counts.by_span, "copied_by_parsing": counts.by_parsing}

    def _embed_report(self) -> dict[str, Any]:
        damaged = [{"shard": e["url"], "samples_read": e["samples"], "damage": e["damage"],
                    "expected": e["expected"]} for e in self.embedded if e.get("damage")]
        models = self.embedded[0]["models"] if self.embedded else {}
        if models.get("clip_random_weights"):
            log.warning("the CLIP model had RANDOM WEIGHTS: clip scores carry no meaning")
        return {"models": models, "shards": len(self.embedded), "damaged_shards": damaged,
                "failed": sum(e["failed"] for e in self.embedded)}


def run(cfg: RunConfig, engine: Engine | None = None) -> RunSummary:
    """One run; an engine made here from ``cfg.engine`` is closed at the end."""
    runner = Runner(cfg, engine)
    try:
        return runner.run()
    finally:
        if runner.owns_engine:
            runner.engine.close()
