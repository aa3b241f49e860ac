"""JPEG decoding and model preprocessing on tensors, on a GPU (nvJPEG) or, for tests, the CPU.

The tensor path must give what the CPU path gives: ``decode_picture`` (SPEC §5b), then the
model's own transform on the PIL image. So:

- ``decode_jpegs`` decodes with ``torchvision.io.decode_jpeg`` (nvJPEG on a CUDA device,
  libjpeg-turbo on the CPU: there bit for bit PIL's pixels) to 8-bit RGB; greyscale is
  spread to three channels as PIL's ``convert("RGB")`` does. A member that fails is
  reported as None, for the CPU path to decode or fail with its own message.
- ``orient`` turns a picture as its EXIF orientation says (read by ``jpeg_header`` as PIL
  reads it): torchvision applies EXIF orientation on the CPU only, never on the GPU.
- ``TensorTransform`` runs the steps of the model's own transform -- read from the very
  torchvision ``Resize`` / ``CenterCrop`` / ``Normalize`` objects the CPU path applies to
  PIL images -- on uint8 tensors: resized as PIL resizes (antialiased, widths then heights,
  each pass rounded to 8 bits) and cropped, a whole group of pictures of any sizes by two
  batched matrix products (``resample``), then scaled to [0, 1] and normalised as
  ``ToTensor`` and ``Normalize`` do. Off by two 8-bit levels at most from the PIL path (PIL
  computes with fixed-point weights), a mean of a few hundredths of a level. A transform
  holding any other step is refused (``UnsupportedTransform``), so the two paths cannot
  drift apart silently: a new step must be mirrored here first.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from open_clip.transform import MaybeConvertMode
from torchvision.io import ImageReadMode, decode_jpeg

from pipeline.embed.resample import resample, stages_of
from pipeline.errors import ConceptpruneError

# resampling that ``resample`` computes as PIL does
MIRRORED_INTERPOLATION = frozenset({TF.InterpolationMode.BICUBIC,
                                    TF.InterpolationMode.BILINEAR})
GROUP_PIXELS = 1 << 25  # padded pixels resampled at once (400 MB of float32 RGB)


class UnsupportedTransform(ConceptpruneError, ValueError):
    """A model transform the tensor path does not mirror; the message names the step."""


def _decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return list(out)


def decode_jpegs(data: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG bytes (1-D uint8 CPU tensors) to [3, H, W] uint8 tensors on ``device``, in
    one batched call; when it fails, one by one, a failing member giving None."""
    if not data:
        return []
    items = [d.contiguous() for d in data]
    try:
        return list(_decode(items, device))
    except (RuntimeError, ValueError):
        pass
    out: list[torch.Tensor | None] = []
    for item in items:
        try:
            out.append(_decode([item], device)[0])
        except (RuntimeError, ValueError):
            out.append(None)
    return out


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``image`` [..., H, W] turned as EXIF ``orientation`` says, as PIL's ``exif_transpose``
    turns it (2 mirror, 3 half turn, 4 flip, 5 transpose, 6 quarter turn clockwise,
    7 transverse, 8 quarter turn counter-clockwise); 1 and anything else: as stored."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))
    return image


def _groups(sizes: Sequence[tuple[int, int]], budget: int) -> list[list[int]]:
    """Indices of pictures of these (height, width), in groups that are resampled together:
    by size, so that little padding is computed, each at most ``budget`` padded pixels."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True)
    groups: list[list[int]] = []
    tallest = widest = 0
    for i in order:
        h, w = sizes[i]
        if groups and (len(groups[-1]) + 1) * max(tallest, h) * max(widest, w) <= budget:
            groups[-1].append(i)
            tallest, widest = max(tallest, h), max(widest, w)
        else:
            groups.append([i])
            tallest, widest = h, w
    return groups


class TensorTransform:
    """A model's eval transform (a torchvision ``Compose``) applied to decoded uint8 tensors."""

    def __init__(self, transform: Callable[[Any], torch.Tensor]) -> None:
        steps = getattr(transform, "transforms", None)
        if steps is None:
            raise UnsupportedTransform(f"{type(transform).__name__} is not a Compose of steps")
        geometry: list[T.Resize | T.CenterCrop] = []
        self.normalize: T.Normalize | None = None
        scaled = False
        for step in steps:
            name = type(step).__name__
            if isinstance(step, T.Resize) and not scaled:
                if step.antialias is False or step.interpolation not in MIRRORED_INTERPOLATION:
                    raise UnsupportedTransform(
                        f"Resize with {step.interpolation.value} interpolation, antialias "
                        f"{step.antialias}")
                geometry.append(step)
            elif isinstance(step, T.CenterCrop) and not scaled:
                geometry.append(step)
            elif isinstance(step, MaybeConvertMode) and step.mode == "RGB":
                continue  # decoded pictures are RGB already
            elif isinstance(step, T.ToTensor) and not scaled:  # also open_clip/timm's MaybeToTensor
                scaled = True
            elif isinstance(step, T.Normalize) and scaled and self.normalize is None:
                self.normalize = step
            else:
                raise UnsupportedTransform(f"{name} (step {steps.index(step) + 1} of "
                                           f"{len(steps)})")
        if not scaled:
            raise UnsupportedTransform("no ToTensor step")
        self.stages = stages_of(geometry)  # the geometry steps, Resize + CenterCrop paired

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N, 3, h, w] float32 model inputs from N [3, H, W] uint8 pictures (any sizes),
        resampled together in groups of similar size (``resample``)."""
        if not images:
            raise ValueError("no images")
        out: list[torch.Tensor | None] = [None] * len(images)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        for rows in _groups(sizes, GROUP_PIXELS):
            done = resample([images[i] for i in rows], self.stages)
            for i, image in zip(rows, done, strict=True):
                out[i] = image
        batch = torch.stack(out).div_(255)  # whole levels, scaled as ToTensor scales uint8
        if self.normalize is not None:
            batch = TF.normalize(batch, self.normalize.mean, self.normalize.std)
        return batch
