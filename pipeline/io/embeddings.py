"""Readers for precomputed embeddings (SPEC section 6), one part (file) at a time.

Two layouts:

- clip-retrieval: ``img_emb/img_emb_{i}.npy``, optional ``text_emb/text_emb_{i}.npy`` and
  ``metadata/metadata_{i}.parquet`` in the same row order (``image_path`` is the key).
- DataComp: ``{shard}.parquet`` (uid, text, ...) beside ``{shard}.npz`` holding
  ``{model}_img`` and ``{model}_txt`` arrays in row order.

A part yields its metadata (key, uid or null, shard) and its vectors; local ``.npy`` files are
memory-mapped so nothing is read before it is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConceptpruneError
from pipeline.io import npy


class InputError(ConceptpruneError, ValueError):
    """The input cannot be read as given; the message names the file and the fix."""


@dataclass(frozen=True)
class EmbeddingPart:
    """One input file group: metadata plus the image (and optional text) embeddings."""

    index: int
    shard: str
    metadata_path: str
    image_path: str
    text_path: str | None = None
    npz_image_key: str | None = None  # set for DataComp npz members
    npz_text_key: str | None = None


@dataclass
class PartData:
    """One part's samples as read. The names are Arrow string arrays, never Python lists:
    the read step runs parts on threads at once, and a list of a part's strings (and the
    arrays built back from it) held the GIL for about as long as its vectors' arithmetic."""

    keys: pa.Array  # strings, null where a sample has none
    uids: pa.Array | None  # strings, null where a sample has none; None: no uid column
    shards: pa.Array  # strings
    image: np.ndarray
    text: np.ndarray | None
    # Written by our own embed stage: samples that failed before embedding (their vectors
    # are zeros), and CLIP scores when the clustering vectors come from another encoder.
    failed_reason: list[str | None] | None = None
    failed_stage: list[str | None] | None = None
    clip_score: np.ndarray | None = None


def _fs(root: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(root)
    return fs, path.rstrip("/")


def _join(fs: fsspec.AbstractFileSystem, root: str, name: str) -> str:
    path = f"{root}/{name}"
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


_NUMBERED = re.compile(r"^(?P<stem>.+?)_(?P<num>\d+)\.(?P<ext>npy|parquet)$")


def _numbered(fs: fsspec.AbstractFileSystem, folder: str, stem: str, ext: str) -> dict[int, str]:
    if not fs.isdir(folder):
        return {}
    out: dict[int, str] = {}
    for entry in fs.ls(folder, detail=False):
        m = _NUMBERED.match(PurePosixPath(entry).name)
        if m and m["stem"] == stem and m["ext"] == ext:
            out[int(m["num"])] = PurePosixPath(entry).name
    return out


def discover_clip_retrieval(root: str) -> list[EmbeddingPart]:
    """The parts of a clip-retrieval folder, in numeric order."""
    fs, base = _fs(root)
    if not fs.isdir(base):
        raise InputError(
            f"input.embeddings folder {root} does not exist; set input.embeddings to a "
            "clip-retrieval output folder (img_emb/, text_emb/, metadata/)"
        )
    images = _numbered(fs, f"{base}/img_emb", "img_emb", "npy")
    if not images:
        raise InputError(
            f"no img_emb/img_emb_{{i}}.npy files under {root}: input.embeddings must point at a "
            "clip-retrieval output folder (img_emb/, text_emb/, metadata/)"
        )
    metas = _numbered(fs, f"{base}/metadata", "metadata", "parquet")
    texts = _numbered(fs, f"{base}/text_emb", "text_emb", "npy")
    if lone := sorted(set(metas) - set(images)):
        num = lone[0]
        raise InputError(
            f"{_join(fs, base, 'metadata/' + metas[num])} has no image embeddings file "
            f"img_emb/img_emb_{num}.npy beside it, so its samples would be left out unseen; "
            "restore the file, or move the metadata file out of the input too")
    # some parts have text embeddings: a part without them would lose its scores
    if texts and (odd := sorted(set(images) ^ set(texts))):
        num = odd[0]
        have, lack = ("img_emb", "text_emb") if num in images else ("text_emb", "img_emb")
        raise InputError(
            f"{_join(fs, base, f'{have}/{have}_{num}.npy')} has no {lack}/{lack}_{num}.npy "
            "beside it, while other parts have both; restore the missing file, or move "
            "the whole text_emb/ folder out to run without text embeddings")
    parts = []
    for index, num in enumerate(sorted(images)):
        if num not in metas:
            raise InputError(
                f"{_join(fs, base, 'img_emb/' + images[num])} has no metadata file "
                f"metadata/metadata_{num}.parquet beside it; add it (one row per embedding, "
                "in the same order, with an image_path column) or move the img_emb file out"
            )
        parts.append(EmbeddingPart(
            index=index,
            shard=f"metadata_{num}",
            metadata_path=_join(fs, base, f"metadata/{metas[num]}"),
            image_path=_join(fs, base, f"img_emb/{images[num]}"),
            text_path=_join(fs, base, f"text_emb/{texts[num]}") if num in texts else None,
        ))
    return parts


def discover_datacomp(root: str, model: str = "l14") -> list[EmbeddingPart]:
    """The parts of a DataComp folder: every ``{shard}.parquet`` with its ``{shard}.npz``."""
    fs, base = _fs(root)
    if not fs.isdir(base):
        raise InputError(
            f"input.datacomp folder {root} does not exist; set input.datacomp to a folder of "
            "DataComp {shard}.parquet and {shard}.npz pairs"
        )
    names = sorted(PurePosixPath(p).name for p in fs.ls(base, detail=False))
    parquets = [n for n in names if n.endswith(".parquet")]
    if not parquets:
        raise InputError(
            f"no {{shard}}.parquet files under {root}: input.datacomp must point at a folder "
            "of DataComp {shard}.parquet and {shard}.npz pairs"
        )
    parts = []
    for index, name in enumerate(parquets):
        stem = name[: -len(".parquet")]
        if f"{stem}.npz" not in names:
            raise InputError(
                f"{_join(fs, base, name)} has no embeddings file {stem}.npz beside it; add it "
                f"(arrays {model}_img and {model}_txt in the parquet's row order) or move the "
                "parquet out of input.datacomp"
            )
        parts.append(EmbeddingPart(
            index=index,
            shard=stem,
            metadata_path=_join(fs, base, name),
            image_path=_join(fs, base, f"{stem}.npz"),
            text_path=_join(fs, base, f"{stem}.npz"),
            npz_image_key=f"{model}_img",
            npz_text_key=f"{model}_txt",
        ))
    return parts


def _load_npy(path: str) -> np.ndarray:
    fs, p = fsspec.core.url_to_fs(path)
    try:
        if _is_local(fs):
            return npy.load(p, mmap=True)
        with fs.open(p, "rb") as f:
            return npy.load_bytes(f.read())
    except (ValueError, OSError) as err:
        raise InputError(
            f"cannot read embeddings file {path} ({str(err).rstrip('.')}); it must be a "
            ".npy file holding a float16 or float32 (rows, dim) array"
        ) from err


def _load_npz_member(path: str, key: str) -> np.ndarray:
    fs, p = fsspec.core.url_to_fs(path)
    try:
        with fs.open(p, "rb") as f:
            data = f.read()
        member = npy.npz_member(data, key)
        if member is None:
            raise InputError(
                f"{path} has no array {key!r} (it holds {', '.join(npy.npz_keys(data))}); "
                "set input.datacomp_model to one that is present"
            )
        return member
    except InputError:
        raise
    except (ValueError, OSError) as err:
        raise InputError(
            f"cannot read embeddings file {path} ({str(err).rstrip('.')}); it must be a "
            ".npz file holding float16 or float32 (rows, dim) arrays"
        ) from err


def _column(table: pa.Table, name: str) -> list | None:
    return table.column(name).to_pylist() if name in table.column_names else None


def _strings(table: pa.Table, name: str) -> pa.Array | None:
    """Column ``name`` as an Arrow string array (None when absent): values of another type
    written as Python's ``str`` writes them, as a name is everywhere else."""
    if name not in table.column_names:
        return None
    column = table.column(name).combine_chunks()
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return column.cast(pa.string())
    return pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string())


def _check_matrix(arr: np.ndarray, path: str, rows: int, meta_path: str) -> None:
    if arr.ndim != 2:
        raise InputError(
            f"{path} holds an array of shape {arr.shape}; expected a 2-D (rows, dim) array, one "
            "embedding per row: reshape it to (rows, dim) and save it again"
        )
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise InputError(
            f"{path} holds {arr.dtype} values; expected float16 or float32 embeddings: save "
            "them again as float16 or float32"
        )
    if arr.shape[0] != rows:
        raise InputError(
            f"row counts differ: {path} has {arr.shape[0]} rows but {meta_path} has {rows}; "
            "the embeddings and the metadata must hold one row per sample, in the same order"
        )


# the metadata columns ``read_part`` uses
METADATA_COLUMNS = ("key", "image_path", "uid", "shard", "failed_reason", "failed_stage",
                    "clip_score")


def read_part(part: EmbeddingPart) -> PartData:
    """Metadata and vectors of one part, validated for shape and row count."""
    fs, p = fsspec.core.url_to_fs(part.metadata_path)
    try:
        with fs.open(p, "rb") as f:
            # only the columns read here: captions and urls are most of a LAION part's bytes
            # (a bench part of 100,000 rows: 0.38 s whole, 5 ms its keys)
            parquet = pq.ParquetFile(f)
            table = parquet.read(columns=[c for c in parquet.schema_arrow.names
                                          if c in METADATA_COLUMNS])
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"cannot read metadata file {part.metadata_path}: {err}") from err
    rows = table.num_rows
    keys = _strings(table, "key")
    if part.npz_image_key is None and "image_path" in table.column_names:
        keys = _strings(table, "image_path")  # (an empty part has an empty one)
    uids = _strings(table, "uid")
    if keys is None:
        keys = uids
    if keys is None:
        raise InputError(
            f"{part.metadata_path} has neither an 'image_path' nor a 'key' nor a 'uid' column: "
            "samples cannot be named; add one of them (image_path in clip-retrieval metadata, "
            "uid in DataComp parquet files)"
        )
    shards = _strings(table, "shard")
    # a missing shard name reads "None", as Python's str writes it
    shards = pa.repeat(part.shard, rows) if shards is None else shards.fill_null("None")
    if part.npz_image_key is not None:
        image = _load_npz_member(part.image_path, part.npz_image_key)
        text = _load_npz_member(part.image_path, part.npz_text_key or "")
    else:
        image = _load_npy(part.image_path)
        text = _load_npy(part.text_path) if part.text_path else None
    _check_matrix(image, part.image_path, rows, part.metadata_path)
    if text is not None:
        _check_matrix(text, part.text_path or part.image_path, rows, part.metadata_path)
        if text.shape[1] != image.shape[1]:
            raise InputError(
                f"{part.text_path} has dimension {text.shape[1]} but {part.image_path} has "
                f"{image.shape[1]}: image and text embeddings must come from one CLIP model; "
                "use text embeddings of the model that made the image ones"
            )
    score = None
    if "clip_score" in table.column_names and text is None:
        score = table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float32)
    return PartData(keys=keys, uids=uids, shards=shards.cast(pa.string()), image=image,
                    text=text,
                    failed_reason=_column(table, "failed_reason"),
                    failed_stage=_column(table, "failed_stage"), clip_score=score)


def discover(input_cfg) -> list[EmbeddingPart]:  # noqa: ANN001 - InputConfig, avoid a cycle
    if input_cfg.embeddings:
        return discover_clip_retrieval(input_cfg.embeddings)
    return discover_datacomp(input_cfg.datacomp, input_cfg.datacomp_model)


def local_path(url: str) -> Path | None:
    """The local filesystem path of ``url``, or None when it is remote."""
    fs, p = fsspec.core.url_to_fs(url)
    return Path(p) if _is_local(fs) else None
