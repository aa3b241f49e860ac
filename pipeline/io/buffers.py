"""Large arrays whose memory is mapped in at once.

A fresh array's pages are faulted in one at a time as they are first written. Where that is
dear (on this project's 2-core VM a GiB of never-touched memory took 3.7 s to fault in by
writing it, and 0.49 s with ``MAP_POPULATE``, which maps every page in one call), a large
buffer that will be written whole is better mapped up front.
"""

from __future__ import annotations

import math
import mmap
import threading
import weakref

import numpy as np

POPULATE_FROM = 1 << 24  # bytes: smaller arrays come from the allocator as usual


def take_rows(source: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``source[rows]`` written into ``out`` (C-contiguous, of ``source``'s dtype). The rows
    are range-checked here once: np.take's own checking mode ("raise") copies through a
    buffer and took 2.3 times as long for 500 rows of 512 float32 (77 against 34 us)."""
    if len(rows) and (rows.min() < 0 or rows.max() >= len(source)):
        raise IndexError(f"rows outside 0 .. {len(source) - 1} were asked for")
    return np.take(source, rows, axis=0, out=out, mode="clip")


_THREAD = threading.local()  # each thread's scratch buffers, by name


def thread_scratch(name: str, elements: int, dtype: np.dtype | type) -> np.ndarray:
    """This thread's flat buffer ``name`` of at least ``elements``, kept for its next call:
    a fresh array for every call cost more in page faults than the work done in it (block
    products, widened rows). It grows to a power of two of elements and ends with its
    thread; a caller is done with it before that thread's next call for the same name."""
    held = getattr(_THREAD, name, None)
    if held is None or len(held) < elements:
        held = populated((1 << max(0, elements - 1).bit_length(),), dtype)
        setattr(_THREAD, name, held)
    return held


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


class BufferPool:
    """Large float buffers lent to threads and taken back when a thread ends, so that the
    next threads (a later map's pool) reuse their mapped pages instead of faulting in fresh
    ones: on this VM a run's 1.1M page faults cost about 7 s of system time, and a third of
    them were scratch buffers mapped anew by every map's threads and every slightly larger
    read (11 of 128 MB in the 1M x 512 bench).

    Sizes are rounded up to a power of two of rows, so a thread whose reads grow a little
    keeps its buffer. A buffer lives as long as the pool; ``clear`` lets them go.
    """

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def lease(self, rows: int, row_shape: tuple[int, ...], dtype: np.dtype | type
              ) -> BufferLease:
        """A lease on a buffer of at least ``rows`` rows of ``row_shape``: the smallest free
        one that fits, else a new one."""
        dtype = np.dtype(dtype)
        with self._lock:
            fits = [i for i, b in enumerate(self._free)
                    if len(b) >= rows and b.shape[1:] == row_shape and b.dtype == dtype]
            if fits:
                buffer = self._free.pop(min(fits, key=lambda i: len(self._free[i])))
                return BufferLease(self, buffer)
        size = 1 << max(0, rows - 1).bit_length()
        return BufferLease(self, populated((size, *row_shape), dtype))

    def give_back(self, buffer: np.ndarray) -> None:
        """Return a lent buffer to the pool (a lease does it when it is dropped)."""
        with self._lock:
            self._free.append(buffer)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


class BufferLease:
    """One thread's buffer from a ``BufferPool``: back in the pool when the lease is
    dropped (its thread ended), unless ``discard`` let it go first."""

    def __init__(self, pool: BufferPool, buffer: np.ndarray) -> None:
        self.buffer = buffer
        self._back = weakref.finalize(self, pool.give_back, buffer)

    def discard(self) -> None:
        """Let the buffer go instead of back to the pool (a larger one replaces it)."""
        self._back.detach()
