"""Read one input part: name every sample, check its vectors, compute its CLIP score.

Nothing is dropped here: a sample that cannot be used (no key, bad uid, NaN or zero image
vector) keeps its row with a ``failed_reason`` and reaches the ledger as ``failed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.algorithms.vectors import MIN_NORM
from pipeline.ids import derive_uid, uids_to_u128
from pipeline.io.embeddings import EmbeddingPart, local_path, read_part
from pipeline.workdir import write_npy, write_parquet
from schemas import arrow as schemas

CHUNK_ROWS = 65536


@dataclass
class IngestedPart:
    """What later steps need to know of an ingested part."""

    index: int
    shard: str
    rows: int
    dim: int
    vectors: str  # a local .npy file holding the part's image vectors, row-aligned
    has_text: bool
    failed: int

    def to_json(self) -> dict:
        return asdict(self)


def _scores_and_reasons(image: np.ndarray, text: np.ndarray | None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: is the image vector usable, the CLIP score (NaN if none), and why unusable."""
    n = image.shape[0]
    usable = np.ones(n, dtype=bool)
    nonfinite = np.zeros(n, dtype=bool)
    score = np.full(n, np.nan, dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        sl = slice(start, min(n, start + CHUNK_ROWS))
        img = np.asarray(image[sl], dtype=np.float32)
        img_norm = np.sqrt(np.einsum("ij,ij->i", img, img))
        bad_img = ~np.isfinite(img_norm)
        nonfinite[sl] = bad_img
        usable[sl] = np.isfinite(img_norm) & (img_norm >= MIN_NORM)
        if text is not None:
            txt = np.asarray(text[sl], dtype=np.float32)
            txt_norm = np.sqrt(np.einsum("ij,ij->i", txt, txt))
            dots = np.einsum("ij,ij->i", img, txt)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                s = dots / (img_norm * txt_norm)
            ok = usable[sl] & np.isfinite(txt_norm) & (txt_norm >= MIN_NORM)
            score[sl] = np.where(ok, s, np.nan)
    return usable, score, nonfinite


def ingest_part(part: EmbeddingPart, out_dir: Path) -> IngestedPart:
    """Write ``part-NNNNN.parquet`` (and a vectors copy when the source is not a local npy)."""
    data = read_part(part)
    n = len(data.keys)
    reasons: list[str | None] = [None] * n

    uids: list[str | None] = list(data.uids)
    for i in range(n):
        if data.keys[i] is None or data.keys[i] == "":
            reasons[i] = "missing key"
        if uids[i] is None and data.keys[i]:
            uids[i] = derive_uid(data.shards[i], data.keys[i])
    uid_hi, uid_lo, uid_ok = uids_to_u128(uids)
    for i in np.flatnonzero(~uid_ok):
        if reasons[i] is None:
            reasons[i] = f"uid {uids[i]!r} is not 32 hex digits"

    usable, score, nonfinite = _scores_and_reasons(data.image, data.text)
    for i in np.flatnonzero(~usable):
        if reasons[i] is None:
            reasons[i] = ("image embedding has a NaN or infinite value" if nonfinite[i]
                          else "image embedding is a zero vector")

    table = pa.table({
        "key": pa.array(data.keys, pa.string()),
        "uid": pa.array(uids, pa.string()),
        "shard": pa.array(data.shards, pa.string()),
        "row": pa.array(np.arange(n, dtype=np.int64)),
        "uid_hi": pa.array(uid_hi, pa.uint64()),
        "uid_lo": pa.array(uid_lo, pa.uint64()),
        "failed_reason": pa.array(reasons, pa.string()),
        "clip_score": pa.array(score, pa.float32(), mask=np.isnan(score)),
    }, schema=schemas.INGEST)
    write_parquet(out_dir / f"part-{part.index:05d}.parquet", table)

    source = local_path(part.image_path) if part.npz_image_key is None else None
    if source is None or source.suffix != ".npy":
        target = out_dir / f"vectors-{part.index:05d}.npy"
        write_npy(target, np.asarray(data.image))
        source = target
    return IngestedPart(
        index=part.index, shard=part.shard, rows=n, dim=int(data.image.shape[1]),
        vectors=str(source), has_text=data.text is not None,
        failed=sum(r is not None for r in reasons),
    )
