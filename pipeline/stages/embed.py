"""The embed step: webdataset shards in, clip-retrieval layout out (SPEC §1 step 1, §6).

Worker processes read whole shards, decode and preprocess images and tokenise captions, and
send batches that never span two shards; the main process runs the models on them. When a
shard's last batch is embedded its files are written (``img_emb_{i}.npy`` holding the
clustering vectors, ``text_emb_{i}.npy`` when those are CLIP's, and ``metadata_{i}.parquet``
with key, uid, shard, caption, clip_score, any failure, and where the sample's members and
its json lie in the tar, so the write step can copy it without parsing), then its marker:
a killed run redoes only unfinished shards, and since batches depend only on their shard,
the vectors do not depend on how many workers ran.

With ``embed.decode`` on the GPU (``pipeline.embed.tensor_path``), workers leave the JPEGs
the device decodes as bytes in their batches; the main process decodes and preprocesses them
on the device and puts them back in order before the models. A JPEG the device refuses
goes through the CPU path there; should that fail too, the sample fails with the CPU path's
reason when its shard ends.

Every sample read gets a row: one that failed to read (missing image or caption, bad json)
or to decode keeps a zero vector and its reason, so nothing disappears unaccounted. A damaged
tar ends its shard early; how many samples were read, and what img2dataset's stats said, go
to the report.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.embed.encoder import (
    BatchEncoder,
    PendingOutput,
    PreparedBatch,
    Preprocessor,
    collate,
)
from pipeline.embed.memory import reuse_freed_memory
from pipeline.embed.tensor_path import MixedBatch, TensorPath, collate_mixed, pending_jpeg
from pipeline.io.decode import DEFAULT_RULES, DecodeRules, ImageDecodeError
from pipeline.io.shards import (
    ShardStream,
    count_samples,
    decode_image,
    download_failures,
    identity_metadata,
    read_stats,
    span_columns,
    tar_identity,
)
from pipeline.progress import NO_PROGRESS, Meter, Tally, TaskCounts
from pipeline.workdir import write_npy, write_parquet

log = logging.getLogger(__name__)


@dataclass
class ShardBatch:
    """Up to batch_size prepared samples of one shard, with their positions in it."""

    index: int
    positions: list[int]
    batch: PreparedBatch | MixedBatch

    def pin_memory(self) -> ShardBatch:
        """Called by DataLoader(pin_memory=True) so the batch copies to the GPU async."""
        return ShardBatch(self.index, self.positions, self.batch.pin_memory())


@dataclass
class ShardEnd:
    """A shard fully read: one record per sample read, and the damage if any."""

    index: int
    records: list[dict[str, Any]]
    damage: str | None = None
    expected: int | None = None
    identity: tuple[int, int] | None = None  # of the tar as read: its spans hold for it
    derived: int = 0  # samples whose uid was derived (no uid in their json)
    in_tar: int = 0  # of the records, the samples read from the tar


class ShardBatches(IterableDataset):
    """Whole shards per worker, turned into per-shard batches of prepared samples."""

    def __init__(self, shards: list[tuple[int, str, str]], preprocessor: Preprocessor,
                 batch_size: int, decoding: DecodeRules = DEFAULT_RULES,
                 tensor: bool = False) -> None:
        """``tensor``: JPEGs the tensor path takes stay bytes, for the main process."""
        self.shards = shards
        self.preprocessor = preprocessor
        self.batch_size = batch_size
        self.decoding = decoding
        self.tensor = tensor
        self.collate = collate_mixed if tensor else collate

    def __iter__(self) -> Iterator[ShardBatch | ShardEnd]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for index, url, name in mine:
            yield from self._shard(index, url, name)

    def _shard(self, index: int, url: str, name: str) -> Iterator[ShardBatch | ShardEnd]:
        identity = tar_identity(url)
        stream = ShardStream(url, name)
        records: list[dict[str, Any]] = []
        positions: list[int] = []
        prepared: list = []
        derived = 0
        for pos, sample in enumerate(stream):
            derived += sample.uid_derived
            record = {"key": sample.key, "uid": sample.uid, "shard": sample.shard,
                      "caption": sample.caption, "failed_reason": sample.failed_reason,
                      "failed_stage": "read" if sample.failed else None,
                      "span": sample.span, "json_span": sample.json_span}
            records.append(record)
            if sample.failed:
                continue
            pending = None
            if self.tensor:
                pending = pending_jpeg(sample, self.decoding.max_pixels,
                                       *self.preprocessor.text(sample.caption))
            if pending is not None:
                prepared.append(pending)
            else:
                try:
                    image = decode_image(sample, self.decoding)
                    prepared.append(self.preprocessor(image, sample.caption))
                except ImageDecodeError as err:
                    record["failed_reason"], record["failed_stage"] = str(err), "embed"
                    continue
            positions.append(pos)
            if len(prepared) == self.batch_size:
                yield ShardBatch(index, positions, self.collate(prepared))
                positions, prepared = [], []
        if prepared:
            yield ShardBatch(index, positions, self.collate(prepared))
        in_tar = len(records)
        failures = download_failures(url, name, {r["key"] for r in records})
        derived += sum(r["uid_derived"] for r in failures)
        records += failures
        stats = read_stats(url) if stream.error is not None else None
        yield ShardEnd(index, records, None if stream.error is None else str(stream.error),
                       None if stats is None else stats.get("successes", stats.get("count")),
                       identity, derived, in_tar)


@dataclass
class _Pending:
    """One shard's outputs, gathered until its ShardEnd arrives."""

    positions: list[np.ndarray] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)


@dataclass
class EmbeddedShard:
    index: int
    url: str
    samples: int
    failed: int
    damage: str | None
    expected: int | None
    derived: int = 0

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _stack(parts: list[np.ndarray], positions: np.ndarray, n: int, dim: int) -> np.ndarray:
    out = np.zeros((n, dim), dtype=np.float32)
    if parts:
        out[positions] = np.concatenate(parts)
    return out


def write_shard_outputs(out_dir: Path, end: ShardEnd, pending: _Pending, clip_dim: int,
                        cluster_dim: int | None) -> int:
    """Write one shard's clip-retrieval files; returns the number of failed samples."""
    n = len(end.records)
    pos = np.concatenate(pending.positions) if pending.positions else np.zeros(0, dtype=int)
    image = _stack([o.image_emb for o in pending.outputs], pos, n, clip_dim)
    score = np.full(n, np.nan, dtype=np.float32)
    if pending.outputs:
        score[pos] = np.concatenate([o.clip_score for o in pending.outputs])
    i = end.index
    if cluster_dim is None:
        write_npy(out_dir / "img_emb" / f"img_emb_{i}.npy", image)
        write_npy(out_dir / "text_emb" / f"text_emb_{i}.npy",
                  _stack([o.text_emb for o in pending.outputs], pos, n, clip_dim))
    else:
        write_npy(out_dir / "clip_img_emb" / f"clip_img_emb_{i}.npy", image)
        write_npy(out_dir / "img_emb" / f"img_emb_{i}.npy",
                  _stack([o.cluster_emb for o in pending.outputs], pos, n, cluster_dim))
    cols = {name: [r[name] for r in end.records] for name in
            ("key", "uid", "shard", "caption", "failed_reason", "failed_stage")}
    table = pa.table({
        "image_path": pa.array(cols["key"], pa.string()),
        **{name: pa.array(values, pa.string()) for name, values in cols.items()},
        "clip_score": pa.array(score, pa.float32(), mask=np.isnan(score)),
    })
    for name, column in span_columns([r["span"] for r in end.records],
                                     [r["json_span"] for r in end.records]).items():
        table = table.append_column(name, column)
    if end.identity is not None:
        table = table.replace_schema_metadata(identity_metadata(end.identity))
    write_parquet(out_dir / "metadata" / f"metadata_{i}.parquet", table)
    return sum(r["failed_reason"] is not None for r in end.records)


def embed_shards(shards: list[tuple[int, str, str]], encoder: BatchEncoder, out_dir: Path,
                 batch_size: int, workers: int, on_done: Callable[[EmbeddedShard], None],
                 progress: Meter = NO_PROGRESS, decoding: DecodeRules = DEFAULT_RULES,
                 tensor: TensorPath | None = None, stop: threading.Event | None = None
                 ) -> None:
    """Embed ``shards`` ((index, url, name) triples; the name as ``shard_names`` gives it)
    into ``out_dir``; ``on_done`` after each one. ``progress`` counts the samples read from
    the tars as their batches are embedded (and those that failed when their shard ends),
    and a unit per shard done. ``tensor``: JPEGs decoded and preprocessed by it. ``stop``,
    once set, ends the work after the batch in hand (a replica thread's way to be stopped)."""
    if not shards:
        return
    dataset = ShardBatches(shards, encoder.preprocessor, batch_size, decoding,
                           tensor=tensor is not None)
    loader = DataLoader(
        dataset, batch_size=None, num_workers=min(workers, len(shards)),
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    urls = {index: url for index, url, _ in shards}
    pending: dict[int, _Pending] = {}
    counted: dict[int, int] = {}  # samples of each shard counted so far
    late: dict[int, dict[int, str]] = {}  # shard -> position -> reason: failed here
    clip_dim = encoder.clip.embed_dim
    cluster_dim = None if encoder.cluster is None else encoder.cluster.feature_dim
    # one batch in flight: its outputs are taken once the next one is queued, so a GPU runs
    # the models while this process reads, decodes and preprocesses the next batch
    in_flight: tuple[int, list[int], PendingOutput] | None = None

    def settle() -> None:
        nonlocal in_flight
        if in_flight is None:
            return
        index, positions, started = in_flight
        in_flight = None
        slot = pending.setdefault(index, _Pending())
        slot.positions.append(np.asarray(positions))
        slot.outputs.append(started.result())
        counted[index] = counted.get(index, 0) + len(positions)
        progress.advance(samples=len(positions))

    with reuse_freed_memory():
        for item in loader:
            if stop is not None and stop.is_set():
                return
            if isinstance(item, ShardBatch):
                batch, positions = item.batch, item.positions
                if isinstance(batch, MixedBatch):
                    assert tensor is not None  # only its workers leave JPEGs as bytes
                    batch, failed = tensor.prepare(batch, decoding)
                    if failed:
                        late.setdefault(item.index, {}).update(
                            {positions[row]: reason for row, reason in failed.items()})
                        positions = [p for row, p in enumerate(positions) if row not in failed]
                if not positions:
                    continue
                started = encoder.start_prepared(batch)
                settle()
                in_flight = (item.index, positions, started)
                continue
            settle()  # the shard's last batch may be the one in flight
            for pos, reason in late.pop(item.index, {}).items():
                item.records[pos]["failed_reason"] = reason
                item.records[pos]["failed_stage"] = "embed"
            slot = pending.pop(item.index, _Pending())
            failed = write_shard_outputs(out_dir, item, slot, clip_dim, cluster_dim)
            if item.damage:
                log.warning("shard %s is damaged: %s", urls[item.index], item.damage)
            on_done(EmbeddedShard(item.index, urls[item.index], len(item.records), failed,
                                  item.damage, item.expected, item.derived))
            progress.advance(units=1, samples=item.in_tar - counted.pop(item.index, 0))
        settle()


@dataclass(frozen=True)
class EmbedTask:
    """Shards for one worker to embed; each shard's marker is written after its files."""

    shards: tuple[tuple[int, str, str], ...]  # index, url, name
    fingerprints: tuple[str, ...]  # per shard
    out_dir: str
    work: str
    batch_size: int
    workers: int
    progress: Meter = NO_PROGRESS  # the driver's meter on the local engine
    decoding: DecodeRules = DEFAULT_RULES


@dataclass
class EmbedModels:
    """A worker's loaded models and how the markers describe them."""

    encoder: BatchEncoder
    describe: dict[str, Any]
    tensor: TensorPath | None = None  # JPEGs decoded on the GPU (embed.decode)


def load_models(cfg: Any, seed: int, gpu: int | None = None  # noqa: ANN401 - EmbedConfig
                ) -> EmbedModels:
    """Once per worker: the CLIP model and the optional clustering encoder, on ``gpu`` when
    given (a replica of the local engine), else on the one the engine gave the task."""
    from pipeline.embed.models import load_clip, load_cluster_encoder, resolve_device
    from pipeline.embed.tensor_path import build_tensor_path
    from pipeline.engines.gpu import task_gpu

    device = resolve_device(cfg.device, task_gpu() if gpu is None else gpu)
    clip = load_clip(cfg.model, cfg.pretrained, device, cfg.precision, seed=seed)
    cluster = None
    if cfg.cluster_model:
        cluster = load_cluster_encoder(cfg.cluster_model, cfg.cluster_weights, device,
                                       seed=seed)
    models = {"clip": clip.describe(), "clip_random_weights": clip.random_weights,
              "cluster": None if cluster is None else cluster.describe(),
              "cluster_random_weights": None if cluster is None else cluster.random_weights}
    log.info("embedding with %s%s", models["clip"],
             f"; clustering on {models['cluster']}" if cluster else "")
    encoder = BatchEncoder(clip, cluster, full_batch=cfg.batch_size)
    tensor = build_tensor_path(cfg.decode, encoder)
    if tensor is not None:  # only then: the markers of CPU-decoded runs stay as they were
        models["decode"] = tensor.describe()
    return EmbedModels(encoder, models, tensor)


def embed_task(models: EmbedModels, task: EmbedTask, stop: threading.Event | None = None
               ) -> TaskCounts:
    """Embed a task's shards, marking each one done; returns the shards and the samples
    read from their tars, and whether the driver's meter counted them already."""
    from pipeline.workdir import WorkDir

    work = WorkDir(Path(task.work))
    fps = dict(zip((i for i, _, _ in task.shards), task.fingerprints, strict=True))
    tally = Tally(task.progress)

    def done(shard: EmbeddedShard) -> None:
        work.mark(f"embed-{shard.index:05d}", fps[shard.index],
                  {**shard.to_json(), "models": models.describe})

    embed_shards(list(task.shards), models.encoder, Path(task.out_dir), task.batch_size,
                 task.workers, done, progress=tally, decoding=task.decoding,
                 tensor=models.tensor, stop=stop)
    return tally.counts()


def images_in(urls: Sequence[str], budget_s: float = 5.0) -> int | None:
    """The samples in these shards, what the progress of embed counts up to: img2dataset's
    count (``successes`` of a shard's ``_stats.json``), else a scan of a local tar's
    headers; None when a shard has neither or it all takes longer than ``budget_s`` (many
    shards in object storage)."""
    if not urls:
        return 0

    def successes(url: str) -> int | None:
        try:
            stats = read_stats(url)
        except (OSError, ValueError):
            stats = None
        got = stats.get("successes") if isinstance(stats, dict) else None
        if isinstance(got, int):
            return got
        try:
            return count_samples(url)
        except OSError:
            return None

    pool = ThreadPoolExecutor(min(16, len(urls)), thread_name_prefix="stats")
    try:
        counts = list(pool.map(successes, urls, timeout=budget_s))
    except TimeoutError:
        return None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    known = [c for c in counts if c is not None]
    return sum(known) if len(known) == len(counts) else None
