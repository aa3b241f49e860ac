"""Unit-normalised float32 rows of the clustering vectors, addressed by global row.

Global row g counts samples across the input parts in order. The vectors stay in their
files (memory-mapped ``.npy``); a read normalises only the rows asked for, so memory is
bounded by the request, not by the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.algorithms.vectors import normalize


class VectorStore:
    def __init__(self, paths: Sequence[str], rows: Sequence[int]) -> None:
        self.paths = list(paths)
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._arrays: dict[int, np.ndarray] = {}

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def _array(self, part: int) -> np.ndarray:
        arr = self._arrays.get(part)
        if arr is None:
            arr = np.load(self.paths[part], mmap_mode="r", allow_pickle=False)
            self._arrays[part] = arr
        return arr

    @property
    def dim(self) -> int:
        return int(self._array(0).shape[1])

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Normalised vectors of the given global rows, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if len(rows) == 0:
            return out
        part_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for part in np.unique(part_of):
            sel = np.flatnonzero(part_of == part)
            local = rows[sel] - self.offsets[part]
            arr = self._array(int(part))
            if len(sel) == len(rows) and np.all(np.diff(local) == 1):
                out[:] = normalize(arr[local[0]: local[-1] + 1])
            else:
                out[sel] = normalize(arr[local])
        return out

    def batches(self, rows: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, vectors) in batches over sorted global ``rows``, one part at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        for part in range(len(self.paths)):
            lo, hi = np.searchsorted(rows, self.offsets[part : part + 2])
            for start in range(lo, hi, batch_size):
                chunk = rows[start : min(hi, start + batch_size)]
                yield chunk, self.gather(chunk)

    def close(self) -> None:
        self._arrays.clear()
