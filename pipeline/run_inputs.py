"""A run's input side: the input shards embedded (image path) or the embedding parts found,
every input file pinned by its identity, and the parts read into the work folder.

What it learns is returned as an ``Inputs`` value that the output side reads, instead of
fields of the runner set here and read there.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.algorithms.exact import EXACT_VERSION
from pipeline.config import RunConfig
from pipeline.engines.base import Engine, Resources
from pipeline.errors import RunError
from pipeline.io.embeddings import (
    EmbeddingPart,
    discover,
    discover_clip_retrieval,
    local_path,
)
from pipeline.io.tables import read_columns
from pipeline.output_guard import user_file_in_output, written_by_runs
from pipeline.progress import NO_PROGRESS, Samples, step_progress
from pipeline.stages.embed_files import hold_moved, place_moved, remove_embed_files
from pipeline.stages.ingest import IngestedPart, ingest_part
from pipeline.units import Unit, run_unit
from pipeline.workdir import WorkDir, fingerprint

log = logging.getLogger(__name__)

# what an object store reports that changes when an object is replaced (s3fs, gcsfs, adlfs)
_VERSION_FIELDS = ("ETag", "etag", "VersionId", "generation", "md5Hash", "LastModified",
                   "last_modified", "mtime", "updated", "created")


def file_identity(url: str | None) -> Any:  # noqa: ANN401 - a JSON-able list or None
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


def part_fingerprint(part: EmbeddingPart) -> str:
    """What reading one part depends on: its files' identities and the exact kernels."""
    return fingerprint("ingest", EXACT_VERSION, part.shard, part.npz_image_key,
                       part.npz_text_key,
                       file_identity(part.metadata_path), file_identity(part.image_path),
                       file_identity(part.text_path))


@dataclass
class Inputs:
    """The input as this run pinned it."""

    parts: list[EmbeddingPart]
    pinned: list[dict[str, Any]]  # every input file's identity (report "inputs")
    shard_urls: list[str] | None = None  # the image path's input shards, in order
    embedded: list[dict[str, Any]] = field(default_factory=list)  # each shard's embed marker
    embed_seconds: float | None = None

    @property
    def fingerprints(self) -> list[str]:
        return [part_fingerprint(p) for p in self.parts]


@dataclass
class EmbedPlan:
    """What embedding the image path's input shards takes."""

    urls: list[str]
    pinned: list[dict[str, Any]]  # each shard's name and file identity
    fingerprints: dict[int, str]  # by shard number
    todo: list[tuple[int, str, str]]  # (number, url, name) of the shards not embedded yet


@dataclass(frozen=True)
class IngestTask:
    part: EmbeddingPart
    out_dir: str
    keep_vectors: bool
    # derived uids hashed by helper processes (``uid_hashing``): where parts are read on
    # threads of one process, whose hashing would hold its GIL against the others
    hash_apart: bool = False


def run_ingest_task(task: IngestTask) -> tuple[IngestedPart, np.ndarray | None]:
    return ingest_part(task.part, Path(task.out_dir), keep_vectors=task.keep_vectors,
                       hash_apart=task.hash_apart)


def ingest_stats(result: tuple[IngestedPart, np.ndarray | None]) -> dict[str, Any]:
    """What a read part's marker holds: the part's counts and files."""
    return result[0].to_json()


class InputSide:
    """The steps before the first pruning step, on one engine and work folder."""

    def __init__(self, cfg: RunConfig, engine: Engine, work: WorkDir) -> None:
        self.cfg = cfg
        self.engine = engine
        self.work = work
        self.output = Path(cfg.output)

    # -- what the input is ---------------------------------------------------------------
    def find(self) -> Inputs:
        """The image path's shards embedded, or the embedding parts found."""
        if self.cfg.input.shards:
            return self._embed()
        for folder in (self.cfg.input.embeddings, self.cfg.input.datacomp):
            if folder and self._ours(folder):
                raise RunError(
                    f"the input {folder} lies where this run writes its output "
                    f"({self.output}): a run never reads what a run wrote; choose another "
                    "output folder")
        parts = discover(self.cfg.input)
        pinned = [{"part": p.shard, "files": [file_identity(f) for f in
                                              (p.metadata_path, p.image_path, p.text_path)
                                              if f is not None]} for p in parts]
        return Inputs(parts, pinned)

    def _ours(self, url: str) -> bool:
        path = local_path(url)
        return path is not None and written_by_runs(path, self.output, self.work.root)

    def _outside_output(self, urls: list[str]) -> list[str]:
        """The input shards, less those where a run writes (the output's shards/, the work
        folder): a run never reads what a run wrote, as when an input glob matches an
        earlier run's output shards."""
        ours = {u for u in urls if self._ours(u)}
        users = sorted(u for u in ours if user_file_in_output(local_path(u), self.output))
        if users:  # --overwrite takes a folder over, never the run's own input
            raise RunError(
                f"the input shard {users[0]} lies in the output folder {self.output}, in a "
                f"folder this run replaces whole ({len(users)} such input files): move the "
                "input shards out of the output folder, or choose another output folder")
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

    # -- embed (image path) --------------------------------------------------------------
    def embed_plan(self) -> EmbedPlan:
        """The input shards, their names, identities and embed fingerprints; reads nothing
        but the shards' sizes and times."""
        from pipeline.embed.tensor_path import TENSOR_PATH_VERSION, decode_on_gpu
        from pipeline.io.decode import DECODE_VERSION
        from pipeline.io.shards import expand_shards, shard_names

        cfg = self.cfg
        on_gpu = decode_on_gpu(cfg.embed.decode, cfg.embed.device)  # gpu without one: error
        urls = self._outside_output(once_each(expand_shards(cfg.input.shards)))
        names = shard_names(urls)  # their derived uids depend on the whole list
        # embed.decode is left out (its key holds DECODE_VERSION here): the path it picks
        # enters below, and only when it is the GPU
        settings = {**cfg.embed.model_dump(exclude={"workers", "decode"}),
                    "decode": DECODE_VERSION, "exact": EXACT_VERSION}
        if on_gpu:  # only then: CPU-decoded work folders keep their fingerprints
            settings["tensor_decode"] = TENSOR_PATH_VERSION
        pinned = [{"shard": name, "file": file_identity(url)}
                  for url, name in zip(urls, names, strict=True)]
        fps = {i: fingerprint("embed", pin, settings) for i, pin in enumerate(pinned)}
        todo = [(i, url, names[i]) for i, url in enumerate(urls)
                if not self.work.done(f"embed-{i:05d}", fps[i])]
        return EmbedPlan(urls, pinned, fps, todo)

    def _embed(self) -> Inputs:
        """Embed the input shards not embedded yet; their clip-retrieval folder's parts."""
        plan = self.embed_plan()
        urls, pinned, fps, todo = plan.urls, plan.pinned, plan.fingerprints, plan.todo
        out_dir = self.work.step_dir("embed")
        # shards that moved in the list (one added or removed before them) keep their files
        held = hold_moved(self.work, out_dir, len(urls), [i for i, _, _ in todo], fps)
        # what another input list or other settings left: shard numbers past this list's
        # end, and every file of a shard embedded again (its settings may write fewer files)
        again = {i for i, _, _ in todo}
        remove_embed_files(out_dir, lambda num: num >= len(urls) or num in again)
        for marker in self.work.markers.glob("embed-*.json"):
            if int(marker.stem.split("-")[1]) >= len(urls):
                marker.unlink()
        place_moved(self.work, out_dir, held)
        todo = [shard for shard in todo if shard[0] not in held]
        start = time.perf_counter()
        if len(todo) < len(urls):
            log.info("embed: %d of %d shards already embedded with these settings, reusing "
                     "them", len(urls) - len(todo), len(urls))
        if todo:
            self._embed_shards(todo, out_dir, fps)
        seconds = time.perf_counter() - start
        embedded = [self.work.stats(f"embed-{i:05d}") for i in range(len(urls))]
        return Inputs(discover_clip_retrieval(str(out_dir)), pinned, urls, embedded, seconds)

    def _embed_shards(self, todo: list[tuple[int, str, str]], out_dir: Path,
                      fps: dict[int, str]) -> None:
        """A map over the shards: models loaded once per worker (on a GPU when the embed
        device is one), every shard marked done by its worker after its files."""
        from functools import partial

        from pipeline.stages.embed import EmbedTask, embed_task, images_in, load_models
        from pipeline.stages.embed_replicas import (
            deal,
            embed_on_replicas,
            gpu_replicas,
            shared_workers,
        )

        cfg = self.cfg.embed
        local = self.engine.name == "local"
        # this process: one task per model replica (one per GPU, or the one device) keeps one
        # decoding pipeline across its shards; a cluster: a task per shard, over the workers
        replicas = gpu_replicas(cfg.device) if local else 1
        groups = deal(todo, replicas) if local else [[shard] for shard in todo]
        workers = shared_workers(cfg.workers, max(1, len(groups))) if local else cfg.workers
        gpu = Resources(gpus=1.0) if embeds_on_gpu(cfg.device) else Resources()
        images = Samples(images_in([url for _, url, _ in todo]), "images", "img")
        log.info("embedding %d shards%s", len(todo),
                 "" if images.total is None else f" ({images.total:,} images)")
        # a task in this process counts its shards and images on the meter as it goes, one
        # elsewhere returns its counts: the map itself counts no tasks
        with step_progress(self.cfg, "embed", len(todo), "shard", images) as meter:
            tasks = [EmbedTask(tuple(g), tuple(fps[i] for i, _, _ in g), str(out_dir),
                               str(self.work.root), cfg.batch_size, workers, meter,
                               cfg.decoding()) for g in groups]
            if len(tasks) > 1 and local:  # a replica per GPU of this machine
                results = embed_on_replicas(tasks, partial(load_models, cfg, self.cfg.seed))
            else:
                results = self.engine.map(embed_task, tasks, desc="embed", total=len(tasks),
                                          unit="shard", resources=gpu, progress=NO_PROGRESS,
                                          setup=partial(load_models, cfg, self.cfg.seed))
            for counts in results:
                meter.add(counts)

    # -- read ----------------------------------------------------------------------------
    def ingest(self, parts: list[EmbeddingPart], fps: list[str]
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
        threads = self.engine.name == "local" and len(todo) > 1  # parts read side by side
        # each part's marker is written by its worker (pipeline.units)
        units = [Unit(str(self.work.root), f"ingest-{part.index:05d}", fp,
                      IngestTask(part, str(out_dir), keep, threads)) for part, fp in todo]
        with step_progress(self.cfg, "read", len(units), "part",
                           Samples(None, "samples", "samples")) as meter:
            results = self.engine.map(partial(run_unit, run_ingest_task, ingest_stats), units,
                                      desc="read", total=len(units), unit="part",
                                      concurrent=True, progress=meter)
            for (part, _), (ingested_part, vectors) in zip(todo, results, strict=True):
                meter.advance(samples=ingested_part.rows)
                if vectors is not None and vectors.nbytes <= budget:
                    cached[part.index] = vectors
                    budget -= vectors.nbytes
                else:
                    budget = 0
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

    def nothing_usable(self, n: int, parts: int) -> str:
        """The error of an input without a single usable sample, with the commonest
        reasons (blaming the input, not a setting that needs samples)."""
        from pipeline.stages.context import ingest_path

        what = "input shards" if self.cfg.input.shards else "input parts"
        if n == 0:
            return (f"no usable sample in the input: no sample could be read from the {parts} "
                    f"{what} (empty, or damaged before their first sample); check them with "
                    "`tar tvf` or point the input at other files")
        from pipeline.stages.ledger_summary import failure_kind

        kinds: Counter = Counter()  # by kind: a reason naming its sample's key is one kind
        for part in range(min(parts, 16)):
            path = ingest_path(self.work.root, part)
            if path.exists():
                rows = read_columns(path, columns=["failed_reason", "key", "shard"])
                kinds.update(failure_kind("read", reason, key, shard).removeprefix("read: ")
                             for reason, key, shard in zip(*rows.to_pydict().values(),
                                                           strict=True) if reason)
        common = "; ".join(f"{count} x {kind}" for kind, count in kinds.most_common(3))
        return (f"no usable sample in the input: all {n} samples read from the {parts} {what} "
                f"failed (commonest reasons: {common}); fix the input, or see every sample's "
                "reason in the work folder's ingest/ tables")


def once_each(urls: list[str]) -> list[str]:
    """The input shards with a file listed twice (two patterns, a path and a link to it)
    kept at its first place: its samples are read once, not counted twice."""
    seen: dict[str, str] = {}
    kept = []
    for url in urls:
        path = local_path(url)
        same = os.path.realpath(path) if path is not None else url
        if same in seen:
            log.warning("the input shard %s is listed twice (also as %s): it is read once",
                        url, seen[same])
            continue
        seen[same] = url
        kept.append(url)
    return kept


def embeds_on_gpu(device: str) -> bool:
    """Whether embed tasks declare a GPU: a CUDA device named, or auto with one visible here."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()
