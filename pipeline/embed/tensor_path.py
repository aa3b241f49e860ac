"""The embed step's GPU decoding path (``embed.decode``): JPEGs decoded and preprocessed on
the device, everything else as before.

Worker processes read the shards as always; of each sample's image they look at the header
only (``jpeg_header``). A JPEG the tensor path takes travels as its bytes (``PendingJpeg``),
any other picture is decoded and preprocessed on the CPU as SPEC §5b says, and a batch holds
both in shard order (``MixedBatch``). The main process decodes the JPEGs in batches on the
device, turns them upright, resizes, crops and normalises them as each model's own transform
does (``tensor_decode``), and puts every row back in its place (``TensorPath.prepare``). A
JPEG the device decoder refuses goes through the CPU path there, so it is embedded or fails
with the very reason it fails with on the CPU path.

``decode_on_gpu`` is the driver's reading of the setting (it enters the embed fingerprint);
``build_tensor_path`` the worker's, once its models are loaded: only it sees the models'
transforms, so where ``auto`` finds one it cannot mirror it decodes on the CPU (and says so)
under the GPU path's fingerprint, which costs at most a redo when the setting changes. The
tensor path also runs on the CPU (``TensorPath.for_encoder(encoder, torch.device("cpu"))``),
which the tests use to check it against the PIL path without a GPU; no setting asks for it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from pipeline.config import ConfigError
from pipeline.embed.encoder import BatchEncoder, PreparedBatch, PreparedSample, collate
from pipeline.embed.jpeg_header import NotForTensorPath, read_jpeg_header
from pipeline.embed.tensor_decode import (
    TensorTransform,
    UnsupportedTransform,
    decode_jpegs,
    orient,
)
from pipeline.io.decode import DecodeRules, ImageDecodeError
from pipeline.io.shards import Sample, decode_image

log = logging.getLogger(__name__)

DECODE_CHOICES = ("auto", "cpu", "gpu")
TENSOR_PATH_VERSION = 2  # in the embed fingerprint of GPU-decoded runs: bump when it changes
PIXEL_BUDGET = 1 << 27  # decoded pixels held on the device at once (about 400 MB of RGB)


def models_on_gpu(device: str) -> bool:
    """Whether ``embed.device`` puts the models on a GPU: a CUDA device named, or auto with
    one visible here (as the embed tasks' GPU resources are declared)."""
    if device.startswith("cuda"):
        return True
    return device == "auto" and torch.cuda.is_available()


def decode_on_gpu(decode: str, device: str) -> bool:
    """Whether JPEGs are decoded on the GPU, as the driver reads ``embed.decode``: ``gpu``
    where the models run on one (an error elsewhere, before any work), ``auto`` the same
    where they do, else the CPU."""
    if decode not in DECODE_CHOICES:
        raise ConfigError(f"embed.decode={decode!r}: use one of {', '.join(DECODE_CHOICES)}")
    if decode == "gpu" and not models_on_gpu(device):
        why = ("no CUDA GPU is available here" if device == "auto"
               else f"embed.device={device} runs the models on the CPU")
        raise ConfigError(
            f"embed.decode=gpu decodes JPEGs on the GPU the models run on, but {why}; set "
            "embed.decode=auto (the GPU where there is one, else the CPU) or embed.decode=cpu")
    return decode != "cpu" and models_on_gpu(device)


@dataclass
class PendingJpeg:
    """A sample whose JPEG the device decodes: its bytes, orientation and text inputs."""

    data: bytes
    orientation: int
    pixels: int
    key: str
    ext: str | None
    shard: str
    tokens: torch.Tensor
    has_text: bool


@dataclass
class MixedBatch:
    """A batch whose JPEG rows are still bytes: the CPU-prepared rows as tensors, the JPEGs
    as one uint8 tensor (shared memory between processes, not pickled bytes)."""

    tokens: torch.Tensor  # [B, context_length]
    has_text: torch.Tensor  # [B] bool
    cpu_rows: torch.Tensor  # [k] int64: rows prepared on the CPU
    cpu_pixels: torch.Tensor | None  # [k, 3, H, W]
    cpu_cluster: torch.Tensor | None  # [k, 3, H', W']
    jpeg_rows: torch.Tensor  # [m] int64: rows the device decodes
    jpeg_bytes: torch.Tensor  # the m files one after the other, uint8
    jpeg_ends: torch.Tensor  # [m] int64: where each file ends in jpeg_bytes
    jpeg_pixels: torch.Tensor  # [m] int64: width x height of each
    orientations: torch.Tensor  # [m] EXIF orientation of each
    names: list[tuple[str, str | None, str]]  # [m] key, extension, shard: for messages

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def pin_memory(self) -> MixedBatch:
        """Called by DataLoader(pin_memory=True): page-locked tensors copy to the GPU async."""
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return MixedBatch(pin(self.tokens), pin(self.has_text), self.cpu_rows,
                          pin(self.cpu_pixels), pin(self.cpu_cluster), self.jpeg_rows,
                          pin(self.jpeg_bytes), self.jpeg_ends, self.jpeg_pixels,
                          self.orientations, self.names)

    def jpegs(self) -> list[torch.Tensor]:
        """Each JPEG file as a 1-D uint8 view of ``jpeg_bytes``."""
        ends = self.jpeg_ends.tolist()
        return [self.jpeg_bytes[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def pending_jpeg(sample: Sample, max_pixels: int, tokens: torch.Tensor,
                 has_text: bool) -> PendingJpeg | None:
    """The sample's image as bytes for the device, or None when it goes the CPU path."""
    data = sample.image_bytes
    if data is None:
        return None
    bomb = Image.MAX_IMAGE_PIXELS  # where PIL warns of a decompression bomb: its path decides
    try:
        header = read_jpeg_header(data, max_pixels if bomb is None else min(max_pixels, bomb))
    except NotForTensorPath:
        return None
    return PendingJpeg(data, header.orientation, header.pixels, sample.key, sample.image_ext,
                       sample.shard, tokens, has_text)


def collate_mixed(items: Sequence[PreparedSample | PendingJpeg]) -> PreparedBatch | MixedBatch:
    """A batch of prepared samples and pending JPEGs in order; without JPEGs, ``collate``'s."""
    jpeg_rows = [i for i, item in enumerate(items) if isinstance(item, PendingJpeg)]
    if not jpeg_rows:
        return collate(items)  # type: ignore[arg-type] - all prepared
    cpu_rows = [i for i, item in enumerate(items) if isinstance(item, PreparedSample)]
    cpu = [items[i] for i in cpu_rows]
    jpegs: list[PendingJpeg] = [items[i] for i in jpeg_rows]  # type: ignore[misc]
    has_cluster = bool(cpu) and cpu[0].cluster_pixels is not None
    return MixedBatch(
        tokens=torch.stack([item.tokens for item in items]),
        has_text=torch.tensor([item.has_text for item in items], dtype=torch.bool),
        cpu_rows=torch.tensor(cpu_rows, dtype=torch.int64),
        cpu_pixels=torch.stack([s.pixels for s in cpu]) if cpu else None,
        cpu_cluster=torch.stack([s.cluster_pixels for s in cpu]) if has_cluster else None,
        jpeg_rows=torch.tensor(jpeg_rows, dtype=torch.int64),
        jpeg_bytes=torch.frombuffer(bytearray(b"".join(j.data for j in jpegs)),
                                    dtype=torch.uint8),
        jpeg_ends=torch.tensor([len(j.data) for j in jpegs], dtype=torch.int64).cumsum(0),
        jpeg_pixels=torch.tensor([j.pixels for j in jpegs], dtype=torch.int64),
        orientations=torch.tensor([j.orientation for j in jpegs], dtype=torch.int64),
        names=[(j.key, j.ext, j.shard) for j in jpegs],
    )


class _Rows:
    """A batch's model inputs on the device, filled row by row in any order."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.values: torch.Tensor | None = None

    def put(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        if self.values is None:
            self.values = values.new_empty((self.n, *values.shape[1:]))
        self.values[rows.to(values.device)] = values


@dataclass
class TensorPath:
    """Decoding and preprocessing of JPEGs on ``device`` for a loaded encoder's models."""

    device: torch.device
    clip: TensorTransform
    cluster: TensorTransform | None
    encoder: BatchEncoder
    pixel_budget: int = PIXEL_BUDGET

    @classmethod
    def for_encoder(cls, encoder: BatchEncoder, device: torch.device | None = None
                    ) -> TensorPath:
        """The tensor path of ``encoder``'s models, on ``device`` (default: the models');
        ``UnsupportedTransform`` when a model's transform has a step it does not mirror."""
        cluster = encoder.cluster
        return cls(device or encoder.device, TensorTransform(encoder.clip.image_transform),
                   None if cluster is None else TensorTransform(cluster.transform), encoder)

    def describe(self) -> str:
        where = "nvJPEG" if self.device.type == "cuda" else "libjpeg-turbo"
        return f"JPEGs decoded and preprocessed on {self.device} ({where}, torchvision)"

    def prepare(self, batch: MixedBatch, rules: DecodeRules
                ) -> tuple[PreparedBatch, dict[int, str]]:
        """The batch's model inputs on the device, in row order, and the rows that failed
        (row -> reason, as the CPU path words it), which the returned batch leaves out."""
        clip, cluster = _Rows(len(batch)), _Rows(len(batch))
        if batch.cpu_pixels is not None:
            clip.put(batch.cpu_rows, batch.cpu_pixels.to(self.device, non_blocking=True))
            if batch.cpu_cluster is not None:
                cluster.put(batch.cpu_rows,
                            batch.cpu_cluster.to(self.device, non_blocking=True))
        files = batch.jpegs()
        refused: list[int] = []
        for chunk in _chunks(batch.jpeg_pixels.tolist(), self.pixel_budget):
            decoded = decode_jpegs([files[j] for j in chunk], self.device)
            good = [j for j, image in zip(chunk, decoded, strict=True) if image is not None]
            refused += [j for j, image in zip(chunk, decoded, strict=True) if image is None]
            if not good:
                continue
            upright = [orient(image, int(batch.orientations[j]))
                       for j, image in zip(chunk, decoded, strict=True) if image is not None]
            rows = batch.jpeg_rows[good]
            clip.put(rows, self.clip(upright))
            if self.cluster is not None:
                cluster.put(rows, self.cluster(upright))
            del decoded, upright
        failed = self._on_cpu(batch, files, refused, rules, clip, cluster)
        keep = torch.tensor([r for r in range(len(batch)) if r not in failed], dtype=torch.int64)
        if clip.values is None:  # every row failed
            return PreparedBatch(torch.empty(0), batch.tokens[:0], batch.has_text[:0]), failed
        prepared = PreparedBatch(clip.values, batch.tokens, batch.has_text, cluster.values)
        if failed:
            on = keep.to(self.device)
            prepared = PreparedBatch(
                prepared.pixels[on], batch.tokens[keep], batch.has_text[keep],
                None if cluster.values is None else cluster.values[on])
        return prepared, failed

    def _on_cpu(self, batch: MixedBatch, files: list[torch.Tensor], refused: list[int],
                rules: DecodeRules, clip: _Rows, cluster: _Rows) -> dict[int, str]:
        """The JPEGs the device refused, through the CPU path; returns the rows that fail."""
        failed: dict[int, str] = {}
        prep = self.encoder.preprocessor
        for j in refused:
            row = int(batch.jpeg_rows[j])
            key, ext, shard = batch.names[j]
            sample = Sample(key=key, uid="", shard=shard, image_ext=ext,
                            image_bytes=files[j].numpy().tobytes())
            try:
                image = decode_image(sample, rules)
            except ImageDecodeError as err:
                failed[row] = str(err)
                continue
            rows = torch.tensor([row])
            clip.put(rows, prep.image_transform(image)[None].to(self.device))
            if prep.cluster_transform is not None:
                cluster.put(rows, prep.cluster_transform(image)[None].to(self.device))
        return failed


def _chunks(pixels: list[int], budget: int) -> list[list[int]]:
    """Consecutive indices of ``pixels`` in runs of at most ``budget`` pixels (one at least)."""
    out: list[list[int]] = []
    total = budget + 1
    for i, n in enumerate(pixels):
        if total + n > budget:
            out.append([])
            total = 0
        out[-1].append(i)
        total += n
    return out


def _probe_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 40)).save(buf, "JPEG")
    return buf.getvalue()


def build_tensor_path(decode: str, encoder: BatchEncoder) -> TensorPath | None:
    """The worker's tensor path for ``embed.decode`` and its loaded models, or None for the
    CPU path; ``auto`` logs which it chose and why, ``gpu`` raises where it cannot be."""
    def refuse(why: str) -> None:
        if decode == "gpu":
            raise ConfigError(f"embed.decode=gpu: {why}; set embed.decode=auto or cpu")
        log.info("embed.decode=auto: decoding images on the CPU (%s)", why)

    if decode == "cpu":
        return None
    if encoder.device.type != "cuda":
        refuse(f"the models run on {encoder.device}, not on a CUDA GPU")
        return None
    try:
        path = TensorPath.for_encoder(encoder)
    except UnsupportedTransform as err:
        refuse(f"the GPU path does not mirror a step of the models' preprocessing: {err}")
        return None
    probe = torch.frombuffer(bytearray(_probe_jpeg()), dtype=torch.uint8)
    if decode_jpegs([probe], path.device)[0] is None:
        refuse(f"torchvision cannot decode a JPEG on {path.device} (no nvJPEG in this build?)")
        return None
    log.info("embed.decode=%s: %s; other images on the CPU (SPEC 5b)", decode, path.describe())
    return path
