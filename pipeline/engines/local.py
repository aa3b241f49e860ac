"""The local engine: runs a stage's map on this machine, in order, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


class LocalEngine:
    name = "local"

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def map(self, fn: Callable[[T], R], items: Iterable[T], desc: str,
            total: int | None = None, unit: str = "it") -> Iterator[R]:
        """Apply ``fn`` to every item, yielding results in item order."""
        bar = tqdm(items, desc=desc, total=total, unit=unit, disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        for item in bar:
            yield fn(item)

    def bar(self, desc: str, total: int, unit: str = "it") -> tqdm:
        return tqdm(desc=desc, total=total, unit=unit, disable=not self.progress, leave=False,
                    unit_scale=True, dynamic_ncols=True)
