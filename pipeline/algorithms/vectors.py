"""Validation and L2 normalisation of embedding rows."""

from __future__ import annotations

import numpy as np

MIN_NORM = 1e-12


def row_norms(x: np.ndarray) -> np.ndarray:
    x32 = np.asarray(x, dtype=np.float32)
    return np.sqrt(np.einsum("ij,ij->i", x32, x32))


def invalid_reasons(x: np.ndarray) -> np.ndarray:
    """Per row: '' if usable, else why not ('non-finite value', 'zero vector')."""
    norms = row_norms(x)
    reasons = np.full(len(norms), "", dtype=object)
    reasons[~np.isfinite(norms)] = "embedding has a NaN or infinite value"
    reasons[np.isfinite(norms) & (norms < MIN_NORM)] = "embedding is a zero vector"
    return reasons


def normalize(x: np.ndarray) -> np.ndarray:
    """float32 copy of ``x`` with unit rows (rows are assumed valid)."""
    out = np.array(x, dtype=np.float32, copy=True)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    norms[norms < MIN_NORM] = 1.0
    out /= norms[:, None]
    return out
