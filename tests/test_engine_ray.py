"""The Ray engine (a real local Ray instance, 2 CPUs): ordered maps, per-worker setup, and
runs whose outputs equal the local engine's byte for byte."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray_head import ray_head, ray_node
from same_bytes import assert_same_run
from tie_data import settings
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import validate_config
from pipeline.engines.base import Resources
from pipeline.engines.local import LocalEngine
from pipeline.errors import ConceptpruneError
from pipeline.runner import run

ray = pytest.importorskip("ray")
from pipeline.engines.ray_engine import RayEngine  # noqa: E402


@pytest.fixture(scope="module")
def engine() -> Iterator[RayEngine]:
    # Ray puts unix sockets in its session folder: the path must stay short
    temp = tempfile.mkdtemp(prefix="cp-ray-", dir="/tmp")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    eng = RayEngine(num_cpus=2, object_store_gb=0.25, temp_dir=temp, progress=False)
    yield eng
    eng.close()
    shutil.rmtree(temp, ignore_errors=True)


def square(x: int) -> int:
    return x * x


def pid_and_square(state: int, x: int) -> tuple[int, int]:
    return state, x * x


def test_map_keeps_task_order_and_runs_setup_once_per_worker(engine: RayEngine) -> None:
    assert list(engine.map(square, range(40), desc="sq")) == [x * x for x in range(40)]
    out = list(engine.map(pid_and_square, range(40), desc="sq", setup=os.getpid,
                          resources=Resources(cpus=0.5)))
    assert [sq for _, sq in out] == [x * x for x in range(40)]
    assert os.getpid() not in {pid for pid, _ in out}, "ran in worker processes"
    assert len({pid for pid, _ in out}) <= 4, "one actor per half CPU at most"
    assert engine.run_one(square, 7) == 49
    local = LocalEngine(progress=False)
    assert list(local.map(pid_and_square, range(5), desc="sq", setup=os.getpid)) == \
        [(os.getpid(), x * x) for x in range(5)]


def test_a_failing_task_names_its_error(engine: RayEngine) -> None:
    """A bug in a task: its worker's traceback, without the colour codes Ray adds."""
    with pytest.raises(RuntimeError, match="div: a task failed on a Ray worker") as caught:
        list(engine.map(lambda x: 1 // x, [3, 2, 0, 1], desc="div"))
    assert "ZeroDivisionError" in str(caught.value) and "\x1b[" not in str(caught.value)


def write_later(folder: str, index: int) -> int:
    """A task that writes its file a while after it started (unless it is the first)."""
    if index:
        time.sleep(1.5)
    Path(folder, f"{index}.done").write_text("late")
    return index


def test_cancel_stops_the_tasks_of_a_map_no_one_reads_any_more(engine: RayEngine,
                                                               tmp_path: Path) -> None:
    """A run that stops (a signal, an error) while tasks are in flight cancels them before
    it cleans up: once ``cancel`` returns, none of them writes."""
    results = engine.map(partial(write_later, str(tmp_path)), range(4), desc="late")
    assert next(results) == 0  # the caller stops reading here; the others are running
    engine.cancel()
    time.sleep(2.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.done"]
    assert list(engine.map(square, range(3), desc="sq")) == [0, 1, 4]  # still usable


def disk_full(path: str) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", path)


def wrong_setting(_: int) -> None:
    raise ConceptpruneError("dbp.k is larger than the samples: lower dbp.k")


def test_a_final_error_in_a_task_arrives_as_itself(engine: RayEngine) -> None:
    """A full disk or a user's error arrives as the one-line error it was, naming its
    file and its worker, as on the local engine."""
    with pytest.raises(OSError, match=r"No space left on device \(on worker ") as caught:
        list(engine.map(disk_full, ["/data/x.npy"], desc="w"))
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, "/data/x.npy")
    with pytest.raises(ConceptpruneError, match="^dbp.k is larger than the samples"):
        list(engine.map(wrong_setting, [1], desc="w"))


@pytest.fixture(scope="module")
def data(tie_input: Path) -> Path:
    """20,000 x 64 with exact copies, near-ties at 1 - eps and rows between two centroids of
    either fit (``tie_data``): any decision left to a kernel's rounding would show."""
    return tie_input


@pytest.fixture(scope="module")
def local(tie_local: Path) -> Path:
    """The local engine's run of the data, which every Ray run must equal."""
    return tie_local


RUN_KEYS = ("engine", "timings_s", "parameters", "command")  # the report's words on the run


def engine_of(out: Path) -> str:
    return json.loads((out / "report" / "report.json").read_text())["engine"]


def assert_same_outputs(got: Path, want: Path) -> None:
    """got's subset.npy and ledger files hold want's bytes, and its report.json is want's but
    for RUN_KEYS; a difference fails with a short message naming the first ones."""
    assert_same_run(got, want, parts=("subset.npy", "ledger", "report"),
                    report_ignore=RUN_KEYS)


def test_ray_and_local_give_the_same_bytes(engine: RayEngine, data: Path, local: Path,
                                           tmp_path: Path) -> None:
    # cut into other buckets on ray: many tasks per step, and the plan changes nothing
    run(validate_config({**settings(data, tmp_path / "ray"), "engine": {"bucket_rows": 2500}}),
        engine=engine)
    assert (engine_of(local), engine_of(tmp_path / "ray")) == ("local", "ray")
    assert_same_outputs(tmp_path / "ray", local)
    for step, buckets in (("semdedup", 1), ("dbp", 1)):
        for out, want in ((local, buckets), (tmp_path / "ray", None)):
            marker = out / "_work" / "markers" / f"{step}.json"
            got = json.loads(marker.read_text())["stats"]["extra"]["buckets"]
            assert got == want if want else got >= 4, (step, out, got)
    # streamed from the work folder on the workers, not from this process's cache
    run(validate_config({**settings(data, tmp_path / "ray2"), "vector_cache_gb": 0}),
        engine=engine)
    assert_same_outputs(tmp_path / "ray2", local)


def test_cli_engine_option(engine: RayEngine, data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(settings(data, tmp_path / "out")))
    result = CliRunner().invoke(app, ["run", str(cfg), "--engine", "ray", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["engine"] == "ray"
    assert report["parameters"]["engine"]["name"] == "ray"
    assert ray.is_initialized(), "an engine that joined a running Ray leaves it running"
    bad = CliRunner().invoke(app, ["run", str(cfg), "--engine", "dask"])
    assert bad.exit_code == 2 and "engine.name" in bad.output


def run_with_a_worker_killed(cfg: Path, sentinel: Path, *settings: str
                             ) -> subprocess.CompletedProcess:
    """The CLI on its own Ray instance whose workers load tests/engine_fault/sitecustomize.py:
    the first worker to deduplicate a cluster SIGKILLs itself."""
    temp = tempfile.mkdtemp(prefix="cp-ray-", dir="/tmp")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo / "tests" / "engine_fault"),
           "CONCEPTPRUNE_TEST_KILL_ONCE": str(sentinel)}
    args = ["engine.num_cpus=2", f"engine.temp_dir={temp}", "engine.object_store_gb=0.25",
            *settings]
    try:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--engine", "ray",
             "--no-progress", *[a for s in args for a in ("--set", s)]],
            cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_a_killed_worker_is_replaced_and_the_result_holds(data: Path, local: Path,
                                                          tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(settings(data, tmp_path / "ray")))
    sentinel = tmp_path / "killed-pid"
    proc = run_with_a_worker_killed(cfg, sentinel)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sentinel.exists(), "no worker was killed"
    assert (engine_of(local), engine_of(tmp_path / "ray")) == ("local", "ray")
    assert_same_outputs(tmp_path / "ray", local)


def test_a_worker_lost_for_good_is_a_clear_error(data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(settings(data, tmp_path / "ray")))
    proc = run_with_a_worker_killed(cfg, tmp_path / "killed-pid", "engine.max_retries=0")
    assert proc.returncode == 1
    assert "semdedup: clusters: a Ray worker died" in proc.stderr
    assert "engine.max_retries" in proc.stderr and "Traceback" not in proc.stderr


def test_image_run_on_ray_gives_the_local_bytes(engine: RayEngine, tmp_path: Path) -> None:
    from test_resume_images import assert_same_result, raw_config

    from pipeline.synth.images import synth_images

    data = synth_images(tmp_path / "data", 600, seed=4, samples_per_shard=100, concepts=5)

    def raw(out: Path) -> dict[str, Any]:  # CLIP's own image vectors cluster: a quick model
        cfg = raw_config(data, out, k=5)
        cfg["embed"].update(cluster_model=None, cluster_weights=None)
        cfg["semdedup"].update(k=4, eps=0.0002)  # random weights: look-alikes everywhere
        cfg["write"]["max_count"] = 70  # output shards that span input shards,
        cfg["write"]["shards_per_task"] = 1  # written by several tasks
        return cfg

    run(validate_config(raw(tmp_path / "local")))
    run(validate_config(raw(tmp_path / "ray")), engine=engine)
    report = json.loads((tmp_path / "ray" / "report" / "report.json").read_text())
    assert report["embed"]["shards"] == 6
    assert report["output_shards"]["count"] >= 4  # and at least 2 runs of input shards
    assert_same_result(tmp_path / "ray", tmp_path / "local")  # ledger, shards, subset


# three pools of a RayEngine joined to a cluster of two 2-CPU nodes: how many of each pool's
# 4 actors run on each node (a pool's first tasks go to its actors one each)
POOL_NODES = """
import collections, sys
import ray
from pipeline.engines.ray_engine import RayEngine

def node(_):
    return ray.get_runtime_context().get_node_id()

engine = RayEngine(address=sys.argv[1], progress=False)
for _ in range(3):
    nodes = collections.Counter(engine.map(node, range(4), desc="where"))
    print("pool:", "+".join(str(n) for n in sorted(nodes.values())))
    engine.cancel()
engine.close()
"""


def test_a_cluster_started_apart_and_a_node_lost(data: Path, local: Path, tmp_path: Path
                                                 ) -> None:
    """`ray start --head` and a second node (`ray start --address`): a joined engine's pools
    are spread over both. Then a run (its own process) joining them by engine.address: the
    second node is lost as a whole (its raylet,
    object store and workers SIGKILLed) once one of its workers has finished two of
    semdedup's buckets, the others in flight; the run finishes on the head with the local
    bytes. Then `ray job submit` of jobs/ray_job.py to the head's job server. Both were
    started in process groups of their own: stopping them touches no other Ray."""
    ray_bin = Path(sys.executable).with_name("ray")
    repo = Path(__file__).resolve().parents[1]
    sentinel = tmp_path / "node-killed"
    fault = {"PYTHONPATH": str(repo / "tests" / "engine_fault"),
             "CONCEPTPRUNE_TEST_KILL_NODE": f"{sentinel}:semdedup/bucket:2"}
    with ray_head(dashboard=True) as head, ray_node(head, env=fault) as node:
        Path(f"{sentinel}.pgid").write_text(str(node.pgid))
        port, dashboard, env = head.port, head.dashboard, head.env
        spread = subprocess.run([sys.executable, "-c", POOL_NODES, f"127.0.0.1:{port}"],
                                env=env, capture_output=True, text=True, timeout=120, cwd=repo)
        assert spread.returncode == 0, spread.stderr[-3000:]
        pools = [line for line in spread.stdout.splitlines() if line.startswith("pool:")]
        assert pools == ["pool: 2+2"] * 3, spread.stdout[-3000:]  # half on either node
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(settings(data, tmp_path / "joined")))
        proc = subprocess.run(
            [sys.executable, "jobs/ray_job.py", str(cfg),  # the entry point of a Ray job
             "--no-progress", "--set", f"engine.address=127.0.0.1:{port}",
             "--set", "engine.bucket_rows=700"],
            env=env, capture_output=True, text=True, timeout=300, cwd=repo)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sentinel.exists(), "the second node was never lost"
        assert node.process.wait(timeout=60) != 0  # it is gone
        markers = sorted((tmp_path / "joined" / "_work" / "markers" / "semdedup").glob(
            "bucket-*.json"))
        assert len(markers) > 2  # buckets were left when the node was lost
        cfg.write_text(yaml.safe_dump(settings(data, tmp_path / "submitted")))
        for _ in range(30):  # the job agent comes up some seconds after the dashboard
            job = subprocess.run(
                [str(ray_bin), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
                 "--", sys.executable, str(repo / "jobs" / "ray_job.py"), str(cfg),
                 "--no-progress"],
                env=env, capture_output=True, text=True, timeout=300, cwd=repo)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout
    assert engine_of(local) == "local"
    for name in ("joined", "submitted"):
        assert engine_of(tmp_path / name) == "ray", name
        assert_same_outputs(tmp_path / name, local)


def test_a_pool_takes_from_each_node_what_its_own_cpus_and_gpus_hold() -> None:
    from pipeline.engines.base import Resources
    from pipeline.engines.ray_engine import pool_nodes

    nodes = [{"NodeID": "a", "Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
             {"NodeID": "gone", "Alive": False, "Resources": {"CPU": 8.0}},
             {"NodeID": "b", "Alive": True, "Resources": {"CPU": 2.0}},
             {"NodeID": "head", "Alive": True, "Resources": {"memory": 1e9}}]
    assert pool_nodes(nodes, Resources(), None) == ["a", "b", "a", "b", "a", "a"]
    assert pool_nodes(nodes, Resources(), 2) == ["a", "b", "a"]
    assert pool_nodes(nodes, Resources(cpus=0.5), 4) == ["a", "b", "a"]
    assert pool_nodes(nodes, Resources(gpus=0.5), None) == ["a", "a"]
    assert pool_nodes(nodes, Resources(cpus=8), None) == ["a"]  # none holds one: the most


def kernel_threads(_: int) -> tuple[int, int]:
    import faiss
    from threadpoolctl import threadpool_info

    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return faiss.omp_get_max_threads(), min(blas)


@pytest.mark.parametrize("threads", [1, 3])
def test_engine_threads_pin_the_kernels_of_every_worker(engine: RayEngine, threads: int
                                                        ) -> None:
    """The floats of faiss and BLAS depend on their thread count: engine.threads sets it in
    this process on local (and puts it back at close) and in every worker on ray."""
    from pipeline.engines.local import LocalEngine

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    before = kernel_threads(0)
    local = LocalEngine(progress=False, threads=threads)
    assert list(local.map(kernel_threads, [0, 1], desc="t")) == [(threads, threads)] * 2
    local.close()
    assert kernel_threads(0) == before
    joined = RayEngine(progress=False, threads=threads)  # joins the running instance
    try:
        assert set(joined.map(kernel_threads, range(4), desc="t")) == {(threads, threads)}
    finally:
        joined.close()


def test_a_task_whose_actor_is_unavailable_runs_again(engine: RayEngine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A node lost: its actors are unreachable while Ray restarts them elsewhere, and Ray
    does not retry the task then (ActorUnavailableError, seen in CI); the engine runs it
    again, up to engine.max_retries times, and then says a worker died."""
    from pipeline.engines.base import EngineError
    from pipeline.progress import NO_PROGRESS

    monkeypatch.setattr("pipeline.engines.ray_engine.time.sleep", lambda _: None)
    unavailable = ray.exceptions.ActorUnavailableError("node lost", b"\0" * 16)

    class Pool:
        def get_next(self) -> Any:  # noqa: ANN401
            raise unavailable

    tries: list[int] = []

    def again(task: int) -> int:
        tries.append(task)
        if len(tries) < 2:
            raise unavailable
        return task * 10

    assert engine._next(Pool(), "t", NO_PROGRESS, 7, again) == 70 and tries == [7, 7]

    def never(task: int) -> int:
        raise unavailable

    with pytest.raises(EngineError, match="a Ray worker died"):
        engine._next(Pool(), "t", NO_PROGRESS, 7, never)
