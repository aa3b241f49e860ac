"""PIL's antialiased resampling of a whole batch of pictures of any sizes, as matrix products.

PIL resizes an 8-bit picture in two passes, widths first then heights, each a weighted sum of
the input pixels near every output pixel, rounded half up to 8 bits (``precompute_coeffs`` in
its ``Resample.c``: support ``filter support x max(scale, 1)``, window bounds rounded as C
truncates, weights normalised to sum 1; torch's antialiased ``interpolate`` computes the same
weights). One pass over one axis is then a matrix of those weights: pictures of different
sizes, zero-padded to the largest in a batch, are resampled together by two batched products,
with a centre crop folded into the matrices (only the rows and columns it keeps are
computed). Per picture work on the GPU is one copy into the padded batch: resizing picture by
picture launched about fifteen kernels each, and the tensor path ran at 450 pictures/s on an
H200 for two models (bench/gpu_check.py embed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from pipeline.float32_products import full_float32

CUBIC_A = -0.5  # PIL's bicubic (and torch's antialiased one); torch's plain bicubic has -0.75


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    near = ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * CUBIC_A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp_(min=0)


# interpolation -> (filter, its support at scale 1)
FILTERS = {TF.InterpolationMode.BICUBIC: (_bicubic, 2.0),
           TF.InterpolationMode.BILINEAR: (_bilinear, 1.0)}


@dataclass(frozen=True)
class Axis:
    """One axis of a pass for n pictures: their sizes in, the sizes they are resized to, and
    which ``length`` resized positions are kept from ``offsets`` on (a crop; positions
    outside a picture are zeros, as a crop larger than the picture pads)."""

    sizes: torch.Tensor  # [n] int64
    resized: torch.Tensor  # [n] int64
    offsets: torch.Tensor  # [n] int64
    length: int


def _kept(axis: Axis, device: torch.device) -> torch.Tensor:
    """[n, length] the resized positions each output row takes (a crop's offset on)."""
    return axis.offsets.to(device)[:, None] + torch.arange(axis.length, device=device)


def axis_weights(axis: Axis, padded: int, interpolation: TF.InterpolationMode,
                 device: torch.device) -> torch.Tensor:
    """[n, length, padded] float32: row r of picture i holds the weights of its input
    positions (0 beyond its size) for its resized position ``offsets[i] + r``. The weights
    are computed in float64 as PIL computes them, for the few taps of each row's window."""
    kernel, support_at_1 = FILTERS[interpolation]
    f64 = {"device": device, "dtype": torch.float64}
    sizes, resized = axis.sizes.to(**f64)[:, None], axis.resized.to(**f64)[:, None]
    kept = _kept(axis, device)
    inside = (kept >= 0) & (kept < axis.resized.to(device)[:, None])
    scale = sizes / resized
    filter_scale = scale.clamp(min=1.0)
    support = support_at_1 * filter_scale
    center = (kept.to(torch.float64) + 0.5) * scale
    first = (center - support + 0.5).floor().clamp(min=0)  # C's truncation, then >= 0
    last = torch.minimum((center + support + 0.5).floor(), sizes)
    widest = support_at_1 * max(1.0, max(s / r for s, r in zip(axis.sizes.tolist(),
                                                                axis.resized.tolist(),
                                                                strict=True)))
    taps = 2 * math.ceil(widest) + 1  # positions of the widest window (from host numbers)
    j = first[:, :, None] + torch.arange(taps, **f64)  # [n, length, taps]
    w = kernel((j - center[:, :, None] + 0.5) / filter_scale[:, :, None])
    w = w * (j < last[:, :, None])
    total = w.sum(-1, keepdim=True)
    w = torch.where(total != 0, w / total, w) * inside[:, :, None]
    out = torch.zeros((len(sizes), axis.length, padded), device=device, dtype=torch.float32)
    # taps past the padded edge have weight 0: clamped onto it, they add nothing
    return out.scatter_add_(2, j.clamp(max=padded - 1).long(), w.to(torch.float32))


def selection(axis: Axis, padded: int, device: torch.device) -> torch.Tensor:
    """[n, length, padded] float32 ones where a crop (or padding) takes input positions."""
    kept = _kept(axis, device)
    inside = (kept >= 0) & (kept < axis.sizes.to(device)[:, None])
    j = torch.arange(padded, device=device)
    return ((j == kept[:, :, None]) & inside[:, :, None]).to(torch.float32)


def resized_size(height: int, width: int, size: int | tuple[int, ...], max_size: int | None
                 ) -> tuple[int, int]:
    """(height, width) that torchvision's ``Resize(size, max_size=...)`` gives a picture of
    this size, computed as torchvision computes it (``tests/test_resample.py`` holds the two
    together; asking torchvision on a meta tensor took 0.2 ms a picture, a tenth of a batch's
    model time on an H200)."""
    if isinstance(size, tuple) and len(size) == 2:
        return size[0], size[1]
    short, long = (width, height) if width <= height else (height, width)
    new_short = size if isinstance(size, int) else size[0]
    new_long = int(new_short * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if width <= height else (new_short, new_long)


def crop_offsets(sizes: list[int], crop: int) -> list[int]:
    """Where torchvision's ``center_crop`` starts on each size (negative: it pads first)."""
    return [-((crop - s) // 2) if crop > s else int(round((s - crop) / 2.0)) for s in sizes]


def _round_8bit(x: torch.Tensor) -> torch.Tensor:
    return x.add_(0.5).floor_().clamp_(0, 255)  # PIL rounds half up, within 0..255


@dataclass(frozen=True)
class Stage:
    """A ``Resize`` (or none) and the ``CenterCrop`` after it (or none): one pair of passes."""

    resize: T.Resize | None
    crop: tuple[int, int] | None  # (height, width)


def stages_of(steps: Sequence[T.Resize | T.CenterCrop]) -> list[Stage]:
    """Geometry steps as stages: each Resize with the CenterCrop right after it folded in."""
    stages: list[Stage] = []
    for step in steps:
        if isinstance(step, T.CenterCrop):
            crop = tuple(step.size) if len(step.size) == 2 else (step.size[0], step.size[0])
            if stages and stages[-1].crop is None and stages[-1].resize is not None:
                stages[-1] = Stage(stages[-1].resize, crop)
            else:
                stages.append(Stage(None, crop))
        else:
            stages.append(Stage(step, None))
    return stages


def _size_key(size: object) -> int | tuple[int, ...]:
    return size if isinstance(size, int) else tuple(size)


def _axis(sizes: list[int], resized: list[int], crop: int | None) -> tuple[Axis, list[int]]:
    """One axis of a stage, and the sizes it leaves the pictures."""
    if crop is None:
        return Axis(torch.tensor(sizes), torch.tensor(resized), torch.zeros(len(sizes),
                    dtype=torch.int64), max(resized)), resized
    return Axis(torch.tensor(sizes), torch.tensor(resized),
                torch.tensor(crop_offsets(resized, crop)), crop), [crop] * len(sizes)


def run_stage(stage: Stage, canvas: torch.Tensor, heights: list[int], widths: list[int]
              ) -> tuple[torch.Tensor, list[int], list[int]]:
    """One stage on a zero-padded float32 batch [n, 3, H, W] of pictures of the given sizes:
    the new batch (padded to the largest output) and the output sizes."""
    device = canvas.device
    new_h, new_w = heights, widths
    if stage.resize is not None:
        key = (_size_key(stage.resize.size), stage.resize.max_size)
        out = [resized_size(h, w, *key) for h, w in zip(heights, widths, strict=True)]
        new_h, new_w = [o[0] for o in out], [o[1] for o in out]
    crop_h, crop_w = stage.crop if stage.crop is not None else (None, None)
    rows, kept_h = _axis(heights, new_h, crop_h)
    cols, kept_w = _axis(widths, new_w, crop_w)
    if stage.resize is not None:
        mode = stage.resize.interpolation
        a_h = axis_weights(rows, canvas.shape[-2], mode, device)
        a_w = axis_weights(cols, canvas.shape[-1], mode, device)
    else:
        a_h = selection(rows, canvas.shape[-2], device)
        a_w = selection(cols, canvas.shape[-1], device)
    with full_float32(torch):
        wide = _round_8bit(torch.matmul(canvas, a_w.transpose(1, 2)[:, None]))  # widths first
        del canvas
        out = _round_8bit(torch.matmul(a_h[:, None], wide))
    return out, kept_h, kept_w


def resample(images: Sequence[torch.Tensor], stages: Sequence[Stage]) -> list[torch.Tensor]:
    """The stages applied to [3, H, W] uint8 pictures, together: float32 [3, h, w] pictures
    holding whole 8-bit levels, as PIL's resize and torchvision's crop give them."""
    heights = [int(im.shape[-2]) for im in images]
    widths = [int(im.shape[-1]) for im in images]
    canvas = images[0].new_zeros((len(images), 3, max(heights), max(widths)),
                                 dtype=torch.float32)
    for i, image in enumerate(images):
        canvas[i, :, : heights[i], : widths[i]] = image
    for stage in stages:
        canvas, heights, widths = run_stage(stage, canvas, heights, widths)
    return [canvas[i, :, : heights[i], : widths[i]] for i in range(len(images))]
