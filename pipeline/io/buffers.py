"""Large arrays whose memory is mapped in at once.

A fresh array's pages are faulted in one at a time as they are first written. Where that is
dear (on this project's 2-core VM a GiB of never-touched memory took 3.7 s to fault in by
writing it, and 0.49 s with ``MAP_POPULATE``, which maps every page in one call), a large
buffer that will be written whole is better mapped up front.
"""

from __future__ import annotations

import math
import mmap

import numpy as np

POPULATE_FROM = 1 << 24  # bytes: smaller arrays come from the allocator as usual


def populated(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised array of ``shape`` whose pages are mapped in already (Linux); a
    plain ``np.empty`` where that is not offered or the array is small."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    flag = getattr(mmap, "MAP_POPULATE", None)
    if nbytes < POPULATE_FROM or flag is None:
        return np.empty(shape, dtype=dtype)
    block = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flag)
    return np.frombuffer(block, dtype=dtype).reshape(shape)
