"""Read one input part: name every sample, check its vectors, compute its CLIP score.

The part's image vectors are written once, L2-normalised float32, to the work folder, so
every later step reads them without conversion and without the input files. Nothing is
dropped here: a sample that cannot be used (no key, bad uid, NaN or zero image vector)
keeps its row with a ``failed_reason`` and reaches the ledger as ``failed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.algorithms import exact
from pipeline.algorithms.vectors import MIN_NORM, unit_rows, usable
from pipeline.ids import derive_u128, u128_to_uids, uids_to_u128
from pipeline.io.buffers import populated
from pipeline.io.embeddings import EmbeddingPart, read_part
from pipeline.io.vector_store import scale_path
from pipeline.workdir import atomic_write, write_npy, write_parquet
from schemas import arrow as schemas

# rows converted, normalised, scored and written at a time: 2 MB of float32 at d = 512, so
# that the passes after the conversion find the chunk in the caches (a 100,000 x 512 float16
# part with text took 0.55 s on one thread here, 0.75 s in chunks of 32,768 rows)
CHUNK_ROWS = 1024


# the read step's columns of few distinct values; uids and keys are written plain (a part of
# 100,000 rows: 67 -> 36 ms and 4.8 -> 3.8 MB)
DICTIONARY_COLUMNS = ["shard", "failed_reason", "failed_stage"]


@dataclass
class IngestedPart:
    """What later steps need to know of an ingested part."""

    index: int
    shard: str
    rows: int
    dim: int
    vectors: str  # .npy of the part's unit image vectors, float32, row-aligned (0 if failed)
    has_text: bool
    failed: int
    derived: int = 0  # rows whose uid was derived from shard name and key (no uid given)

    def to_json(self) -> dict:
        return asdict(self)


def write_unit_vectors(path: Path, image: np.ndarray, text: np.ndarray | None,
                       keep: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Stream ``image`` to ``path`` as unit float32 rows; float16 input is stored as it is
    (unusable rows zeroed) beside the divisor of every row (``scale_path``), half the bytes,
    and the store divides on reading: the same float32 values either way.

    Returns (image norms, CLIP scores, the unit rows when ``keep`` else None): a caller
    that keeps vectors in memory saves reading them back.
    """
    n, d = image.shape
    half = image.dtype == np.float16
    norms = np.empty(n, dtype=np.float32)
    divisors = np.ones(n, dtype=np.float32)
    score = np.full(n, np.nan, dtype=np.float32)
    kept = populated((n, d), np.float32) if keep else None

    rows = min(n, CHUNK_ROWS)
    scratch = np.empty((rows, d), dtype=np.float32) if kept is None else None
    text_scratch = np.empty((rows, d), dtype=np.float32) if text is not None else None
    raw_scratch = np.empty((rows, d), dtype=np.float16) if half else None

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f2" if half else "<f4", "fortran_order": False, "shape": (n, d)})
            for start in range(0, n, CHUNK_ROWS):
                sl = slice(start, min(n, start + CHUNK_ROWS))
                m = sl.stop - sl.start
                out = kept[sl] if kept is not None else scratch[:m]
                img, norms[sl] = unit_rows(image[sl], out)
                ok = usable(norms[sl])
                if half:
                    if ok.all():
                        np.ascontiguousarray(image[sl]).tofile(f)  # the input's bytes
                    else:
                        raw = raw_scratch[:m]
                        np.copyto(raw, image[sl])
                        raw[~ok] = 0
                        raw.tofile(f)
                    divisors[sl] = np.where(ok, norms[sl], 1.0)  # unit_rows's divisor
                else:
                    img.tofile(f)
                if text is not None:
                    txt, txt_norms = unit_rows(text[sl], text_scratch[:m])
                    ok &= usable(txt_norms)
                    score[sl] = np.where(ok, exact.round_once(exact.dot_rows(img, txt)),
                                         np.nan)

    atomic_write(path, write)
    if half:
        write_npy(scale_path(path), divisors)
    else:
        scale_path(path).unlink(missing_ok=True)
    return norms, score, kept


def _failed_reasons(key_missing: np.ndarray, uids: pa.Array, uid_ok: np.ndarray,
                    norms: np.ndarray, earlier: list[str | None] | None
                    ) -> np.ndarray:
    """Per row, why the sample cannot be used (None when it can); the first reason wins.

    ``earlier`` holds reasons recorded before the embeddings were made (by the embed stage).
    """
    reasons = np.full(len(key_missing), None, dtype=object)
    finite = np.isfinite(norms)
    reasons[finite & (norms < MIN_NORM)] = "image embedding is a zero vector"
    reasons[~finite] = "image embedding has a NaN or infinite value"
    bad = np.flatnonzero(~uid_ok)
    for i, uid in zip(bad, uids.take(pa.array(bad)).to_pylist(), strict=True):
        reasons[i] = f"uid {uid!r} is not 32 hex digits"
    reasons[key_missing] = "missing key"
    if earlier is not None:
        before = np.array(earlier, dtype=object)
        reasons = np.where(before != None, before, reasons)  # noqa: E711 - object array
    return reasons


def _missing(names: pa.Array) -> np.ndarray:
    """Where a name is null or empty."""
    empty = pc.fill_null(pc.equal(pc.binary_length(names), 0), True)
    return empty.to_numpy(zero_copy_only=False)


def _identify(shards: pa.Array, keys: pa.Array, key_missing: np.ndarray,
              given: pa.Array | None, hash_apart: bool = False
              ) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]:
    """uid column, its (high, low) halves and validity; missing uids derived (SPEC §5), by
    helper processes with ``hash_apart``."""
    n = len(keys)
    given = pa.nulls(n, pa.string()) if given is None else given
    missing = given.is_null().to_numpy(zero_copy_only=False) & ~key_missing
    if not missing.any():
        hi, lo, ok = uids_to_u128(given)
        return given, hi, lo, ok
    rows = np.flatnonzero(missing)
    at = pa.array(rows)
    d_hi, d_lo = derive_u128(shards.take(at), keys.take(at), apart=hash_apart)
    derived = u128_to_uids(d_hi, d_lo)
    if missing.all():
        uids = pa.array(derived, pa.binary()).cast(pa.string())
        return uids, d_hi, d_lo, np.ones(n, dtype=bool)
    every = np.zeros(n, dtype=derived.dtype)
    every[rows] = derived
    merged = pc.if_else(pa.array(missing), pa.array(every, pa.binary()).cast(pa.string()),
                        given)
    hi, lo, ok = uids_to_u128(merged)
    return merged, hi, lo, ok


def ingest_part(part: EmbeddingPart, out_dir: Path, keep_vectors: bool = False,
                hash_apart: bool = False) -> tuple[IngestedPart, np.ndarray | None]:
    """Write ``part-NNNNN.parquet`` and ``vectors-NNNNN.npy`` for one input part.

    With ``keep_vectors`` the unit vectors also come back in memory; with ``hash_apart``
    derived uids are hashed by helper processes (``uid_hashing``).
    """
    data = read_part(part)
    n = len(data.keys)
    key_missing = _missing(data.keys)
    uids, uid_hi, uid_lo, uid_ok = _identify(data.shards, data.keys, key_missing, data.uids,
                                             hash_apart)
    derived = n if data.uids is None else data.uids.null_count

    vectors = out_dir / f"vectors-{part.index:05d}.npy"
    norms, score, unit = write_unit_vectors(vectors, data.image, data.text, keep_vectors)
    reasons = _failed_reasons(key_missing, uids, uid_ok, norms, data.failed_reason)
    failed = reasons != None  # noqa: E711 - object array
    stage = np.where(failed, "read", None).astype(object)
    if data.failed_stage is not None:
        given = np.array(data.failed_stage, dtype=object)
        stage = np.where(failed & (given != None), given, stage)  # noqa: E711
    if data.clip_score is not None:
        score = np.where(failed, np.nan, data.clip_score).astype(np.float32)
    table = pa.table({
        "key": data.keys,
        "uid": uids,
        "shard": data.shards,
        "row": pa.array(np.arange(n, dtype=np.int64)),
        "uid_hi": pa.array(uid_hi, pa.uint64()),
        "uid_lo": pa.array(uid_lo, pa.uint64()),
        "failed_reason": pa.array(reasons, pa.string()),
        "failed_stage": pa.array(stage, pa.string()),
        "clip_score": pa.array(score, pa.float32(), mask=np.isnan(score)),
    }, schema=schemas.INGEST)
    write_parquet(out_dir / f"part-{part.index:05d}.parquet", table,
                  dictionary=DICTIONARY_COLUMNS)
    return IngestedPart(
        index=part.index, shard=part.shard, rows=n, dim=int(data.image.shape[1]),
        vectors=str(vectors), has_text=data.text is not None or data.clip_score is not None,
        failed=int(failed.sum()), derived=int(derived),
    ), unit
