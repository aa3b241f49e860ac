"""Batch encoding: images and captions to unit CLIP embeddings, CLIP scores and cluster features.

Work is split so the model never waits on JPEG decoding: ``Preprocessor`` (picklable) turns
one decoded image and its caption into tensors inside DataLoader worker processes,
``collate`` stacks them, and ``BatchEncoder.encode_batch`` runs the models on the stacked
tensors under ``torch.inference_mode`` (with bf16/fp16 autocast on GPUs when asked).
Outputs are float32 numpy arrays, L2-normalised in fp32 whatever the compute precision;
the CLIP score is the exact inner product of the stored vectors (``algorithms/exact.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.algorithms import exact
from pipeline.embed.models import ClipModel, ClusterEncoder


@dataclass
class PreparedSample:
    """One sample's model inputs, made in a worker."""

    pixels: torch.Tensor  # [3, H, W] float32, CLIP-normalised
    tokens: torch.Tensor  # [context_length] int64
    has_text: bool  # False: no caption, so no text embedding and no CLIP score
    cluster_pixels: torch.Tensor | None = None  # [3, H', W'] for the cluster encoder


@dataclass
class PreparedBatch:
    """Stacked model inputs of a batch."""

    pixels: torch.Tensor  # [B, 3, H, W]
    tokens: torch.Tensor  # [B, context_length]
    has_text: torch.Tensor  # [B] bool
    cluster_pixels: torch.Tensor | None = None  # [B, 3, H', W']

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def pin_memory(self) -> PreparedBatch:
        """Called by DataLoader(pin_memory=True): page-locked tensors copy to the GPU async."""
        return PreparedBatch(self.pixels.pin_memory(), self.tokens.pin_memory(),
                             self.has_text.pin_memory(),
                             None if self.cluster_pixels is None
                             else self.cluster_pixels.pin_memory())


@dataclass
class EmbedOutput:
    """Per-sample results of a batch, row-aligned with its inputs, all float32."""

    image_emb: np.ndarray  # [B, d] unit rows
    text_emb: np.ndarray  # [B, d] unit rows; zero rows where the sample has no caption
    clip_score: np.ndarray  # [B] cos(image, text); NaN where the sample has no caption
    cluster_emb: np.ndarray | None = None  # [B, f] unit rows, when a cluster encoder is set


@dataclass
class PendingOutput:
    """A batch's outputs on their way back from the device (``BatchEncoder.start_batch``)."""

    image: torch.Tensor
    text: torch.Tensor
    cluster: torch.Tensor | None
    has_text: np.ndarray | None
    rows: int  # the batch's own rows (a CPU batch may run padded)
    done: torch.cuda.Event | None  # recorded after the copies back; None on a CPU

    def result(self) -> EmbedOutput:
        """The outputs, once the device has finished them."""
        if self.done is not None:
            self.done.synchronize()
        n = self.rows
        image_emb, text_emb = self.image.numpy()[:n], self.text.numpy()[:n]
        # the score from the vectors as stored, exactly (SPEC §2): the same on every device
        score = exact.round_once(exact.dot_rows(image_emb, text_emb))
        if self.has_text is not None:
            score[~self.has_text.astype(bool)] = np.nan
        return EmbedOutput(image_emb=image_emb, text_emb=text_emb, clip_score=score,
                           cluster_emb=None if self.cluster is None
                           else self.cluster.numpy()[:n])


class Preprocessor:
    """Picklable per-sample preprocessing: decoded RGB image + caption -> ``PreparedSample``.

    Holds only the transforms and the tokenizer (no model), so DataLoader workers receive it
    cheaply under fork, spawn or forkserver.
    """

    def __init__(self, image_transform: Callable[[Any], torch.Tensor],
                 tokenizer: Callable[..., torch.Tensor],
                 cluster_transform: Callable[[Any], torch.Tensor] | None = None) -> None:
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.cluster_transform = cluster_transform

    def text(self, caption: str | None) -> tuple[torch.Tensor, bool]:
        """The caption's tokens and whether it has text: a missing or blank caption gives
        ``has_text=False`` (tokens of the empty string)."""
        has_text = caption is not None and bool(caption.strip())
        return self.tokenizer([caption if has_text else ""])[0], has_text

    def __call__(self, image: Image.Image, caption: str | None) -> PreparedSample:
        """The image's model inputs and the caption's (``text``)."""
        tokens, has_text = self.text(caption)
        cluster = None if self.cluster_transform is None else self.cluster_transform(image)
        return PreparedSample(self.image_transform(image), tokens, has_text, cluster)


def collate(samples: Sequence[PreparedSample]) -> PreparedBatch:
    """Stack prepared samples; a DataLoader ``collate_fn`` (module-level, so picklable)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    cluster = None
    if samples[0].cluster_pixels is not None:
        cluster = torch.stack([s.cluster_pixels for s in samples])
    return PreparedBatch(
        pixels=torch.stack([s.pixels for s in samples]),
        tokens=torch.stack([s.tokens for s in samples]),
        has_text=torch.tensor([s.has_text for s in samples], dtype=torch.bool),
        cluster_pixels=cluster,
    )


class BatchEncoder:
    """Runs a loaded CLIP model (and optional cluster encoder) on batches of tensors."""

    def __init__(self, clip: ClipModel, cluster: ClusterEncoder | None = None,
                 full_batch: int = 0) -> None:
        """``full_batch``: on a CPU, every batch runs at this size at least, padded with copies
        of its last sample. CPU kernels pick their algorithm by batch size and thread count
        (oneDNN's convolutions gave other last bits for batches under 16 on one thread than
        on two), so a shard's short last batch would make its vectors depend on the machine's
        thread count; at full size they did not, on any count tried."""
        self.clip = clip
        self.cluster = cluster
        self.device = clip.device
        self.full_batch = full_batch if clip.device.type == "cpu" else 0
        if cluster is not None and cluster.device != clip.device:
            raise ValueError(f"the CLIP model is on {clip.device} but the cluster encoder on "
                             f"{cluster.device}: load both on one device")

    @property
    def preprocessor(self) -> Preprocessor:
        """The picklable per-sample preprocessing for DataLoader workers."""
        return Preprocessor(self.clip.image_transform, self.clip.tokenizer,
                            None if self.cluster is None else self.cluster.transform)

    def _autocast(self) -> Any:
        dtype = self.clip.autocast_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _to_device(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def encode_batch(self, pixels: torch.Tensor, tokens: torch.Tensor,
                     has_text: torch.Tensor | None = None,
                     cluster_pixels: torch.Tensor | None = None) -> EmbedOutput:
        """Embed one batch: ``pixels`` [B, 3, H, W] from ``preprocessor``'s image transform,
        ``tokens`` [B, context_length]; ``has_text`` [B] (default all True) marks captions;
        ``cluster_pixels`` is required when a cluster encoder is set."""
        return self.start_batch(pixels, tokens, has_text, cluster_pixels).result()

    def start_batch(self, pixels: torch.Tensor, tokens: torch.Tensor,
                    has_text: torch.Tensor | None = None,
                    cluster_pixels: torch.Tensor | None = None) -> PendingOutput:
        """``encode_batch``, returning once the work is queued on a GPU: the caller prepares
        the next batch while this one runs, and takes its outputs with ``result()``."""
        if (cluster_pixels is None) != (self.cluster is None):
            raise ValueError("cluster_pixels must be given exactly when a cluster encoder is set")
        n = len(pixels)
        if 0 < n < self.full_batch:
            pad = self.full_batch - n
            pixels, tokens, has_text, cluster_pixels = (
                None if t is None else torch.cat([t, t[-1:].expand(pad, *t.shape[1:])])
                for t in (pixels, tokens, has_text, cluster_pixels))
        model = self.clip.model
        with torch.inference_mode(), self._autocast():
            img = model.encode_image(self._to_device(pixels, self.clip.channels_last))
            txt = model.encode_text(self._to_device(tokens))
            feats = None
            if self.cluster is not None:
                feats = self.cluster.model(
                    self._to_device(cluster_pixels, self.cluster.channels_last))
        with torch.inference_mode():
            img = F.normalize(img.float(), dim=-1)
            txt = F.normalize(txt.float(), dim=-1)
            if has_text is not None:
                txt = txt * self._to_device(has_text).bool()[:, None]
            if feats is not None:
                feats = F.normalize(feats.float().flatten(1), dim=-1)
            # to page-locked host memory without waiting (on a GPU); result() waits
            back = [None if t is None else t.to("cpu", non_blocking=True)
                    for t in (img, txt, feats)]
        done = None
        if self.device.type == "cuda":
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))  # this model's GPU
        return PendingOutput(back[0], back[1], back[2],
                             None if has_text is None else has_text.cpu().numpy()[:n], n,
                             done)

    def encode_prepared(self, batch: PreparedBatch) -> EmbedOutput:
        """``encode_batch`` on a collated batch."""
        return self.start_prepared(batch).result()

    def start_prepared(self, batch: PreparedBatch) -> PendingOutput:
        """``start_batch`` on a collated batch."""
        return self.start_batch(batch.pixels, batch.tokens, batch.has_text,
                                batch.cluster_pixels)

    def encode(self, images: Sequence[Image.Image],
               captions: Sequence[str | None]) -> EmbedOutput:
        """Preprocess in this process and embed: for small inputs and tests; large inputs go
        through a DataLoader with ``preprocessor`` and ``collate``."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        prep = self.preprocessor
        return self.encode_prepared(collate([prep(im, c) for im, c in zip(images, captions,
                                                                           strict=True)]))
