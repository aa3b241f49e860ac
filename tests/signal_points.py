"""Stop a run by SIGTERM, SIGHUP or SIGINT at a chosen point, on the local or the Spark engine:
the hooks of the signal chains (tests/test_crash_resume.py, tests/test_engine_spark.py).

A point is ``(target, nth, match)``: ``MODULE:ATTR`` (``Class.method`` allowed), the signal
sent just after its NTH call whose arguments contain ``match`` (a rename: just before it, in
the middle of a folder's swap); or ``map``, the NTH task of the maps named ``match``. On the
local engine a ``map`` point is reached as that task's result reaches the driver; on Spark
that task itself sends the signal to the driver and then holds (a minute) until the stop
cancels its job: the driver is stopped while it waits for Spark, the job in flight.
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_resume_images import raw_config

HOLD_S = 60  # how long a Spark task that sent the signal waits to be cancelled


def signal_then_hold(at: int, driver: int, signum: int, fn: Callable[..., Any],
                     *args: Any) -> Any:  # noqa: ANN401
    """In a Spark worker: the map's task ``at`` sends ``signum`` to the driver, as a scheduler
    stopping the job would, and holds until cancelled; every task then works as ``fn``.
    ``args`` is ``fn``'s, but its task as ``(index, task)``."""
    *state, (index, task) = args
    if index == at:
        os.kill(driver, signum)
        time.sleep(HOLD_S)
    return fn(*state, task)


def signal_after(monkeypatch: pytest.MonkeyPatch, target: str, nth: int, match: str,
                 signum: int, engine: str = "local") -> None:
    """Send ``signum`` to this process at the point (see the module's doc), as Kubernetes or
    Slurm would at that moment."""
    seen = 0

    def due() -> bool:
        nonlocal seen
        seen += 1
        return seen == nth

    if target == "map" and engine == "spark":
        from pipeline.engines.spark_engine import SparkEngine

        real_spark_map = SparkEngine.map

        def map_with_a_signal(self, fn, tasks, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            nonlocal seen
            if kwargs["desc"] != match or seen >= nth:
                return real_spark_map(self, fn, tasks, *args, **kwargs)
            tasks = list(tasks)
            at, seen = nth - seen - 1, seen + len(tasks)
            if at >= len(tasks):
                return real_spark_map(self, fn, tasks, *args, **kwargs)
            held = partial(signal_then_hold, at, os.getpid(), signum, fn)
            return real_spark_map(self, held, list(enumerate(tasks)), *args, **kwargs)

        monkeypatch.setattr(SparkEngine, "map", map_with_a_signal)
        return
    if target == "map":
        from pipeline.engines.local import LocalEngine

        real_map = LocalEngine.map

        def map_then_signal(self, fn, tasks, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            for result in real_map(self, fn, tasks, *args, **kwargs):
                if kwargs["desc"] == match and due():
                    os.kill(os.getpid(), signum)
                yield result

        monkeypatch.setattr(LocalEngine, "map", map_then_signal)
        return
    module_name, attr_path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real = getattr(owner, name)

    def call_then_signal(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        hit = match in repr(args) + repr(kwargs) and due()
        if hit and name == "rename":
            os.kill(os.getpid(), signum)
        result = real(*args, **kwargs)
        if hit and name != "rename":
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(owner, name, call_then_signal)


def stop_again_and_again(data: Path, out: Path, cfg_file: Path, engine: dict,
                         points: list[tuple[str, int, str, int, str]],
                         check: Callable[[str, float], None] | None = None) -> None:
    """Run the command line in this process, as ``conceptprune run``, stopped by a signal at
    each point in turn: each stop exits 128 + the signal's number, says where it stopped and
    how to resume, and leaves no lock and no staging folder; ``check(point, seconds the run
    took)`` asks more of it. Then the run that finishes."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.run_lock import LOCK_NAME

    cfg_file.write_text(yaml.safe_dump({**raw_config(data, out), "engine": engine}))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    for target, nth, match, signum, where in points:
        with pytest.MonkeyPatch.context() as patch:
            signal_after(patch, target, nth, match, signum, engine["name"])
            started = time.monotonic()
            result = CliRunner().invoke(app, ["run", str(cfg_file), "--no-progress"])
            took = time.monotonic() - started
        name = signal.Signals(signum).name
        point = f"{name} after {target} {nth} {match!r}"
        assert result.exit_code == 128 + signum, \
            f"{point}: exit {result.exit_code}\n{result.output[-3000:]}"
        said = (out / "logs" / "run.log").read_text().splitlines()[-1]
        assert said.endswith(f"stopped by {name} at {where}; run the same command to resume"), \
            f"{point}: {said}"
        left = [p.name for p in out.rglob(".*")
                if p.name == LOCK_NAME or ".staging-" in p.name or ".old-" in p.name]
        assert not left, f"{point}: left behind {left}"
        assert {s: signal.getsignal(s) for s in handlers} == handlers  # given back
        if check is not None:
            check(point, took)
    result = CliRunner().invoke(app, ["run", str(cfg_file), "--no-progress"])
    assert result.exit_code == 0, result.output
