"""The GPU decoding path (issue 22, ``embed.decode``) checked on the CPU against the PIL path.

The tensor path's code runs unchanged on CPU tensors (torchvision's libjpeg-turbo instead of
nvJPEG), so without a GPU it is checked here: the header router sends every picture it must
not take to the CPU path; pixels after each model's preprocessing equal the PIL path's
within two 8-bit levels (mean under 0.1 level); the tiny model's embeddings agree to a
cosine of 0.999; a whole embed gives every sample the same outcome, failures and their
reasons included; and ``embed.decode: gpu`` without a GPU is a clear error. The GPU itself
is checked by ``bench/gpu_check.sh`` (its ``embed`` step).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from jpeg_corpus import (
    BIG,
    REFUSED,
    SMALL_LIMIT,
    TAKEN,
    encoded,
    jpeg,
    no_component,
    photo,
    real_photographs,
    write_shard,
)
from PIL import Image

from pipeline.config import ConfigError, validate_config
from pipeline.embed import BatchEncoder, load_clip, load_cluster_encoder
from pipeline.embed.jpeg_header import NotForTensorPath, read_jpeg_header
from pipeline.embed.tensor_decode import TensorTransform, decode_jpegs, orient
from pipeline.embed.tensor_path import (
    PendingJpeg,
    TensorPath,
    build_tensor_path,
    collate_mixed,
    decode_on_gpu,
    pending_jpeg,
)
from pipeline.io.decode import DecodeRules, decode_picture
from pipeline.io.shards import Sample
from pipeline.stages.embed import embed_shards

CPU = torch.device("cpu")
LEVEL = 1 / 255  # one 8-bit level, in ToTensor's [0, 1] scale
NO_GPU = not torch.cuda.is_available()


# --- the router --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TAKEN))
def test_router_takes_plain_jpegs(name: str) -> None:
    data = TAKEN[name]()
    header = read_jpeg_header(data, SMALL_LIMIT if name != "large" else BIG)
    with Image.open(io.BytesIO(data)) as img:
        assert (header.width, header.height) == img.size
        assert header.components == len(img.getbands())
        assert header.orientation == img.getexif().get(0x0112, 1)
    assert header.progressive == (name == "progressive")


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_router_sends_the_rest_to_the_cpu_path(name: str) -> None:
    make, why = REFUSED[name]
    data = make()
    with pytest.raises(NotForTensorPath, match=why):
        read_jpeg_header(data, SMALL_LIMIT)
    assert pending_jpeg(sample("k", data), SMALL_LIMIT, torch.zeros(3), True) is None


def test_what_pil_would_call_a_decompression_bomb_goes_the_cpu_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = TAKEN["rgb"]()  # 301 x 227
    assert pending_jpeg(sample("k", data), BIG, torch.zeros(3), True) is not None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 227)
    assert pending_jpeg(sample("k", data), BIG, torch.zeros(3), True) is None


# --- pixels and embeddings against the PIL path ------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> BatchEncoder:
    """The tiny CLIP model (bicubic resize to 64, crop 64) and timm's small test_resnet as
    the clustering encoder (bilinear resize to 168, crop 160), random weights."""
    clip = load_clip("conceptprune-tiny-vit", None, "cpu", "fp32", seed=0)
    cluster = load_cluster_encoder("test_resnet", None, "cpu", seed=0)
    return BatchEncoder(clip, cluster, full_batch=8)


@pytest.fixture(scope="module")
def lite0_transform() -> object:
    """The demo's clustering encoder's transform (bicubic resize to 256, crop 224)."""
    return load_cluster_encoder("tf_efficientnet_lite0", None, "cpu", seed=0).transform


def tensor_path_pixels(data: bytes, transforms: list[TensorTransform]
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    header = read_jpeg_header(data, BIG)
    decoded = decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], CPU)[0]
    assert decoded is not None
    upright = orient(decoded, header.orientation)
    return upright, [t([upright])[0] for t in transforms]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_tensor_path_matches_the_pil_path(encoder: BatchEncoder, lite0_transform: object
                                          ) -> None:
    pictures = [(name, make()) for name, make in TAKEN.items()] + real_photographs()
    assert any(name == "grace_hopper.jpg" for name, _ in pictures)
    prep = encoder.preprocessor
    pil_transforms = [prep.image_transform, prep.cluster_transform, lite0_transform]
    transforms = [TensorTransform(t) for t in pil_transforms]
    stds = [torch.as_tensor(t.normalize.std)[:, None, None] for t in transforms]
    worst, means = 0.0, []
    ours: list[list[torch.Tensor]] = []
    theirs: list[list[torch.Tensor]] = []
    for name, data in pictures:
        pil = decode_picture(data, where=name, max_pixels=BIG, background=(255, 255, 255))
        upright, got = tensor_path_pixels(data, transforms)
        # libjpeg-turbo on both sides, orientation read by us: the very same pixels
        assert torch.equal(upright, torch.from_numpy(np.array(pil)).permute(2, 0, 1)), name
        refs = [t(pil) for t in pil_transforms]
        for tensors, std, ref in zip(got, stds, refs, strict=True):
            assert tensors.shape == ref.shape, name
            levels = ((tensors - ref) * std).abs()  # back in [0, 1] units
            worst = max(worst, float(levels.max()))
            means.append(float(levels.mean()))
        ours.append(got)
        theirs.append(refs)
    print(f"\n{len(pictures)} JPEGs: largest difference {worst / LEVEL:.2f} levels, mean "
          f"{max(means) / LEVEL:.4f} levels at most")
    # PIL's two passes rounded to 8 bits, mirrored; PIL's fixed-point weights are not, so
    # a sum near a half level rounds the other way, twice at most
    assert worst <= 2 * LEVEL + 1e-6
    assert max(means) < 0.1 * LEVEL
    tokens = encoder.clip.tokenizer(["a photo"] * len(ours))
    a, b = (encoder.encode_batch(torch.stack([p[0] for p in side]), tokens, None,
                                 torch.stack([p[1] for p in side])) for side in (ours, theirs))
    for label, x, y in (("tiny CLIP", a.image_emb, b.image_emb),
                        ("test_resnet", a.cluster_emb, b.cluster_emb)):
        cos = cosines(x, y)
        print(f"{label} embeddings, tensor vs PIL path: cosine min {cos.min():.8f} "
              f"median {np.median(cos):.8f}")
        assert cos.min() >= 0.999


def test_a_transform_with_an_unmirrored_step_is_refused() -> None:
    import torchvision.transforms as T

    from pipeline.embed.tensor_decode import UnsupportedTransform

    steps = [T.Resize(32), T.CenterCrop(32), T.ToTensor()]
    TensorTransform(T.Compose(steps))
    for odd in (T.Grayscale(3), T.Resize(32, T.InterpolationMode.NEAREST),
                T.Resize(32, antialias=False)):
        with pytest.raises(UnsupportedTransform):
            TensorTransform(T.Compose([odd, *steps]))


# --- batches: the device refuses, the CPU path decides -----------------------------------


def sample(key: str, data: bytes, caption: str | None = "a picture") -> Sample:
    return Sample(key=key, uid=key, shard="00000.tar", image_ext="jpg", image_bytes=data,
                  caption=caption)


def test_a_jpeg_the_device_refuses_goes_through_the_cpu_path(
        encoder: BatchEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.embed import tensor_path

    rules = DecodeRules(BIG)
    good = jpeg(photo(90, 70, 40), quality=90)
    broken = no_component(41)  # the router refuses it; taken here as if a device's error
    prep = encoder.preprocessor
    items = [pending_jpeg(sample(k, d), BIG, *prep.text("a picture")) or
             PendingJpeg(d, 1, 90 * 70, k, "jpg", "00000.tar", *prep.text("a picture"))
             for k, d in (("a", good), ("b", broken), ("c", good))]
    items.insert(1, prep(Image.open(io.BytesIO(encoded(photo(50, 50, 42), "PNG"))), None))
    batch = collate_mixed(items)
    path = TensorPath.for_encoder(encoder, CPU)
    real = tensor_path.decode_jpegs
    refuse_first = {"done": False}

    def refusing(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
        out = real(data, device)
        if not refuse_first["done"]:  # the device refuses row "a": the CPU path takes it
            refuse_first["done"] = True
            out[0] = None
        return out

    monkeypatch.setattr(tensor_path, "decode_jpegs", refusing)
    prepared, failed = path.prepare(batch, rules)
    assert list(failed) == [2]  # row of "b": neither decoder reads it, PIL's reason given
    assert failed[2].startswith("cannot decode image b.jpg in shard 00000.tar")
    assert len(prepared) == 3 and prepared.cluster_pixels is not None
    pil = decode_picture(good, where="a", max_pixels=BIG, background=(255, 255, 255))
    assert torch.equal(prepared.pixels[0], prep.image_transform(pil))  # the CPU path's own
    assert torch.equal(prepared.pixels[1], items[1].pixels)  # the PNG, prepared in a worker
    assert (prepared.pixels[2] - prep.image_transform(pil)).abs().max() < 0.05  # tensor path
    assert prepared.has_text.tolist() == [True, False, True]


# --- a whole embed: same outcomes per sample ---------------------------------------------


def embed(encoder: BatchEncoder, shard: Path, out: Path, tensor: TensorPath | None,
          workers: int) -> tuple[pq.Table, np.ndarray, np.ndarray]:
    done = []
    embed_shards([(0, str(shard), "00000.tar")], encoder, out, 8, workers, done.append,
                 decoding=DecodeRules(SMALL_LIMIT), tensor=tensor)
    assert len(done) == 1
    return (pq.read_table(out / "metadata" / "metadata_0.parquet"),
            np.load(out / "clip_img_emb" / "clip_img_emb_0.npy"),
            np.load(out / "img_emb" / "img_emb_0.npy"))


def test_whole_embed_with_the_tensor_path_gives_the_same_outcomes(
        encoder: BatchEncoder, tmp_path: Path) -> None:
    shard = tmp_path / "data" / "00000.tar"
    keys = write_shard(shard)
    meta_cpu, clip_cpu, cluster_cpu = embed(encoder, shard, tmp_path / "cpu", None, 0)
    # one worker process: the batches with JPEG bytes cross a process boundary
    meta_gpu, clip_gpu, cluster_gpu = embed(encoder, shard, tmp_path / "tensor",
                                            TensorPath.for_encoder(encoder, CPU), 1)
    assert meta_cpu.column("key").to_pylist() == keys
    for column in ("key", "uid", "failed_reason", "failed_stage"):
        assert meta_gpu.column(column).to_pylist() == meta_cpu.column(column).to_pylist()
    reasons = dict(zip(keys, meta_cpu.column("failed_reason").to_pylist(), strict=True))
    failed = {k for k, r in reasons.items() if r is not None}
    # what fails on the CPU path fails alike; what it decodes is embedded on both
    assert {k.split("_", 1)[1] for k in failed} >= {"garbled", "truncated", "big",
                                                    "no_component", "no_quant_table",
                                                    "bad_huffman", "no_image"}
    assert "embed.max_pixels" in reasons[next(k for k in keys if k.endswith("_big"))]
    ok = np.array([r is None for r in reasons.values()])
    assert ok.sum() >= 25
    for ours, theirs in ((clip_gpu, clip_cpu), (cluster_gpu, cluster_cpu)):
        assert not ours[~ok].any() and not theirs[~ok].any()  # zero rows for failures
        cos = cosines(ours[ok], theirs[ok])
        print(f"\nwhole embed, tensor vs CPU path, dim {ours.shape[1]}: cosine min "
              f"{cos.min():.8f} median {np.median(cos):.8f}")
        assert cos.min() >= 0.999
    scores = [meta.column("clip_score").to_numpy(zero_copy_only=False)
              for meta in (meta_cpu, meta_gpu)]
    assert np.array_equal(np.isnan(scores[0]), np.isnan(scores[1]))


# --- the setting -------------------------------------------------------------------------


@pytest.mark.skipif(not NO_GPU, reason="checks the machine without a GPU")
def test_decode_gpu_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"embed\.decode=gpu .*no CUDA GPU.*decode=auto"):
        decode_on_gpu("gpu", "auto")
    with pytest.raises(ConfigError, match=r"embed\.device=cpu runs the models on the CPU"):
        decode_on_gpu("gpu", "cpu")
    assert decode_on_gpu("auto", "auto") is False and decode_on_gpu("cpu", "auto") is False
    # a run stops at once, before any shard is read or model loaded
    from pipeline.runner import run

    write_shard(tmp_path / "data" / "00000.tar")
    cfg = validate_config({"input": {"shards": str(tmp_path / "data")},
                           "output": str(tmp_path / "out"), "progress": False,
                           "embed": {"decode": "gpu", "pretrained": None,
                                     "model": "conceptprune-tiny-vit"}})
    with pytest.raises(ConfigError, match="embed.decode=gpu"):
        run(cfg)
    assert not list((tmp_path / "out").rglob("*.npy"))


def test_auto_logs_its_choice_and_gpu_refuses_a_cpu_model(
        encoder: BatchEncoder, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.embed.tensor_path"):
        assert build_tensor_path("auto", encoder) is None
    assert "embed.decode=auto: decoding images on the CPU (the models run on cpu" in caplog.text
    assert build_tensor_path("cpu", encoder) is None
    with pytest.raises(ConfigError, match="embed.decode=gpu: the models run on cpu"):
        build_tensor_path("gpu", encoder)


def test_the_decode_path_enters_the_fingerprint_only_on_the_gpu(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-decoded run keeps the fingerprints it had before the setting existed, so its
    work folder is reused; GPU decoding is another fingerprint."""
    from pipeline.algorithms.exact import EXACT_VERSION
    from pipeline.embed import tensor_path
    from pipeline.io.decode import DECODE_VERSION
    from pipeline.run_inputs import InputSide, file_identity
    from pipeline.workdir import WorkDir, fingerprint

    write_shard(tmp_path / "data" / "00000.tar")

    def plan(decode: str) -> str:
        cfg = validate_config({"input": {"shards": str(tmp_path / "data")},
                               "output": str(tmp_path / "out"), "embed": {"decode": decode}})
        return InputSide(cfg, engine=None, work=WorkDir(cfg.work_dir)).embed_plan().fingerprints[0]

    cfg = validate_config({"input": {"shards": str(tmp_path / "data")},
                           "output": str(tmp_path / "out")})
    before = {**cfg.embed.model_dump(exclude={"workers", "decode"}), "decode": DECODE_VERSION,
              "exact": EXACT_VERSION}
    pin = {"shard": "00000.tar", "file": file_identity(str(tmp_path / "data" / "00000.tar"))}
    assert plan("cpu") == fingerprint("embed", pin, before)
    if NO_GPU:
        assert plan("auto") == plan("cpu")
    monkeypatch.setattr(tensor_path, "models_on_gpu", lambda device: True)
    assert plan("gpu") == plan("auto") != plan("cpu")
