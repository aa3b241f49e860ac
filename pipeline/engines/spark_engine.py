"""The spark engine: every map is an RDD of task descriptors, one partition per task.

Results are collected in task order. A ``setup`` runs once per Python worker process (Spark
reuses them between tasks) and is kept until the next map's. Tasks that need a GPU run under
a stage-level resource profile, and the GPU Spark assigned to the task is the only one the
task sees. Spark's own task retries (``spark.task.maxFailures``; ``local[N,F]`` in local
mode) rerun a failed task, whose unit writes the same bytes again.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from pipeline.engines.base import DEFAULT, EngineError, Resources, progress_bar

T = TypeVar("T")
R = TypeVar("R")

_WORKER: dict[str, Any] = {}  # per Python worker process: the latest map's setup state


def _run_partition(token: str, setup: Callable[[], Any] | None, fn: Callable[..., Any],
                   threads: int | None, items: Iterable[tuple[int, Any]]
                   ) -> Iterator[tuple[int, Any]]:
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    if gpus is not None and gpus.addresses:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses)
    if threads is not None and _WORKER.get("threads") != threads:
        from pipeline.engines.base import pin_kernel_threads

        pin_kernel_threads(threads)
        _WORKER["threads"] = threads
    if setup is not None and _WORKER.get("token") != token:
        _WORKER.pop("state", None)  # free the last map's state first
        _WORKER["state"], _WORKER["token"] = setup(), token
    for index, task in items:
        yield index, fn(_WORKER["state"], task) if setup is not None else fn(task)


def _python_error(err: Exception) -> str:
    """The last line of the Python traceback inside a Spark error, or its first line."""
    lines = str(err).splitlines()
    if "Traceback (most recent call last):" in lines:
        start = lines.index("Traceback (most recent call last):")
        tail = [line for line in lines[start:] if line.strip()]
        body = [line for line in tail if not line.startswith(("\tat ", "\t", "  "))]
        for line in reversed(body):
            if ":" in line and not line.startswith(("Traceback", "Driver stacktrace")):
                return line.strip()[:500]
    return lines[0][:500] if lines else type(err).__name__


def with_retries(master: str, retries: int) -> str:
    """``local[N]`` as ``local[N,F]``: local mode retries a failed task only when told to."""
    if master.startswith("local") and "," not in master:
        threads = master[len("local[") : -1] if master.startswith("local[") else "1"
        return f"local[{threads},{retries + 1}]"
    return master


class SparkEngine:
    name = "spark"

    def __init__(self, master: str | None = None, app_name: str = "conceptprune",
                 conf: dict[str, str] | None = None, progress: bool = True,
                 threads: int | None = None, max_retries: int = 3) -> None:
        """Joins the session ``spark-submit`` made, or makes one with ``master`` (default
        ``local[*]``) and ``conf``. ``threads`` pins every worker's numeric kernels."""
        from pyspark.sql import SparkSession

        logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines say nothing to users
        self.progress = progress
        self._tokens = itertools.count()
        active = SparkSession.getActiveSession()
        self._started = active is None
        if active is not None:
            self.session = active
        else:
            # Python workers of a session made here run this interpreter (its packages)
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
            builder = SparkSession.builder.appName(app_name)
            builder = builder.master(with_retries(master or "local[*]", max_retries))
            builder = builder.config("spark.task.maxFailures", str(max_retries + 1))
            for key, value in self._worker_env(threads).items():
                builder = builder.config(key, value)
            for key, value in (conf or {}).items():
                builder = builder.config(key, value)
            self.session = builder.getOrCreate()
            self.session.sparkContext.setLogLevel("ERROR")
        self.context = self.session.sparkContext
        self.local = self.context.master.startswith("local")
        self.threads = threads

    @staticmethod
    def _worker_env(threads: int | None) -> dict[str, str]:
        """Python workers import this very ``pipeline`` and, like the local engine, run
        numeric kernels on this machine's thread count (faiss and BLAS round differently
        with another)."""
        import pipeline

        root = str(Path(pipeline.__file__).resolve().parents[1])
        paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        count = str(threads) if threads else \
            os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 1)
        # a task's kernels use `count` cores: claim them, or concurrent tasks fight over
        # the cores (two tasks of two BLAS threads on two cores ran at half speed)
        return {"spark.executorEnv.PYTHONPATH": os.pathsep.join(paths),
                "spark.executorEnv.OMP_NUM_THREADS": count,
                "spark.task.cpus": count,
                "spark.ui.showConsoleProgress": "false"}

    def _profile(self, resources: Resources) -> Any:  # noqa: ANN401
        from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

        requests = TaskResourceRequests().cpus(max(1, int(resources.cpus)))
        requests = requests.resource("gpu", resources.gpus)
        return ResourceProfileBuilder().require(requests).build

    def map(self, fn: Callable[..., R], tasks: Iterable[Any], *, desc: str,
            total: int | None = None, unit: str = "task", resources: Resources = DEFAULT,
            setup: Callable[[], Any] | None = None, concurrent: bool = False
            ) -> Iterator[R]:
        items = list(enumerate(tasks))
        if not items:
            return
        token = f"{os.getpid()}-{next(self._tokens)}"
        rdd = self.context.parallelize(items, numSlices=len(items))
        if resources.gpus and not self.local:  # stage-level scheduling needs a cluster
            rdd = rdd.withResources(self._profile(resources))
        threads = self.threads
        job = rdd.mapPartitions(
            lambda part: _run_partition(token, setup, fn, threads, part))
        with progress_bar(desc, total, unit, self.progress) as bar:
            try:
                results = dict(job.collect())
            except Exception as err:  # a Py4J error holding the worker's traceback
                raise EngineError(
                    f"{desc}: a Spark task failed, retries included (engine.max_retries, "
                    f"spark.task.maxFailures): {_python_error(err)}"
                ) from err
            bar.update(len(items))
        for index in range(len(items)):
            yield results[index]

    def run_one(self, fn: Callable[[T], R], task: T, *, resources: Resources = DEFAULT) -> R:
        return next(iter(self.map(fn, [task], desc="run_one", resources=resources)))

    def bar(self, desc: str, total: int, unit: str = "it") -> tqdm:
        return progress_bar(desc, total, unit, self.progress, scale=True)

    def close(self) -> None:
        if self._started:
            self.session.stop()
            self._started = False
