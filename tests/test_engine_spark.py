"""The spark engine (pyspark local[2]) gives the local engine's bytes: the embeddings run, the
image run, a Python worker killed in the middle of a job, the CLI's --engine spark, and an
image run stopped by SIGTERM, SIGHUP and SIGINT again and again (its jobs cancelled)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("pyspark")

import signal_points  # noqa: E402
from same_bytes import assert_same_file  # noqa: E402
from signal_points import stop_again_and_again  # noqa: E402
from spark_cluster import spark_standalone  # noqa: E402
from test_crash_resume import check_the_same_as_an_unbroken_run, full_matrix  # noqa: E402
from test_engine_ray import assert_same_outputs, engine_of  # noqa: E402
from tie_data import settings  # noqa: E402

from pipeline.config import validate_config  # noqa: E402
from pipeline.engines.base import EngineError  # noqa: E402
from pipeline.engines.spark_engine import SparkEngine, with_retries  # noqa: E402
from pipeline.runner import run  # noqa: E402
from pipeline.synth.embeddings import SynthSpec, synth_embeddings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPARK_ENV = {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
             "PYSPARK_DRIVER_PYTHON": sys.executable}
RETRIES = 2  # engine.max_retries of the module's engine (not the default 3: it must be used)


@pytest.fixture(scope="module")
def engine() -> Iterator[SparkEngine]:
    from pyspark import cloudpickle

    for key, value in SPARK_ENV.items():
        os.environ.setdefault(key, value)
    for module in (sys.modules[__name__], signal_points):  # workers lack tests/
        cloudpickle.register_pickle_by_value(module)
    spark = SparkEngine(master="local[2]", progress=False, max_retries=RETRIES)
    yield spark
    spark.close()


@pytest.fixture(scope="module")
def data(tie_input: Path) -> Path:
    return tie_input


@pytest.fixture(scope="module")
def local(tie_local: Path) -> Path:
    """The local engine's run of the data, which every Spark run must equal."""
    return tie_local


def square(x: int) -> int:
    return x * x


def pid_and_square(state: int, x: int) -> tuple[int, int]:
    return state, x * x


def fails(x: int) -> int:
    raise ValueError(f"task {x} cannot be done")


def test_map_keeps_order_runs_setup_per_worker_and_names_errors(engine: SparkEngine) -> None:
    assert list(engine.map(square, range(12), desc="t")) == [x * x for x in range(12)]
    got = list(engine.map(pid_and_square, range(8), desc="t", setup=os.getpid))
    assert [y for _, y in got] == [x * x for x in range(8)]
    assert 1 <= len({pid for pid, _ in got}) <= 2  # once per Python worker, not per task
    assert engine.run_one(square, 7) == 49
    with pytest.raises(EngineError, match="ValueError: task 3 cannot be done"):
        list(engine.map(fails, [3], desc="t"))



def test_local_masters_ask_for_one_attempt_more_than_the_retries() -> None:
    """Local mode retries only what its master says: local[N,F] with F = retries + 1."""
    assert with_retries("local[2]", 3) == "local[2,4]"
    assert with_retries("local[*]", 0) == "local[*,1]"  # no retry: one attempt
    assert with_retries("local", 5) == "local[1,6]"
    assert with_retries("local[4,9]", 3) == "local[4,9]"  # the user's own F stands
    assert with_retries("spark://host:7077", 3) == "spark://host:7077"  # spark.task.maxFailures


def fails_and_counts(path: str) -> int:
    from pyspark import TaskContext

    with open(path, "a") as f:
        f.write(f"{TaskContext.get().attemptNumber()}\n")
    raise ValueError("this task always fails")


def test_a_failed_task_is_retried_engine_max_retries_times(engine: SparkEngine,
                                                            tmp_path: Path) -> None:
    assert engine.context.master == f"local[2,{RETRIES + 1}]"
    assert engine.context.getConf().get("spark.task.maxFailures") == str(RETRIES + 1)
    attempts = tmp_path / "attempts"
    with pytest.raises(EngineError, match="ValueError: this task always fails"):
        list(engine.map(fails_and_counts, [str(attempts)], desc="t"))
    assert attempts.read_text().split() == [str(i) for i in range(RETRIES + 1)]

def disk_full_and_counts(path: str) -> int:
    from pyspark import TaskContext

    with open(path, "a") as f:
        f.write(f"{TaskContext.get().attemptNumber()}\n")
    raise OSError(errno.ENOSPC, "No space left on device", "/data/part-00000.parquet")


def test_an_error_no_retry_can_fix_is_not_retried(engine: SparkEngine, tmp_path: Path) -> None:
    """A full disk fails the same way on every attempt: one attempt, and the error as it was
    (its errno, its file, its worker), not a Py4J trace."""
    attempts = tmp_path / "attempts"
    with pytest.raises(OSError, match=r"No space left on device \(on worker ") as caught:
        list(engine.map(disk_full_and_counts, [str(attempts)], desc="t"))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC,
                                                           "/data/part-00000.parquet")
    assert attempts.read_text().split() == ["0"]


def test_spark_and_local_give_the_same_bytes(engine: SparkEngine, data: Path, local: Path,
                                             tmp_path: Path) -> None:
    run(validate_config({**settings(data, tmp_path / "spark"), "vector_cache_gb": 0,
                         "engine": {"bucket_rows": 2500}}), engine=engine)
    assert (engine_of(local), engine_of(tmp_path / "spark")) == ("local", "spark")
    assert_same_outputs(tmp_path / "spark", local)


def test_image_run_on_spark_gives_the_local_bytes(engine: SparkEngine, tmp_path: Path) -> None:
    from test_resume_images import assert_same_result, raw_config

    from pipeline.synth.images import synth_images

    data = synth_images(tmp_path / "data", 600, seed=4, samples_per_shard=100, concepts=5)

    def raw(out: Path) -> dict[str, Any]:
        cfg = raw_config(data, out, k=5)
        cfg["embed"].update(cluster_model=None, cluster_weights=None)
        cfg["semdedup"].update(k=4, eps=0.0002)
        cfg["write"].update(max_count=70, shards_per_task=1)
        return cfg

    run(validate_config(raw(tmp_path / "local")))
    run(validate_config(raw(tmp_path / "spark")), engine=engine)
    assert_same_result(tmp_path / "spark", tmp_path / "local")  # ledger, shards, subset


def test_a_killed_python_worker_is_retried_and_the_result_holds(data: Path, local: Path,
                                                                tmp_path: Path) -> None:
    """The CLI with --engine spark in its own process; tests/engine_fault makes the first
    Python worker that deduplicates a cluster SIGKILL itself. Spark reruns the task."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**settings(data, tmp_path / "spark"),
                                   "engine": {"master": "local[2]"}}))
    sentinel = tmp_path / "killed-pid"
    env = {**os.environ, **SPARK_ENV, "PYTHONPATH": str(REPO / "tests" / "engine_fault"),
           "CONCEPTPRUNE_TEST_KILL_ONCE": str(sentinel)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--engine", "spark",
         "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sentinel.exists(), "no worker was killed"
    assert (engine_of(local), engine_of(tmp_path / "spark")) == ("local", "spark")
    assert_same_outputs(tmp_path / "spark", local)
    report = json.loads((tmp_path / "spark" / "report" / "report.json").read_text())
    assert report["parameters"]["engine"]["name"] == "spark"


def test_a_killed_driver_keeps_every_unit_its_workers_finished(data: Path, local: Path,
                                                              tmp_path: Path) -> None:
    """The driver node is lost while Spark runs semdedup's buckets (the CLI and its JVM
    SIGKILLed once two buckets are done, the other tasks still running): the units finished
    so far have their markers, written by their workers, and the rerun redoes none of them;
    the result is the local run's."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**settings(data, tmp_path / "spark"),
                                   "engine": {"master": "local[2]", "bucket_rows": 2500}}))
    sentinel = tmp_path / "driver-killed"
    env = {**os.environ, **SPARK_ENV, "PYTHONPATH": str(REPO / "tests" / "engine_fault"),
           "CONCEPTPRUNE_TEST_KILL_DRIVER": f"{sentinel}:semdedup/bucket:2"}
    command = [sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--engine", "spark",
               "--no-progress"]
    log = tmp_path / "killed.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            proc.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):  # its JVM and workers go with it
                os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(2)  # the killed workers' last writes, if any, are in
    assert proc.returncode == -signal.SIGKILL and sentinel.exists(), log.read_text()[-3000:]
    markers = tmp_path / "spark" / "_work" / "markers" / "semdedup"
    kept = {m.name: m.stat().st_mtime_ns for m in markers.glob("bucket-*.json")}
    assert len(kept) >= 2, "finished units lost with the driver"
    done = subprocess.run(command, cwd=REPO, env={**os.environ, **SPARK_ENV},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {name: (markers / name).stat().st_mtime_ns for name in kept} == kept, \
        "a unit finished before the driver died was done again"
    assert len(list(markers.glob("bucket-*.json"))) > len(kept)
    assert_same_outputs(tmp_path / "spark", local)


def test_a_standalone_cluster_loses_a_worker_node_and_the_result_holds(
        data: Path, local: Path, tmp_path: Path) -> None:
    """A Spark standalone cluster (a master and two workers, started by pyspark's own
    launcher): once one worker's executor has finished two of semdedup's buckets, that
    whole worker node is lost (worker JVM, executor JVM and Python workers SIGKILLed) while
    other buckets are in flight. Spark reruns its tasks on the other node; the run ends
    with the local bytes."""
    sentinel = tmp_path / "node-killed"
    fault = {"CONCEPTPRUNE_TEST_KILL_NODE": f"{sentinel}:semdedup/bucket:2"}
    with spark_standalone([fault, {}]) as cluster:
        Path(f"{sentinel}.pgid").write_text(str(cluster.workers[0].pid))
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({**settings(data, tmp_path / "spark"), "engine": {
            "master": cluster.master, "bucket_rows": 700}}))
        env = {**os.environ, **SPARK_ENV, "PYTHONPATH": str(REPO / "tests" / "engine_fault")}
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--engine", "spark",
             "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sentinel.exists(), "the worker node was never lost"
        assert cluster.workers[0].wait(timeout=60) != 0
    markers = list((tmp_path / "spark" / "_work" / "markers" / "semdedup").glob("bucket-*"))
    assert len(markers) > 2  # buckets were left when the node was lost
    assert engine_of(tmp_path / "spark") == "spark"
    assert_same_outputs(tmp_path / "spark", local)


def test_spark_submit_runs_the_job_entry_point(tmp_path: Path) -> None:
    """The real spark-submit (--master local[2]) on jobs/spark_job.py: the same subset as
    conceptprune run on the local engine."""
    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=3000, dim=16, concepts=6,
                                                         files=3, seed=1))
    run(validate_config(settings(data, tmp_path / "local")))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(settings(data, tmp_path / "submitted")))
    submit = Path(sys.executable).with_name("spark-submit")
    env = {**os.environ, **SPARK_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [str(submit), "--master", "local[2]", "--conf", "spark.task.cpus=1",
         str(REPO / "jobs" / "spark_job.py"), str(cfg), "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kept" in proc.stdout
    report = json.loads((tmp_path / "submitted" / "report" / "report.json").read_text())
    assert report["engine"] == "spark"
    assert_same_file(tmp_path / "submitted" / "subset.npy", tmp_path / "local" / "subset.npy")


def test_gpu_tasks_ask_for_a_gpu_in_their_resource_profile(engine: SparkEngine) -> None:
    from pipeline.engines.base import Resources

    profile = engine._profile(Resources(cpus=2, gpus=1))
    tasks = profile.taskResources
    assert tasks["gpu"].amount == 1 and tasks["cpus"].amount == 2


def test_a_task_hands_the_gpu_spark_gave_it_to_the_stages(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """What a Python worker does per task, with the task's GPU address as Spark sets it; a
    worker running tasks on two GPUs sets its state (models) up again for the other GPU."""
    import pyspark
    from pyspark.resource import ResourceInformation

    from pipeline.engines import spark_engine
    from pipeline.engines.gpu import set_task_gpu, task_gpu

    class Context:
        address = "1"

        def resources(self) -> dict[str, ResourceInformation]:
            return {"gpu": ResourceInformation("gpu", [self.address])}

    context = Context()
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: context))
    monkeypatch.setattr(spark_engine, "_WORKER", {})
    setups: list[int | None] = []

    def setup() -> int | None:
        setups.append(task_gpu())
        return task_gpu()

    def run(token: str, address: str) -> list[tuple[int, Any]]:
        context.address = address
        return list(spark_engine._run_partition(
            token, setup, lambda state, x: (state, task_gpu(), x), None, [(0, "t")]))

    try:
        assert run("a", "1") == [(0, (1, 1, "t"))]
        assert run("a", "1") == [(0, (1, 1, "t"))] and setups == [1]  # kept for the map
        assert run("a", "0") == [(0, (0, 0, "t"))] and setups == [1, 0]  # the other GPU
        assert run("b", "0") == [(0, (0, 0, "t"))] and setups == [1, 0, 0]  # the next map
    finally:
        set_task_gpu(None)


def no_job_left(engine: SparkEngine) -> bool:
    """No Spark job runs, or none within 10 s: Spark's listeners learn of a cancel in a
    moment."""
    tracker = engine.context.statusTracker()
    deadline = time.monotonic() + 10
    while tracker.getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not tracker.getActiveJobsIds()


# (target, nth, match, signal, where the log says it stopped), as tests/signal_points.py takes
# them, each point past the last, the three signals in turn. At a map point that map's NTH
# task sends the signal and holds its job until the stop cancels it.
SIGNAL_POINTS = [
    ("map", 2, "embed", signal.SIGTERM, "embed"),  # a shard embedded, the second in flight
    ("map", 1, "read", signal.SIGHUP, "read"),
    # the uids step's maps run only where uids repeat (not here): its marker instead
    ("pipeline.workdir:WorkDir.mark", 1, "'uids'", signal.SIGINT, "uids"),
    ("map", 1, "run_one", signal.SIGTERM, "semdedup"),  # the semdedup k-means in flight
    ("map", 1, "semdedup: clusters", signal.SIGHUP, "semdedup"),
    ("pipeline.workdir:WorkDir.mark", 1, "'semdedup'", signal.SIGINT, "semdedup"),
    ("map", 1, "dbp: select", signal.SIGTERM, "dbp"),
    ("map", 2, "dbp: decisions", signal.SIGHUP, "dbp"),
    ("map", 2, "ledger", signal.SIGINT, "ledger"),
    ("pathlib:Path.rename", 1, ".ledger.staging", signal.SIGTERM, "ledger"),  # mid-swap
    ("map", 1, "write shards", signal.SIGHUP, "write shards"),
    ("pathlib:Path.rename", 1, ".shards.staging", signal.SIGINT, "write shards"),  # mid-swap
    ("pipeline.report.publish:write_json", 1, "report.json", signal.SIGTERM, "report"),
]
# make test stops the run at one point per signal, embed's and semdedup's maps and the swap
# of shards/ (the driver's own points are the local chain's code too); with
# CONCEPTPRUNE_FULL_MATRIX=1 at all 13
SIGNAL_SAMPLE = ("embed", "semdedup: clusters", ".shards.staging")


def test_a_spark_run_stopped_by_sigterm_sighup_and_sigint_again_and_again_gives_the_local_bytes(
        engine: SparkEngine, chain_images: Path, chain_clean: Path, tmp_path: Path) -> None:
    """``conceptprune run`` with engine spark (in this process: it joins the module's Spark
    context) stopped by SIGTERM, SIGHUP and SIGINT in turn, from embed to the report, each
    stop resuming what the last left: every stop exits 128 + the signal, says where it
    stopped, releases the lock, leaves no staging folder and cancels its job at once (the
    task that sent the signal holds it a minute); the run that finishes has the local run's
    bytes."""
    points = [p for p in SIGNAL_POINTS if full_matrix() or p[2] in SIGNAL_SAMPLE]
    assert len(points) >= (13 if full_matrix() else 3)

    def stopped_at_once(point: str, took: float) -> None:
        assert took < 45, f"{point}: the stop waited for the held task ({took:.0f} s)"
        assert no_job_left(engine), f"{point}: the stopped run's job still runs"

    out = tmp_path / "out"
    stop_again_and_again(chain_images, out, tmp_path / "c.yaml", {"name": "spark"}, points,
                         stopped_at_once)
    assert engine_of(out) == "spark"
    check_the_same_as_an_unbroken_run(out, chain_clean)


def sleeps(x: int) -> int:
    time.sleep(60)
    return x


def test_a_stop_while_the_driver_asks_spark_takes_effect_once_the_answer_is_in(
        engine: SparkEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM arrives while the driver waits for a Py4J call's answer (a status call that
    takes a second): the map stops once the answer is in, its job cancelled, and later calls
    get their own answers. Cut in the middle, the call left its answer on the connection, to
    be read as the next call's (cancelJobGroup's, then every later one's)."""
    from pipeline.interrupts import Interrupted, stop_on_signals

    real = SparkEngine._finished_tasks

    def slow(self: SparkEngine, group: str) -> int:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        self.context._jvm.java.lang.Thread.sleep(1000)  # a busy driver JVM
        return real(self, group)

    monkeypatch.setattr(SparkEngine, "_finished_tasks", slow)
    started = time.monotonic()
    with pytest.raises(Interrupted, match="stopped by SIGTERM"), stop_on_signals():
        list(engine.map(sleeps, [1, 2], desc="t"))
    assert time.monotonic() - started < 45, "the stop waited for the tasks"
    monkeypatch.undo()
    assert no_job_left(engine), "the stopped map's job still runs"
    assert engine.run_one(square, 7) == 49
    assert engine.context._jvm.java.lang.Math.abs(-3) == 3
