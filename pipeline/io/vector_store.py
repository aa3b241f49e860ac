"""Unit float32 rows of the clustering vectors, addressed by global row.

Global row g counts samples across the input parts in order. The vectors live in the work
folder, one memory-mapped ``.npy`` per part written by ingest, so a read costs only the rows
asked for and memory is bounded by the request, not by the dataset (a map lives only as long
as the read that made it). A part whose vectors are
already in memory (handed over by ingest within the vector cache budget) is read from there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.algorithms.vectors import as_float32
from pipeline.io import npy
from pipeline.io.buffers import BufferPool, take_rows


def scale_path(vectors: str | Path) -> Path:
    """Beside a part's float16 vectors: the float32 divisor that makes each row unit."""
    path = Path(vectors)
    return path.with_name(path.stem + ".scale.npy")


# rows decoded and divided at a time: the division finds them still in the core's cache (a
# pass over a whole batch of 65,536 rows reads it back from memory)
DECODE_ROWS = 1024
SORTED_PIECE = 8192  # rows of an unsorted read gathered (in file order) at a time


def _unit(raw: np.ndarray, divisor: np.ndarray | None, out: np.ndarray | None = None
          ) -> np.ndarray:
    """Stored rows as unit float32 rows: float16 ones decoded and divided by their row's
    divisor, into ``out`` when given (reused memory: a fresh array per batch cost more in
    page faults than the decoding, 1.3-1.8 against 0.3 us a row of 512 here)."""
    if divisor is None:
        if out is None:
            return raw
        np.copyto(out, raw)
        return out
    raw = np.ascontiguousarray(raw)
    if out is None:
        out = np.empty(raw.shape, dtype=np.float32)
    divisor = np.asarray(divisor, dtype=np.float32)
    for start in range(0, len(raw), DECODE_ROWS):
        piece = slice(start, start + DECODE_ROWS)
        as_float32(raw[piece], out[piece], finite=True)  # ingest zeroed unusable rows
        out[piece] /= divisor[piece, None]
    return out


class VectorStore:
    def __init__(self, paths: Sequence[str], rows: Sequence[int]) -> None:
        self.paths = list(paths)
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._arrays: dict[int, np.ndarray] = {}
        self._scaled: dict[int, bool] = {}
        self._dim: int | None = None
        self._buffers = threading.local()  # each thread's leases: reads may run at once
        # buffers outlive the threads that used them: a later map's threads take them over
        self._pools = {"scratch": BufferPool(), "piece": BufferPool(), "stored": BufferPool()}

    def __getstate__(self) -> dict:
        """Pickled (sent to another worker) without the parts held in memory: the copy
        memory-maps the same files."""
        return {"paths": self.paths, "offsets": self.offsets}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["paths"], [])  # type: ignore[misc]
        self.offsets = state["offsets"]

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def preload(self, part: int, vectors: np.ndarray) -> None:
        """Serve ``part`` from memory instead of its file."""
        self._arrays[part] = vectors

    def _array(self, part: int) -> np.ndarray:
        """The part in memory, or a fresh memory map of its file: not kept, so the pages a
        read touched leave this process with it and its memory does not grow with the
        dataset."""
        arr = self._arrays.get(part)
        if arr is None:  # a plain view: np.memmap's indexing costs more than the copy
            arr = npy.load(self.paths[part], mmap=True).view(np.ndarray)
        return arr

    def _divisor(self, part: int) -> np.ndarray | None:
        """A float16 part's row divisors (None for unit float32 rows, or a part in memory)."""
        if part in self._arrays:
            return None
        scaled = self._scaled.get(part)
        if scaled is None:
            scaled = self._scaled[part] = scale_path(self.paths[part]).exists()
        return (npy.load(scale_path(self.paths[part]), mmap=True).view(np.ndarray)
                if scaled else None)

    @property
    def dim(self) -> int:
        if self._dim is None:  # found once: a map of the part costs its page faults again
            self._dim = int(self._array(0).shape[1])
        return self._dim

    def scratch(self, rows: int) -> np.ndarray:
        """A float32 (rows, dim) buffer this thread keeps and gets again (a larger one when
        too small): fresh memory for every large read costs page faults, which here cost
        more than the copy. The caller is done with it before its thread's next call. When
        the thread ends, the buffer goes back to the store for later threads."""
        return self._leased("scratch", rows)

    def _leased(self, kind: str, rows: int, dtype: type = np.float32) -> np.ndarray:
        """This thread's buffer of ``kind`` (each kind holds one dtype), grown to ``rows``."""
        lease = getattr(self._buffers, kind, None)
        if lease is None or len(lease.buffer) < rows:
            if lease is not None:
                lease.discard()
            lease = self._pools[kind].lease(rows, (self.dim,), dtype)
            setattr(self._buffers, kind, lease)
        return lease.buffer[:rows]

    @contextmanager
    def held(self) -> Iterator[None]:
        """Within the block, this thread's reads (``gather``) keep each part mapped, instead
        of mapping it anew for each read: a fresh map's pages are faulted in again, and the
        rows of a bucket of clusters lie all over every part. A bucket's 250,000 rows, read
        in four groups of 8,192-row pieces, took 0.39-0.46 s with a map per group
        (0.09-0.16 s of it in the kernel) against 0.26-0.27 s held (0.01 s). The maps, and
        the pages they hold, go at the block's end."""
        before = getattr(self._buffers, "maps", None)
        self._buffers.maps = {} if before is None else before
        try:
            yield
        finally:
            self._buffers.maps = before

    def gather(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Vectors of the given global rows, in the order given (into ``out`` when given).

        The rows are read in file order: a memory map's page faults then each bring in a
        run of neighbouring pages that later rows use, which made a cluster bucket's reads
        twice as fast as reading in the order given. Each part is mapped once for the whole
        call (or for the thread's ``held`` block), not once per piece of rows.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if out is None:
            out = np.empty((len(rows), self.dim), dtype=np.float32)
        if len(rows) == 0:
            return out
        held = getattr(self._buffers, "maps", None)
        maps: dict[int, tuple[np.ndarray, np.ndarray | None]] = {} if held is None else held
        if len(rows) > 1 and bool((rows[1:] < rows[:-1]).any()):
            order = np.argsort(rows, kind="stable")
            piece = self._leased("piece", SORTED_PIECE)
            for s in range(0, len(rows), SORTED_PIECE):  # written back a piece at a time
                take = order[s : s + SORTED_PIECE]
                out[take] = self._sorted_into(rows[take], piece[: len(take)], maps)
            return out
        return self._sorted_into(rows, out, maps)

    def _sorted_into(self, rows: np.ndarray, out: np.ndarray,
                     maps: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        """``gather`` of sorted ``rows``, each part mapped once into ``maps``."""

        def mapped(part: int) -> tuple[np.ndarray, np.ndarray | None]:
            if part not in maps:
                maps[part] = (self._array(part), self._divisor(part))
            return maps[part]

        first = int(np.searchsorted(self.offsets, rows[0], side="right")) - 1
        local = rows - self.offsets[first]
        if local.min() >= 0 and local.max() < self.offsets[first + 1] - self.offsets[first]:
            self._rows_into(*mapped(first), local, out)  # one part: the common case
            return out
        # sorted rows: each part's are one run
        cuts = np.searchsorted(rows, self.offsets)
        for part in range(len(self.paths)):
            a, b = int(cuts[part]), int(cuts[part + 1])
            if b > a:
                self._rows_into(*mapped(part), rows[a:b] - self.offsets[part], out[a:b])
        return out

    def _rows_into(self, arr: np.ndarray, divisor: np.ndarray | None, local: np.ndarray,
                   out: np.ndarray) -> None:
        """Rows ``local`` of one part's ``arr`` (``divisor``: its rows' divisors) into
        ``out`` as unit float32 rows."""
        if not out.flags.c_contiguous:
            out[:] = _unit(arr[local], None if divisor is None else divisor[local])
        elif arr.dtype == np.float32 and divisor is None:
            take_rows(arr, local, out)  # no copy in between
        elif divisor is not None and arr.dtype == np.float16:
            # the stored rows gathered into this thread's float16 buffer, not fresh memory
            # for every read: a dbp assignment's batches of 65,536 alive rows took 2.1 us a
            # row so, against 1.1 for a run of rows decoded in place
            stored = take_rows(arr, local, self._leased("stored", len(local), np.float16))
            _unit(stored, divisor[local], out)
        else:
            _unit(arr[local], None if divisor is None else divisor[local], out)

    def batches(self, rows: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, vectors) in batches over sorted global ``rows``, one part at a time.

        A batch of rows that are not one run is read into this thread's scratch (not fresh
        memory for every batch): a batch's vectors are gone when the next is read."""
        rows = np.asarray(rows, dtype=np.int64)
        for part in range(len(self.paths)):
            lo, hi = np.searchsorted(rows, self.offsets[part : part + 2])
            arr = self._array(part) if hi > lo else None
            divisor = self._divisor(part) if hi > lo else None
            for start in range(lo, hi, batch_size):
                chunk = rows[start : min(hi, start + batch_size)]
                local = chunk - self.offsets[part]
                if local[-1] - local[0] + 1 == len(local):  # one run of rows
                    span = slice(int(local[0]), int(local[-1]) + 1)
                    yield chunk, (arr[span] if divisor is None  # a view, no copy
                                  else _unit(arr[span], divisor[span], self.scratch(len(local))))
                else:
                    out = self.scratch(len(local))
                    self._rows_into(arr, divisor, local, out)
                    yield chunk, out

    def close(self) -> None:
        self._arrays.clear()
        for pool in self._pools.values():
            pool.clear()
