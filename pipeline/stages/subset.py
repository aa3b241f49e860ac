"""subset.npy as units: each part's kept uids sorted, then ranges of the uid space gathered
and sorted apart, then the ranges streamed one after the other into one file (SPEC §7).

The ranges split the high 64 bits of the uid evenly: uids are hashes or random hex, so the
ranges hold about the same number of uids. The driver only ever holds one chunk of a range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.ids import SUBSET_DTYPE, subset_array
from pipeline.io import npy
from pipeline.workdir import atomic_write, write_npy

RANGE_ROWS = 4_000_000  # uids per range task, about 64 MB
COPY_ROWS = 1 << 20


def part_path(folder: Path, part: int) -> Path:
    return folder / f"part-{part:05d}.npy"


def write_part(folder: Path, part: int, hi: np.ndarray, lo: np.ndarray) -> None:
    write_npy(part_path(folder, part), subset_array(hi, lo))


def range_bounds(kept: int, range_rows: int = RANGE_ROWS) -> list[int]:
    """Bounds on the uid's high word: ranges[i] = [bounds[i], bounds[i+1])."""
    n = max(1, -(-kept // range_rows))
    return [(i << 64) // n for i in range(n + 1)]


@dataclass(frozen=True)
class RangeTask:
    folder: str
    parts: int
    index: int
    low: int
    high: int  # exclusive; 2**64 for the last range


def gather_range(task: RangeTask) -> int:
    """Sort the kept uids whose high word is in [low, high); returns how many."""
    folder = Path(task.folder)
    pieces = []
    for p in range(task.parts):
        arr = npy.load(part_path(folder, p), mmap=True)
        hi = arr["f0"]
        a = int(np.searchsorted(hi, np.uint64(task.low), side="left"))
        b = len(arr) if task.high >= 1 << 64 else \
            int(np.searchsorted(hi, np.uint64(task.high), side="left"))
        if b > a:
            pieces.append(np.array(arr[a:b]))
    out = np.concatenate(pieces) if pieces else np.empty(0, dtype=SUBSET_DTYPE)
    out.sort(kind="stable")
    write_npy(folder / f"range-{task.index:05d}.npy", out)
    return int(len(out))


def concatenate(folder: Path, ranges: int, total: int, out: Path) -> None:
    """Stream the sorted ranges into ``out``, in np.save's format, a chunk at a time."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(SUBSET_DTYPE),
                    "fortran_order": False, "shape": (total,)})
            for i in range(ranges):
                arr = npy.load(folder / f"range-{i:05d}.npy", mmap=True)
                for start in range(0, len(arr), COPY_ROWS):
                    np.ascontiguousarray(arr[start : start + COPY_ROWS]).tofile(f)

    atomic_write(out, write)
