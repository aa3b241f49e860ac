"""The tensor path's batched resampling (pipeline/embed/resample.py): pictures of any sizes
resampled together give what each gets alone, PIL's resize within two 8-bit levels, and
torchvision's centre crop exactly (padding included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from jpeg_corpus import photo
from PIL import Image

from pipeline.embed.resample import Stage, resample, resized_size, stages_of

BICUBIC, BILINEAR = T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR
SIZES = [(70, 90), (41, 300), (224, 224), (13, 9), (333, 257), (120, 121)]


def pictures() -> list[torch.Tensor]:
    return [torch.from_numpy(np.array(photo(w, h, i))).permute(2, 0, 1).contiguous()
            for i, (h, w) in enumerate(SIZES)]


@pytest.mark.parametrize("mode", [BICUBIC, BILINEAR])
def test_each_picture_of_a_mixed_batch_gets_what_it_gets_alone(mode: T.InterpolationMode
                                                                ) -> None:
    stages = stages_of([T.Resize(100, interpolation=mode), T.CenterCrop(96)])
    together = resample(pictures(), stages)
    for image, got in zip(pictures(), together, strict=True):
        alone = resample([image], stages)[0]
        assert got.shape == (3, 96, 96)
        # the same weights; only the padding's zeros join the sums, so whole levels agree
        assert (got - alone).abs().max() <= 1 and (got != alone).float().mean() < 1e-3


@pytest.mark.parametrize("mode", [BICUBIC, BILINEAR])
@pytest.mark.parametrize("size", [64, 160, (50, 400)])
def test_a_resize_is_pils_within_two_levels(mode: T.InterpolationMode,
                                            size: int | tuple[int, int]) -> None:
    resize = T.Resize(size, interpolation=mode)
    got = resample(pictures(), [Stage(resize, None)])
    for (h, w), i, out in zip(SIZES, range(len(SIZES)), got, strict=True):
        want = torch.from_numpy(np.array(resize(photo(w, h, i)))).permute(2, 0, 1).float()
        assert out.shape == want.shape
        diff = (out - want).abs()
        # one axis up and the other down (50 x 400 from 70 x 90) rounds off by one level
        # at a fifth of the pixels, as torch's own interpolate did: PIL's fixed point
        assert diff.max() <= 2 and diff.mean() < 0.25, (size, (h, w), diff.max(), diff.mean())


def test_a_crop_alone_is_torchvisions_exactly_padding_included() -> None:
    for crop in ((100, 100), (30, 500)):
        got = resample(pictures(), stages_of([T.CenterCrop(crop)]))
        for image, out in zip(pictures(), got, strict=True):
            assert torch.equal(out, TF.center_crop(image, list(crop)).float())


def test_an_axis_left_as_it_is_keeps_its_pixels() -> None:
    image = pictures()[2]  # 224 x 224: Resize(224) changes nothing
    out = resample([image], stages_of([T.Resize(224, interpolation=BICUBIC)]))[0]
    assert torch.equal(out, image.float())


def test_pils_own_picture_and_the_stage_plan() -> None:
    stages = stages_of([T.Resize(224), T.CenterCrop(224), T.Resize(64), T.CenterCrop(32)])
    assert [(s.resize is not None, s.crop) for s in stages] == [(True, (224, 224)),
                                                               (True, (32, 32))]
    img = Image.fromarray(np.full((50, 80, 3), 200, np.uint8))
    flat = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    out = resample([flat], stages)[0]  # a flat picture stays flat through every pass
    assert out.shape == (3, 32, 32) and torch.equal(out, torch.full_like(out, 200))


@pytest.mark.parametrize("size,max_size", [(224, None), ((224,), None), (256, 300),
                                           ((100, 300), None)])
def test_the_resized_size_is_torchvisions(size: int | tuple[int, ...], max_size: int | None
                                          ) -> None:
    rng = np.random.default_rng(0)
    for h, w in [*rng.integers(1, 2000, (300, 2)).tolist(), (224, 224), (1, 1000), (999, 1)]:
        probe = torch.empty((3, h, w), dtype=torch.uint8, device="meta")
        got = resized_size(h, w, size, max_size)
        try:
            want = TF.resize(probe, list(size) if isinstance(size, tuple) else size,
                             max_size=max_size, antialias=True).shape[-2:]
        except RuntimeError:  # torch refuses an empty output (1 x 1000 under max_size 300)
            assert min(got) == 0, (h, w, got)
            continue
        assert got == tuple(want), (h, w)
