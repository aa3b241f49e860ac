"""The model side of the embed stage: load open_clip / timm models, encode batches."""

from pipeline.embed.encoder import (
    BatchEncoder,
    EmbedOutput,
    PreparedBatch,
    PreparedSample,
    Preprocessor,
    collate,
)
from pipeline.embed.models import (
    EFFICIENTNET_LITE0_WHEEL,
    TINY_MODEL,
    CheckpointError,
    ClipModel,
    ClusterEncoder,
    EmbedModelError,
    load_clip,
    load_cluster_encoder,
    register_model_configs,
    resolve_autocast,
    resolve_device,
)

__all__ = [
    "EFFICIENTNET_LITE0_WHEEL",
    "TINY_MODEL",
    "BatchEncoder",
    "CheckpointError",
    "ClipModel",
    "ClusterEncoder",
    "EmbedModelError",
    "EmbedOutput",
    "PreparedBatch",
    "PreparedSample",
    "Preprocessor",
    "collate",
    "load_clip",
    "load_cluster_encoder",
    "register_model_configs",
    "resolve_autocast",
    "resolve_device",
]
