"""What every engine offers the steps: an ordered map over small task descriptors, a global
step on one worker, and progress bars.

Tasks and results are small (paths, row ranges, counts); data moves through the work folder.
A ``setup`` runs once per worker (load a model, open a store) and its result is handed to
every task that worker runs, so costly state is never rebuilt per task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tqdm.auto import tqdm

from pipeline.errors import ConceptpruneError

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
            setup: Callable[[], Any] | None = None, concurrent: bool = False) -> Iterator[R]:
        """``fn(task)`` (or ``fn(state, task)`` with ``setup``) for every task, results in
        task order. ``concurrent`` says ``fn`` may run several at once in one process."""
        ...

    def run_one(self, fn: Callable[[T], R], task: T, *, resources: Resources = DEFAULT) -> R:
        """A global step (a k-means fit, say) on one worker."""
        ...

    def bar(self, desc: str, total: int, unit: str = "it") -> tqdm:
        ...

    def cancel(self) -> None:
        """Stop the tasks of maps whose caller stopped reading them (a stop, an error); when
        it returns none of them writes any more. The engine stays usable."""
        ...

    def close(self) -> None:
        """``cancel``, then release the engine's workers and sessions."""
        ...


def progress_bar(desc: str, total: int | None, unit: str, enabled: bool,
                 scale: bool = False) -> tqdm:
    """tqdm that hides itself off a terminal, and entirely when progress is off."""
    return tqdm(desc=desc, total=total, unit=unit, disable=True if not enabled else None,
                leave=False, unit_scale=scale, dynamic_ncols=True)


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
