"""An image run SIGKILLed again and again, at more than 20 points across every step
(``CONCEPTPRUNE_FULL_MATRIX=1``; make test takes a sample), on the local engine and on a Ray
cluster: after each kill the next run resumes from what the last
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

import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from signal_points import stop_again_and_again
from test_resume_fingerprints import run_killed
from test_resume_images import assert_same_result, raw_config

from pipeline.output_guard import MANIFEST, WORK_MANIFEST

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
    # the uids step's maps run only where uids repeat, which these samples' do not (the
    # driver's check settles it): test_data_safety kills them on an input with repeats
    ("pipeline.workdir:WorkDir.mark", 1, "'uids'"),  # the step done, not its marker
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


# make test kills at a sample of the points, CONCEPTPRUNE_FULL_MATRIX=1 at every one. Locally
# the sample keeps the embed points, the fit, the folder swaps and semdedup's marker (a step's
# units done, not the step), and two maps (the ledger's and the shard write's); the maps of
# the steps between are the Ray sample's and the signal chains'. On Ray, where results arrive
# from workers: two signal points and a SIGKILL between them.
LOCAL_SAMPLE = ("'embed-", "", "'semdedup'", "ledger", ".ledger.staging", "write shards",
                ".shards.staging")
RAY_SAMPLE = ("embed", "semdedup: assign", "semdedup: clusters")


def full_matrix() -> bool:
    return os.environ.get("CONCEPTPRUNE_FULL_MATRIX") == "1"


def kill_points(engine: str) -> list[tuple[str, int, str]]:
    points = (EMBED_LOCAL if engine == "local" else EMBED_RAY) + STEPS
    if engine == "ray" and not full_matrix():
        points = [p for p in points if p[0] == "map" and p[2] in RAY_SAMPLE]
    elif not full_matrix():
        points = [p for p in points if p[2] in LOCAL_SAMPLE]
    return [("map", 1, "run_one") if target == "kmeans" and engine == "ray" else
            ("pipeline.engines.local:LocalEngine.run_one", 1, "") if target == "kmeans" else
            (target, nth, match) for target, nth, match in points]


@pytest.fixture(scope="module")
def data(chain_images: Path) -> Path:
    return chain_images  # SAMPLES images (conftest: the Spark chain reads them too)


@pytest.fixture(scope="module")
def clean(chain_clean: Path) -> Path:
    return chain_clean


def step_of(point: tuple[str, int, str]) -> str:
    """The step a stop at ``point`` is reported at (``stopped by ... at <step>``)."""
    target, _, match = point
    if target == "map":
        head = match.split(":")[0]
        return {"run_one": "semdedup", "subset": "ledger"}.get(head, head)
    for needle, step in (("'embed-", "embed"), ("'uids'", "uids"), ("'semdedup'", "semdedup"),
                         ("'dbp'", "dbp"), (".ledger.staging", "ledger"),
                         (".shards.staging", "write shards"), ("report.json", "report")):
        if needle in match:
            return step
    raise AssertionError(f"no step known for {point}")


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


def test_a_local_run_killed_again_and_again_ends_with_the_unbroken_bytes(
        data: Path, clean: Path, tmp_path: Path) -> None:
    points = kill_points("local")
    assert len(points) >= (21 if full_matrix() else 8)
    kill_again_and_again(data, tmp_path / "out", tmp_path / "c.yaml", {"name": "local"},
                         points)
    check_the_same_as_an_unbroken_run(tmp_path / "out", clean)


def test_a_ray_run_killed_at_every_map_ends_with_the_unbroken_bytes(
        data: Path, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    from ray_head import ray_head

    points = kill_points("ray")
    assert len(points) >= (20 if full_matrix() else 3)
    # some points stop the driver by a signal instead, while the map's other tasks are in
    # flight on the workers (ray.init takes SIGTERM for itself; the run takes it back): in
    # make test's sample two; in the full matrix SIGTERM, SIGHUP, SIGINT and SIGKILL in turn
    # (15 points stopped by a signal, 5 killed)
    if full_matrix():
        cycle = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL)
        signals = {i: (cycle[i % 4], step_of(point)) for i, point in enumerate(points)
                   if cycle[i % 4] != signal.SIGKILL}
        assert len(signals) >= 10
    else:
        at = {match: i for i, (_, _, match) in enumerate(points)}
        signals = {at["embed"]: (signal.SIGTERM, "embed"),
                   at["semdedup: clusters"]: (signal.SIGHUP, "semdedup")}
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
    ("pipeline.workdir:WorkDir.mark", 1, "'uids'", signal.SIGTERM, "uids"),
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


def test_a_run_stopped_by_sigterm_sighup_and_sigint_at_13_points_resumes_to_the_same_bytes(
        data: Path, clean: Path, tmp_path: Path) -> None:
    stop_again_and_again(data, tmp_path / "out", tmp_path / "c.yaml", {"name": "local"},
                         SIGNAL_POINTS)
    check_the_same_as_an_unbroken_run(tmp_path / "out", clean)
