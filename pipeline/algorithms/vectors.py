"""L2 normalisation of embedding rows, and what makes a row unusable."""

from __future__ import annotations

import faiss
import numpy as np

from pipeline.algorithms import exact

MIN_NORM = 1e-12


def as_float32(chunk: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``chunk`` as float32, in ``out`` when given (same shape) or a new array.

    float16 goes through faiss's SIMD decoder, several times numpy's speed for the same exact
    values. Reusing ``out`` matters as much: the page faults of a fresh array cost more than
    the conversion itself.
    """
    if out is None:
        out = np.empty(chunk.shape, dtype=np.float32)
    if chunk.dtype == np.float16 and chunk.ndim == 2 and chunk.shape[0]:
        codes = np.ascontiguousarray(chunk).view(np.uint8)
        if not (out.flags.c_contiguous and out.shape == chunk.shape):
            raise ValueError(f"out must be C-contiguous of shape {chunk.shape}")
        quantizer = faiss.ScalarQuantizer(chunk.shape[1], faiss.ScalarQuantizer.QT_fp16)
        quantizer.decode_c(faiss.swig_ptr(codes), faiss.swig_ptr(out), chunk.shape[0])
    else:
        np.copyto(out, chunk, casting="unsafe")
    return out


def unit_rows(chunk: np.ndarray, out: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """float32 copy of ``chunk`` (in ``out`` when given) with usable rows scaled to unit length,
    and the row norms.

    A row is unusable when its norm is not finite (a NaN or infinite value) or below
    ``MIN_NORM`` (a zero vector); such rows come back as zeros.
    """
    x = as_float32(chunk, out)
    norms = exact.norms(x).astype(np.float32)  # exact, rounded once: the same on any machine
    ok = usable(norms)
    x[~ok] = 0.0
    x /= np.where(ok, norms, 1.0)[:, None]  # one correctly rounded division per element
    return x, norms


def usable(norms: np.ndarray) -> np.ndarray:
    return np.isfinite(norms) & (norms >= MIN_NORM)
