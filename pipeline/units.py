"""Units of work and their completion markers: one way for every kind of unit.

A unit (an input shard embedded, a part read, a k-means fit, a part assigned, a bucket of
clusters decided, a part's table written) is finished when its marker exists under the work
folder's ``markers/`` with the fingerprint of the settings it was done with. The marker is
written by the worker that did the unit, right after the unit's own files: a driver that
dies (a lost node, a killed Spark driver whose collect had not returned) loses no finished
unit, and a rerun redoes only the units without a marker.

``WORK/markers/NAME.json`` holds ``{"fingerprint": ..., "stats": ...}``; what ``stats``
holds is the unit's to say (``{"result": ...}`` for the units of ``map_units``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.workdir import WorkDir


@dataclass(frozen=True)
class Unit:
    """A task, and where its worker records that it is done."""

    work: str  # the work folder, as the workers see it
    name: str  # its marker: ``embed-00003``, ``semdedup/bucket-00012``, ``dbp/fit``, ...
    fingerprint: str
    task: Any


def as_result(value: Any) -> dict[str, Any]:  # noqa: ANN401
    """The marker stats of a unit whose result is JSON-able: ``{"result": value}``."""
    return {"result": value}


def no_stats(_: Any) -> dict[str, Any]:  # noqa: ANN401
    return {}


def finish(unit: Unit, stats: dict[str, Any]) -> None:
    """Record ``unit`` as done (in the worker, after its files)."""
    WorkDir(Path(unit.work)).mark(unit.name, unit.fingerprint, stats)


def run_unit(fn: Callable[[Any], Any], stats: Callable[[Any], dict[str, Any]],
             unit: Unit) -> Any:  # noqa: ANN401
    """In the worker: ``fn(unit.task)``, then its marker with ``stats(result)``."""
    result = fn(unit.task)
    finish(unit, stats(result))
    return result


def run_unit_with(fn: Callable[[Any, Any], Any], stats: Callable[[Any], dict[str, Any]],
                  state: Any, unit: Unit) -> Any:  # noqa: ANN401
    """``run_unit`` for a map with a ``setup``: ``fn(state, unit.task)``."""
    result = fn(state, unit.task)
    finish(unit, stats(result))
    return result
