"""The read step on parts larger than one chunk, and the reasons it gives unusable rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pipeline.stages.ingest as ingest
from pipeline.io.vector_store import VectorStore
from pipeline.stages.ingest import _failed_reasons, write_unit_vectors


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
    keys = np.array(["a", None, "", "d", "e", "f"], dtype=object)
    uids = ["0" * 32, "1" * 32, "2" * 32, "zz", "3" * 32, "4" * 32]
    uid_ok = np.array([True, True, True, False, True, True])
    norms = np.array([1.0, 1.0, 1.0, 1.0, 0.0, np.nan])
    reasons = _failed_reasons(keys, uids, uid_ok, norms, None)
    assert list(reasons) == [None, "missing key", "missing key", "uid 'zz' is not 32 hex digits",
                             "image embedding is a zero vector",
                             "image embedding has a NaN or infinite value"]
    earlier = ["undecodable image", None, None, None, None, None]
    assert _failed_reasons(keys, uids, uid_ok, norms, earlier)[0] == "undecodable image"
