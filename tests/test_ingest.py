"""The read step on parts larger than one chunk, and the reasons it gives unusable rows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.stages.ingest as ingest
from pipeline.io.embeddings import discover_clip_retrieval
from pipeline.io.vector_store import VectorStore
from pipeline.stages.ingest import _failed_reasons, _missing, ingest_part, write_unit_vectors


@pytest.mark.parametrize("keep", [False, True])
def test_unit_vectors_and_scores_over_many_chunks(tmp_path: Path, keep: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 7)  # 50 rows: seven full chunks and a short one
    rng = np.random.default_rng(0)
    image = rng.standard_normal((50, 6)).astype(np.float16)
    text = rng.standard_normal((50, 6)).astype(np.float16)
    image[11] = 0
    text[30] = np.nan
    path = tmp_path / "v.npy"
    norms, score, unit = write_unit_vectors(path, image, text, keep=keep)
    x = image.astype(np.float64)
    t = text.astype(np.float64)
    want_norm = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(norms, want_norm, rtol=1e-6)
    assert np.load(path).dtype == np.float16  # float16 input is kept at half the bytes
    stored = VectorStore([str(path)], [50]).gather(np.arange(50))
    assert stored.dtype == np.float32
    ok = want_norm > 0
    np.testing.assert_allclose(stored[ok], x[ok] / want_norm[ok, None], rtol=1e-6, atol=1e-7)
    assert not stored[11].any()
    with np.errstate(invalid="ignore"):
        cos = (x * t).sum(1) / want_norm / np.linalg.norm(t, axis=1)
    both = ok & np.isfinite(cos)
    np.testing.assert_allclose(score[both], cos[both], rtol=1e-5, atol=1e-6)
    assert np.isnan(score[[11, 30]]).all()
    if keep:
        np.testing.assert_array_equal(unit, stored)
    else:
        assert unit is None


def test_failed_reasons_name_each_defect() -> None:
    key_missing = _missing(pa.array(["a", None, "", "d", "e", "f"]))
    assert key_missing.tolist() == [False, True, True, False, False, False]
    uids = pa.array(["0" * 32, "1" * 32, "2" * 32, "zz", "3" * 32, "4" * 32])
    uid_ok = np.array([True, True, True, False, True, True])
    norms = np.array([1.0, 1.0, 1.0, 1.0, 0.0, np.nan])
    reasons = _failed_reasons(key_missing, uids, uid_ok, norms, None)
    assert list(reasons) == [None, "missing key", "missing key", "uid 'zz' is not 32 hex digits",
                             "image embedding is a zero vector",
                             "image embedding has a NaN or infinite value"]
    earlier = ["undecodable image", None, None, None, None, None]
    assert _failed_reasons(key_missing, uids, uid_ok, norms, earlier)[0] == "undecodable image"


@pytest.mark.parametrize(("given", "hash_apart"), [(False, False), (True, False), (True, True)])
def test_derived_uids_are_sha256_of_shard_name_then_key(tmp_path: Path, given: bool,
                                                        hash_apart: bool) -> None:
    """SPEC §5: a sample without a uid gets the first 32 hex digits of sha256(shard + key);
    a given uid travels untouched. With ``given`` some rows carry a uid, the others not;
    with ``hash_apart`` a helper process hashes."""
    keys = ["000420017", "k1", "x/y", "0"]
    shards = ["a/00042.tar", "b/00042.tar", "00007.tar", "s3://bucket/laion/00001.tar"]
    uids = (["0123456789abcdef0123456789abcdef", None, None, "f" * 32] if given
            else [None] * len(keys))
    meta = {"image_path": keys, "shard": shards}
    if given:
        meta["uid"] = pa.array(uids, pa.string())
    (tmp_path / "data" / "img_emb").mkdir(parents=True)
    (tmp_path / "data" / "metadata").mkdir()
    pq.write_table(pa.table(meta), tmp_path / "data" / "metadata" / "metadata_0.parquet")
    vectors = np.random.default_rng(0).standard_normal((len(keys), 4)).astype(np.float32)
    np.save(tmp_path / "data" / "img_emb" / "img_emb_0.npy", vectors)
    (part,) = discover_clip_retrieval(str(tmp_path / "data"))
    info, _ = ingest_part(part, tmp_path, hash_apart=hash_apart)
    want = [u if u is not None else hashlib.sha256((s + k).encode()).hexdigest()[:32]
            for s, k, u in zip(shards, keys, uids, strict=True)]
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert table.column("uid").to_pylist() == want
    assert table.column("failed_reason").null_count == len(keys)
    assert [f"{h:016x}{lo:016x}" for h, lo in zip(table.column("uid_hi").to_pylist(),
                                                   table.column("uid_lo").to_pylist(),
                                                   strict=True)] == want
    assert info.derived == sum(u is None for u in uids)


def test_names_of_other_types_are_read_as_their_text(tmp_path: Path) -> None:
    """A metadata column of keys stored as integers names its samples by their decimal text
    (as ``str`` writes them), and their uids are derived from that text; a missing key is
    a counted failure, its row kept."""
    (tmp_path / "data" / "img_emb").mkdir(parents=True)
    (tmp_path / "data" / "metadata").mkdir()
    keys = pa.array([17, None, 420017], pa.int64())
    pq.write_table(pa.table({"key": keys, "shard": ["s.tar"] * 3}),
                   tmp_path / "data" / "metadata" / "metadata_0.parquet")
    np.save(tmp_path / "data" / "img_emb" / "img_emb_0.npy",
            np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    (part,) = discover_clip_retrieval(str(tmp_path / "data"))
    info, _ = ingest_part(part, tmp_path)
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert table.column("key").to_pylist() == ["17", None, "420017"]
    want = [hashlib.sha256(f"s.tar{k}".encode()).hexdigest()[:32] for k in ("17", "420017")]
    uids = table.column("uid").to_pylist()
    assert [uids[0], uids[2]] == want and uids[1] is None
    assert table.column("failed_reason").to_pylist() == [None, "missing key", None]
    assert info.failed == 1 and info.derived == 3
