"""What every engine offers the steps: an ordered map over small task descriptors that
advances its caller's progress meter as tasks finish, and a global step on one worker.

Tasks and results are small (paths, row ranges, counts); data moves through the work folder.
A ``setup`` runs once per worker (load a model, open a store) and its result is handed to
every task that worker runs, so costly state is never rebuilt per task.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pipeline.errors import ConceptpruneError
from pipeline.progress import NO_PROGRESS, Meter, Progress

T = TypeVar("T")
R = TypeVar("R")


class EngineError(ConceptpruneError, RuntimeError):
    """An engine could not finish a map: its workers kept dying."""


@dataclass(frozen=True)
class Resources:
    """What one task needs of a worker."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None


DEFAULT = Resources()


class Engine(Protocol):
    name: str

    def map(self, fn: Callable[..., R], tasks: Iterable[Any], *, desc: str,
            total: int | None = None, unit: str = "task", resources: Resources = DEFAULT,
            setup: Callable[[], Any] | None = None, concurrent: bool = False,
            progress: Meter | None = None) -> Iterator[R]:
        """``fn(task)`` (or ``fn(state, task)`` with ``setup``) for every task, results in
        task order. ``concurrent`` says ``fn`` may run several at once in one process.
        ``progress`` is advanced by one unit per finished task (``map_progress``)."""
        ...

    def run_one(self, fn: Callable[[T], R], task: T, *, resources: Resources = DEFAULT) -> R:
        """A global step (a k-means fit, say) on one worker."""
        ...

    def cancel(self) -> None:
        """Stop the tasks of maps whose caller stopped reading them (a stop, an error); when
        it returns none of them writes any more. The engine stays usable."""
        ...

    def close(self) -> None:
        """``cancel``, then release the engine's workers and sessions."""
        ...


@contextmanager
def map_progress(progress: Meter | None, shown: bool, desc: str, total: int | None,
                 unit: str) -> Iterator[Meter]:
    """The meter a map advances: its caller's, or, given none, a bar of its own on a
    terminal when the engine shows progress (``NO_PROGRESS`` silences a map)."""
    if progress is not None:
        yield progress
    elif shown and sys.stderr.isatty():
        with Progress(desc, total, unit, bar=True, summary=False) as meter:
            yield meter
    else:
        yield NO_PROGRESS


def pin_kernel_threads(threads: int) -> Callable[[], None]:
    """Run this process's numeric kernels (BLAS, faiss's OpenMP) on ``threads`` threads;
    returns what puts the counts from before back.

    faiss's search and BLAS's products round differently with another thread count, so the
    same count everywhere is what makes two engines' floats, and so their results, equal.
    """
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    limits = threadpool_limits(threads)
    faiss.omp_set_num_threads(threads)

    def restore() -> None:
        limits.restore_original_limits()
        faiss.omp_set_num_threads(before)

    return restore
