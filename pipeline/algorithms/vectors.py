"""L2 normalisation of embedding rows, and what makes a row unusable."""

from __future__ import annotations

import faiss
import numpy as np

MIN_NORM = 1e-12


def as_float32(chunk: np.ndarray) -> np.ndarray:
    """A float32 copy; float16 goes through faiss's SIMD decoder, several times numpy's speed
    for the same exact values."""
    if chunk.dtype == np.float16 and chunk.ndim == 2 and chunk.shape[0]:
        codes = np.ascontiguousarray(chunk).view(np.uint8)
        return faiss.ScalarQuantizer(chunk.shape[1], faiss.ScalarQuantizer.QT_fp16).decode(codes)
    return np.array(chunk, dtype=np.float32)


def unit_rows(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 copy of ``chunk`` with usable rows scaled to unit length, and the row norms.

    A row is unusable when its norm is not finite (a NaN or infinite value) or below
    ``MIN_NORM`` (a zero vector); such rows come back as zeros.
    """
    x = as_float32(chunk)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    ok = usable(norms)
    x[~ok] = 0.0
    x /= np.where(ok, norms, 1.0)[:, None]
    return x, norms


def usable(norms: np.ndarray) -> np.ndarray:
    return np.isfinite(norms) & (norms >= MIN_NORM)
