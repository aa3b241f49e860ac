"""An image run SIGKILLed again and again, at more than 20 points across every step, on the
local engine and on a Ray cluster: after each kill the next run resumes from what the last
one left (and is itself killed further on); the run that finally finishes has the bytes of an
unbroken run, every input sample has its ledger row, and nothing is left behind.

Each kill point lies past the previous one, so every killed run resumes the state the kill
before it left: half-embedded shards, a unit's output without its marker, a step's units
without the step's marker, a ledger or shards/ swap cut between its two renames, and so on.
``map`` points die as the driver receives a map's n-th result, while other tasks of that map
may still be writing on workers (on Ray the dead driver's workers are killed with it). As
workers mark their own units, how many units of that map are done by then is the workers'
affair: a map has one point at most, so the next point is reached whatever they did.
The Ray workers run with the cluster's own thread count (one per worker, unset), the local
run with this machine's: decisions are exact, so the bytes agree (SPEC §2).
"""

from __future__ import annotations

import importlib
import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_resume_fingerprints import run_killed
from test_resume_images import assert_same_result, raw_config

from pipeline.config import validate_config
from pipeline.output_guard import MANIFEST, WORK_MANIFEST
from pipeline.runner import run
from pipeline.synth.images import synth_images

SAMPLES = 72

# (target, nth, match) as tests/kill_at.py takes them, in the order a run reaches them
EMBED_LOCAL = [
    ("pipeline.workdir:WorkDir.mark", 2, "'embed-"),  # one shard embedded, the next not
    ("pipeline.workdir:WorkDir.mark", 1, "'embed-"),  # the second, the third not
]
EMBED_RAY = [
    ("map", 1, "embed"),  # a task per shard: one shard's result in, two in flight
]
STEPS = [
    ("map", 2, "read"),
    ("map", 1, "uids: scatter"),
    ("map", 1, "uids: find"),
    ("map", 2, "uids: apply"),
    ("pipeline.workdir:WorkDir.mark", 1, "'uids'"),  # every unit done, not the step
    ("kmeans", 1, ""),  # the semdedup k-means fitted, nothing assigned yet
    ("map", 2, "semdedup: assign"),
    ("map", 1, "semdedup: clusters"),
    ("map", 1, "semdedup: decisions"),
    ("pipeline.workdir:WorkDir.mark", 1, "'semdedup'"),  # every unit done, not the step
    ("map", 2, "dbp: assign"),
    ("map", 1, "dbp: select"),
    ("map", 3, "dbp: decisions"),
    ("pipeline.workdir:WorkDir.mark", 1, "'dbp'"),
    ("map", 2, "ledger"),
    ("pathlib:Path.rename", 1, ".ledger.staging"),  # old ledger moved away, new not in
    ("map", 1, "subset"),
    ("map", 1, "write shards"),
    ("pathlib:Path.rename", 1, ".shards.staging"),  # old shards/ moved away, new not in
    ("pipeline.report.publish:write_json", 1, "report.json"),  # everything but the report
]


# On Ray, make test kills one point per step where results arrive from workers (the four
# signals among them); CONCEPTPRUNE_FULL_MATRIX=1 kills at all 21. The local chain always
# takes every point, the driver's own ones (markers, folder swaps, the report) included:
# they are the same code on every engine.
RAY_SAMPLE = ("embed", "read", "uids: find", "run_one", "semdedup: clusters", "dbp: select",
              "ledger", "write shards")


def kill_points(engine: str) -> list[tuple[str, int, str]]:
    points = (EMBED_LOCAL if engine == "local" else EMBED_RAY) + STEPS
    if engine == "ray" and os.environ.get("CONCEPTPRUNE_FULL_MATRIX") != "1":
        points = [p for p in points if p[0] == "map" and p[2] in RAY_SAMPLE or
                  p[0] == "kmeans"]
    return [("map", 1, "run_one") if target == "kmeans" and engine == "ray" else
            ("pipeline.engines.local:LocalEngine.run_one", 1, "") if target == "kmeans" else
            (target, nth, match) for target, nth, match in points]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_images(tmp_path_factory.mktemp("chain") / "data", SAMPLES, seed=9,
                        samples_per_shard=24, concepts=3)


@pytest.fixture(scope="module")
def clean(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chainclean") / "out"
    run(validate_config(raw_config(data, out)))
    return out


def kill_again_and_again(data: Path, out: Path, cfg_file: Path, engine: dict,
                         points: list[tuple[str, int, str]],
                         signals: dict[int, tuple[int, str]] | None = None) -> None:
    """Kill the run at each point in turn; at the point numbers in ``signals``, stop it by
    that signal instead, and check that it said where (the step given) and left no lock and
    no staging folder."""
    from pipeline.run_lock import LOCK_NAME

    raw = {**raw_config(data, out), "engine": engine}
    cfg_file.write_text(yaml.safe_dump(raw))
    for number, (target, nth, match) in enumerate(points):
        signum, where = (signals or {}).get(number, (signal.SIGKILL, ""))
        said = run_killed(cfg_file, target, nth, match, signum=signum)
        if signum == signal.SIGKILL:
            continue
        name = signal.Signals(signum).name
        assert f"stopped by {name} at {where}; run the same command to resume" in said, \
            f"{name} at {target} {nth} {match!r}: {said[-2000:]}"
        left = [p.name for p in out.rglob(".*")
                if p.name == LOCK_NAME or ".staging-" in p.name or ".old-" in p.name]
        assert not left, f"{name} at {target} {nth} {match!r}: left behind {left}"
    run_killed(cfg_file, "map", 0, "none", killed=False)  # the run that finishes


def check_the_same_as_an_unbroken_run(out: Path, clean: Path) -> None:
    assert_same_result(out, clean)
    ledger = pq.read_table(out / "ledger", columns=["key", "status"])
    assert ledger.num_rows == SAMPLES and len(set(ledger["key"].to_pylist())) == SAMPLES
    left = [p.name for p in out.rglob(".*") if p.name not in (MANIFEST, WORK_MANIFEST)]
    assert not left, f"staging, temp files or a lock left behind: {left}"


def test_a_local_run_killed_at_22_points_ends_with_the_unbroken_bytes(
        data: Path, clean: Path, tmp_path: Path) -> None:
    points = kill_points("local")
    assert len(points) >= 20
    kill_again_and_again(data, tmp_path / "out", tmp_path / "c.yaml", {"name": "local"},
                         points)
    check_the_same_as_an_unbroken_run(tmp_path / "out", clean)


def test_a_ray_run_killed_at_every_map_ends_with_the_unbroken_bytes(
        data: Path, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    from ray_head import ray_head

    points = kill_points("ray")
    assert len(points) >= 8  # 21 with CONCEPTPRUNE_FULL_MATRIX=1
    # four of the points stop the driver by a signal instead, while the map's other tasks
    # are in flight on the workers (ray.init takes SIGTERM for itself; the run takes it back)
    at = {match: i for i, (_, _, match) in enumerate(points)}
    signals = {at["embed"]: (signal.SIGTERM, "embed"),
               at["semdedup: clusters"]: (signal.SIGHUP, "semdedup"),
               at["ledger"]: (signal.SIGINT, "ledger"),
               at["write shards"]: (signal.SIGTERM, "write shards")}
    with ray_head() as head:
        for name, value in head.env.items():
            if name.startswith("RAY_") and os.environ.get(name) != value:
                monkeypatch.setenv(name, value)
        kill_again_and_again(data, tmp_path / "out", tmp_path / "c.yaml",
                             {"name": "ray", "address": head.address}, points, signals)
    check_the_same_as_an_unbroken_run(tmp_path / "out", clean)


# (target, nth, match, signal, where the log says it stopped): the signal is sent just after
# the NTH matching call (``map``: as the NTH result of that map arrives; a rename: just before
# it, in the middle of a folder's swap), each point past the last, the three signals in turn
SIGNAL_POINTS = [
    ("pipeline.workdir:WorkDir.mark", 1, "'embed-", signal.SIGTERM, "embed"),
    ("pipeline.workdir:WorkDir.mark", 1, "'embed-", signal.SIGHUP, "embed"),
    ("map", 1, "read", signal.SIGINT, "read"),
    ("map", 1, "uids: apply", signal.SIGTERM, "uids"),
    ("pipeline.engines.local:LocalEngine.run_one", 1, "", signal.SIGHUP, "semdedup"),
    ("map", 1, "semdedup: clusters", signal.SIGINT, "semdedup"),
    ("pipeline.workdir:WorkDir.mark", 1, "'semdedup'", signal.SIGTERM, "semdedup"),
    ("map", 1, "dbp: select", signal.SIGHUP, "dbp"),
    ("map", 2, "ledger", signal.SIGINT, "ledger"),
    ("pathlib:Path.rename", 1, ".ledger.staging", signal.SIGTERM, "ledger"),
    ("map", 1, "write shards", signal.SIGHUP, "write shards"),
    ("pathlib:Path.rename", 1, ".shards.staging", signal.SIGINT, "write shards"),
    ("pipeline.report.publish:write_json", 1, "report.json", signal.SIGTERM, "report"),
]


def signal_after(monkeypatch: pytest.MonkeyPatch, target: str, nth: int, match: str,
                 signum: int) -> None:
    """Send ``signum`` to this process just after the NTH call of ``MODULE:ATTR`` whose
    arguments contain ``match``, or (``map``) as the NTH result of the map named ``match``
    reaches the driver, as Kubernetes or Slurm would at that moment."""
    seen = 0

    def due() -> bool:
        nonlocal seen
        seen += 1
        return seen == nth

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
                         points: list[tuple[str, int, str, int, str]]) -> None:
    """Run the command line in this process, as ``conceptprune run``, stopped by a signal at
    each point in turn: each stop exits 128 + the signal's number, says where it stopped and
    how to resume, and leaves no lock and no staging folder; then the run that finishes."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.run_lock import LOCK_NAME

    cfg_file.write_text(yaml.safe_dump({**raw_config(data, out), "engine": engine}))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    for target, nth, match, signum, where in points:
        with pytest.MonkeyPatch.context() as patch:
            signal_after(patch, target, nth, match, signum)
            result = CliRunner().invoke(app, ["run", str(cfg_file), "--no-progress"])
        name = signal.Signals(signum).name
        point = f"{name} after {target} {nth} {match!r}"
        assert result.exit_code == 128 + signum, f"{point}: exit {result.exit_code}"
        said = (out / "logs" / "run.log").read_text().splitlines()[-1]
        assert said.endswith(f"stopped by {name} at {where}; run the same command to resume"), \
            f"{point}: {said}"
        left = [p.name for p in out.rglob(".*")
                if p.name == LOCK_NAME or ".staging-" in p.name or ".old-" in p.name]
        assert not left, f"{point}: left behind {left}"
        assert {s: signal.getsignal(s) for s in handlers} == handlers  # given back
    result = CliRunner().invoke(app, ["run", str(cfg_file), "--no-progress"])
    assert result.exit_code == 0, result.output


def test_a_run_stopped_by_sigterm_sighup_and_sigint_at_13_points_resumes_to_the_same_bytes(
        data: Path, clean: Path, tmp_path: Path) -> None:
    stop_again_and_again(data, tmp_path / "out", tmp_path / "c.yaml", {"name": "local"},
                         SIGNAL_POINTS)
    check_the_same_as_an_unbroken_run(tmp_path / "out", clean)
