"""The local engine: runs a stage's map on this machine, with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


class LocalEngine:
    """Maps run in this process: in order by default, or on a thread pool for per-part work
    that spends its time in I/O and in native code releasing the GIL (faiss, numpy, arrow).
    Results always come back in item order, so outputs do not depend on the thread count."""

    name = "local"

    def __init__(self, progress: bool = True, threads: int | None = None) -> None:
        self.progress = progress
        self.threads = max(1, threads if threads is not None else (os.cpu_count() or 1))

    def map(self, fn: Callable[[T], R], items: Iterable[T], desc: str,
            total: int | None = None, unit: str = "it", concurrent: bool = False
            ) -> Iterator[R]:
        """Apply ``fn`` to every item, yielding results in item order.

        With ``concurrent`` up to ``threads`` items run at once; ``fn`` must then be safe to
        call from several threads.
        """
        bar = tqdm(total=total, desc=desc, unit=unit, disable=self._disable, leave=False,
                   dynamic_ncols=True)
        with bar:
            if not concurrent or self.threads == 1:
                for item in items:
                    yield fn(item)
                    bar.update(1)
                return
            with ThreadPoolExecutor(self.threads, thread_name_prefix=desc) as pool:
                for result in pool.map(fn, items):
                    yield result
                    bar.update(1)

    def bar(self, desc: str, total: int, unit: str = "it") -> tqdm:
        return tqdm(desc=desc, total=total, unit=unit, disable=self._disable, leave=False,
                    unit_scale=True, dynamic_ncols=True)

    @property
    def _disable(self) -> bool | None:
        """tqdm's disable: True when progress is off; None hides bars off a terminal."""
        return True if not self.progress else None
