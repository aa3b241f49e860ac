"""float16 embeddings widened to float32 (``vectors.as_float32``): the exact values numpy's
own cast gives, bit for bit, for every float16 there is."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.algorithms import vectors
from pipeline.io.vector_store import _unit


def every_float16(rows: int) -> np.ndarray:
    """All 65,536 float16 bit patterns (zeros, subnormals, normals, infinities, NaNs) as
    ``rows`` rows."""
    return np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(rows, -1)


@pytest.mark.parametrize("rows", [128, 1024])
def test_every_finite_float16_widens_to_its_exact_value(rows: int) -> None:
    """Rows of finite values take the integer path (no fallback): the same bits as numpy."""
    values = every_float16(rows)
    finite = np.isfinite(values).all(axis=1)
    assert finite.sum() >= rows // 2  # the rows holding infinities and NaNs are few
    chunk = np.ascontiguousarray(values[finite])
    fallback = []
    real_copyto = np.copyto

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        fallback.append(1)
        return real_copyto(*args, **kwargs)

    vectors.np.copyto = counted
    try:
        got = vectors.as_float32(chunk)
    finally:
        vectors.np.copyto = real_copyto
    assert not fallback
    assert np.array_equal(got.view(np.uint32), chunk.astype(np.float32).view(np.uint32))


def test_infinities_and_nans_stay_what_they_are() -> None:
    """A chunk holding an infinite or NaN value is widened by numpy's cast: an infinity is
    not a large finite number (ingest would then take a broken row for a usable one)."""
    values = every_float16(64)
    got = vectors.as_float32(values)
    assert np.array_equal(got.view(np.uint32), values.astype(np.float32).view(np.uint32))
    one = np.full((100, 8), 0.5, dtype=np.float16)
    one[57, 3] = np.inf
    assert np.isinf(vectors.as_float32(one)[57, 3])


def test_a_thread_that_flushes_subnormals_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the probe finds subnormals flushed (a library set the mode), numpy's cast is
    used: the subnormals keep their values."""
    real = vectors._rebias

    def flushing(chunk: np.ndarray, out: np.ndarray) -> np.ndarray:
        real(chunk, out)
        out[np.abs(out) < 2.0**-14] = 0.0  # as denormals-are-zero would leave them
        return out

    monkeypatch.setattr(vectors, "_rebias", flushing)
    values = np.full((100, 4), 2.0**-20, dtype=np.float16)  # a subnormal float16
    assert (vectors.as_float32(values) == np.float32(2.0**-20)).all()


def test_stored_rows_are_divided_after_widening_in_pieces() -> None:
    """The store's decoding in pieces of rows gives each row its float16 value divided by
    its divisor, rounded once, past the pieces' edges."""
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((2500, 16)).astype(np.float16)
    divisor = rng.uniform(0.5, 4.0, 2500).astype(np.float32)
    want = raw.astype(np.float32) / divisor[:, None]
    assert np.array_equal(_unit(raw, divisor), want)
