"""Run the ``conceptprune`` CLI and SIGKILL it at a chosen point, as a crash would.

    python tests/kill_at.py MODULE:ATTR NTH MATCH -- run CONFIG ...
    python tests/kill_at.py map NTH DESC -- run CONFIG ...

The process kills itself just before the NTH call of ``MODULE:ATTR`` (``Class.method``
allowed) whose arguments' text contains MATCH ('' matches every call); or, with ``map``,
as the driver receives the NTH result of the engine map named DESC (any engine: the
other results of that map may be in flight on workers, half written). Nothing is cleaned
up: no finally blocks, no atexit, exactly what a lost machine leaves behind.

``CONCEPTPRUNE_LIST_MAPS=FILE`` appends every map's name and task count to FILE instead.
``CONCEPTPRUNE_KILL_SIGNAL=TERM`` (or HUP, INT) sends that signal instead of SIGKILL, as a
scheduler stopping the job would: the run's own handlers then stop it cleanly.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

SIGNAL = signal.Signals[f"SIG{os.environ.get('CONCEPTPRUNE_KILL_SIGNAL', 'KILL')}"]


def arm(target: str, nth: int, match: str) -> None:
    module_name, attr_path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    seen = 0

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal seen
        if match in repr(args) + repr(kwargs):
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), SIGNAL)
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def arm_map(nth: int, desc: str) -> None:
    """Wrap every engine's map: die as the NTH result of the map named ``desc`` arrives."""
    from pipeline.engines.local import LocalEngine
    from pipeline.engines.ray_engine import RayEngine
    from pipeline.engines.spark_engine import SparkEngine

    listing = os.environ.get("CONCEPTPRUNE_LIST_MAPS")
    for engine in (LocalEngine, RayEngine, SparkEngine):
        real = engine.map

        def wrapper(self, fn, tasks, *args, _real=real, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            tasks = list(tasks)
            if listing:
                with open(listing, "a") as f:
                    f.write(f"{kwargs['desc']}\t{len(tasks)}\n")
            results = _real(self, fn, tasks, *args, **kwargs)
            if kwargs["desc"] != desc:
                return results
            return _dying_after(results, nth)

        engine.map = wrapper


def _dying_after(results, nth: int):  # noqa: ANN001, ANN202
    for seen, result in enumerate(results, 1):
        if seen == nth:
            os.kill(os.getpid(), SIGNAL)
        yield result


def main() -> None:
    target, nth, match, sep, *cli = sys.argv[1:]
    assert sep == "--", "usage: kill_at.py MODULE:ATTR NTH MATCH -- CLI ARGS"
    if target == "map":
        arm_map(int(nth), match)
    else:
        arm(target, int(nth), match)
    from pipeline.cli import app

    app(cli)


if __name__ == "__main__":
    main()
