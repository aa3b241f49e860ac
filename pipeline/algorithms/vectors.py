"""L2 normalisation of embedding rows, and what makes a row unusable."""

from __future__ import annotations

import numpy as np

from pipeline.algorithms import exact

MIN_NORM = 1e-12


# float16 to float32 by integer arithmetic (see ``as_float32``): a float16's bits shifted up
# 13 places, its sign put back in bit 31, give the float32 whose value is the float16's over
# 2^112 (its exponent field is the float16's, rebiased by 112 less), so one multiplication
# by 2^112, exact, gives the float16's value: for normal numbers, subnormals and zeros alike
_SIGN_AND_BITS = np.int32(-0x70000001)  # 0x8FFFFFFF: bits 28-30, the sign's copies, cleared
_REBIAS = np.float32(2.0**112)
_FLOAT16_LARGEST = 65504.0  # an infinite or NaN float16 comes out 65536 or more in size
_FAST_FROM_ROWS = 64  # fewer rows go through numpy's cast (four calls cost more than it)
_PROBE = np.array([1, 0x8001, 0x3C00, 0x7BFF], dtype=np.uint16).view(np.float16)[None, :]


def _rebias(chunk: np.ndarray, out: np.ndarray) -> np.ndarray:
    words = out.view(np.int32)
    np.left_shift(chunk.view(np.int16), 13, out=words, dtype=np.int32)  # sign-extended
    np.bitwise_and(words, _SIGN_AND_BITS, out=words)
    np.multiply(out, _REBIAS, out=out)
    return out


def _rebias_is_exact() -> bool:
    """Whether this thread multiplies subnormal float32 values exactly (no flush-to-zero or
    denormals-are-zero mode set by some library): checked on every call, as the mode is a
    thread's and any library may set it."""
    got = _rebias(_PROBE, np.empty(_PROBE.shape, dtype=np.float32))
    return bool(np.array_equal(got, _PROBE.astype(np.float32)))


def as_float32(chunk: np.ndarray, out: np.ndarray | None = None, finite: bool = False
               ) -> np.ndarray:
    """``chunk`` as float32, in ``out`` when given (same shape) or a new array.

    float16 is widened by integer arithmetic (``_rebias``), three times numpy's own cast and
    faiss's decoder here (0.20 against 0.65 us for a row of 512); both give the same exact
    values. A chunk holding an infinite or NaN value, or a thread whose floating point mode
    would flush subnormals, takes numpy's cast instead; ``finite`` says the chunk holds no
    infinite or NaN value (the work folder's vectors, zeroed where unusable), which spares
    looking. Reusing ``out`` matters as much: the page faults of a fresh array cost more
    than the conversion itself.
    """
    if out is None:
        out = np.empty(chunk.shape, dtype=np.float32)
    if chunk.dtype == np.float16 and chunk.ndim == 2 and len(chunk) >= _FAST_FROM_ROWS:
        if not (out.flags.c_contiguous and out.shape == chunk.shape):
            raise ValueError(f"out must be C-contiguous of shape {chunk.shape}")
        _rebias(np.ascontiguousarray(chunk), out)
        if (finite or (np.maximum.reduce(out, axis=None) <= _FLOAT16_LARGEST and
                       np.minimum.reduce(out, axis=None) >= -_FLOAT16_LARGEST)) \
                and _rebias_is_exact():
            return out
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
