"""A Spark standalone cluster on this machine, started with pyspark's own launcher
(`spark-class` of the Master and Worker daemons), as a user's cluster would be: a master and
workers in process groups of their own, so a test can lose one worker node whole (the worker
JVM, its executor JVM and the executor's Python workers) and stop the rest cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyspark
from ray_head import free_ports, stop_group


@dataclass(frozen=True)
class SparkCluster:
    master: str  # spark://127.0.0.1:PORT
    workers: list[subprocess.Popen]  # each the leader of its own process group


def _alive_workers(ui_port: int) -> int:
    """Workers the master counts alive; 0 while its web UI is not up, or is up but still
    answers /json/ with its HTML page (seen once on a clean clone, as the master started)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except (OSError, ValueError):  # ValueError: JSONDecodeError, an HTML page
        return 0


@contextmanager
def spark_standalone(worker_envs: list[dict[str, str]], cores: int = 2,
                     env: dict[str, str] | None = None) -> Iterator[SparkCluster]:
    """A master and one worker per entry of ``worker_envs`` (added to that worker's
    environment, which its executors and their Python workers inherit), each worker
    offering ``cores`` cores and 2 GiB."""
    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    base = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **(env or {})}
    temp = tempfile.mkdtemp(prefix="cp-spark-", dir="/tmp")
    port, ui, *worker_ports = free_ports(2 + 2 * len(worker_envs))
    started: list[subprocess.Popen] = []

    def start(args: list[str], extra: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen([str(spark_class), *args], env={**base, **extra},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, cwd=temp)
        started.append(proc)
        return proc

    try:
        start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
               str(port), "--webui-port", str(ui)], {})
        workers = [
            start(["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port",
                   str(worker_ports[2 * i]), "--webui-port", str(worker_ports[2 * i + 1]),
                   "--cores", str(cores), "--memory", "2g", "--work-dir",
                   f"{temp}/worker-{i}", f"spark://127.0.0.1:{port}"], extra)
            for i, extra in enumerate(worker_envs)]
        deadline = time.monotonic() + 120
        while _alive_workers(ui) < len(workers):
            assert all(p.poll() is None for p in started), "a Spark daemon did not start"
            assert time.monotonic() < deadline, "the Spark workers never registered"
            time.sleep(0.5)
        yield SparkCluster(f"spark://127.0.0.1:{port}", workers)
    finally:
        for proc in reversed(started):
            stop_group(proc, wait_s=30)
        shutil.rmtree(temp, ignore_errors=True)
