"""The local engine: runs a stage's map on this machine, advancing its progress meter."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipeline.engines.base import DEFAULT, Resources, map_progress, pin_kernel_threads
from pipeline.progress import Meter

T = TypeVar("T")
R = TypeVar("R")


class LocalEngine:
    """Maps run in this process: in order by default, or on a thread pool for per-part work
    that spends its time in I/O and in native code releasing the GIL (faiss, numpy, arrow).
    Results always come back in item order, so outputs do not depend on the thread count."""

    name = "local"

    def __init__(self, progress: bool = True, threads: int | None = None) -> None:
        """``threads``: threads of the concurrent maps and of the numeric kernels (pinned
        when given; else the kernels keep their default, this machine's cores).
        ``progress``: a bar for maps whose caller gives no meter (``map_progress``)."""
        self.progress = progress
        self.threads = max(1, threads if threads is not None else (os.cpu_count() or 1))
        self._pools: set[ThreadPoolExecutor] = set()  # of maps not finished yet
        self._restore = pin_kernel_threads(threads) if threads is not None else None

    def map(self, fn: Callable[..., R], items: Iterable[Any], *, desc: str,
            total: int | None = None, unit: str = "it", resources: Resources = DEFAULT,
            setup: Callable[[], Any] | None = None, concurrent: bool = False,
            progress: Meter | None = None) -> Iterator[R]:
        """Apply ``fn`` to every item, yielding results in item order.

        With ``setup`` its result is built once and passed first to every call. With
        ``concurrent`` up to ``threads`` items run at once, each with its numeric kernels
        (BLAS, faiss) on one thread: ``threads`` items on ``threads`` cores, not each item's
        kernels fighting the others' for them (no result depends on a kernel's thread
        count). ``fn`` must then be safe to call from several threads.
        """
        if setup is not None:
            state = setup()
            call: Callable[[Any], R] = lambda item: fn(state, item)  # noqa: E731
        else:
            call = fn
        with map_progress(progress, self.progress, desc, total, unit) as meter:
            if not concurrent or self.threads == 1:
                for item in items:
                    result = call(item)
                    meter.advance(1)
                    yield result
                return
            # BLAS's count is the process's, OpenMP's (faiss) each thread's own: pin both
            restore = pin_kernel_threads(1)
            try:
                with ThreadPoolExecutor(self.threads, thread_name_prefix=desc,
                                        initializer=pin_kernel_threads, initargs=(1,)) as pool:
                    self._pools.add(pool)
                    try:
                        for result in pool.map(call, items):
                            meter.advance(1)
                            yield result
                    finally:
                        self._pools.discard(pool)
            finally:
                restore()

    def run_one(self, fn: Callable[[T], R], task: T, *, resources: Resources = DEFAULT) -> R:
        return fn(task)

    def cancel(self) -> None:
        """Tasks of a map its caller stopped reading finish before this returns (a thread
        cannot be stopped), the ones not started are dropped."""
        for pool in list(self._pools):
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools.clear()

    def close(self) -> None:
        self.cancel()
        if self._restore is not None:
            self._restore()
            self._restore = None
