"""The spark engine: every map is an RDD of task descriptors, one partition per task.

Results are collected in task order. A ``setup`` runs once per Python worker process (Spark
reuses them between tasks) and is kept until the next map's. Tasks that need a GPU run under
a stage-level resource profile, and the GPU Spark assigned to the task is handed to torch and
faiss by its index (``pipeline.engines.gpu``). Spark's own task retries
(``spark.task.maxFailures``; ``local[N,F]`` in local mode) rerun a failed task, whose unit
writes the same bytes again.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from pipeline.engines.base import DEFAULT, EngineError, Resources, map_progress
from pipeline.engines.task_errors import result_of, run_task
from pipeline.interrupts import STOPS, deferred
from pipeline.progress import NO_PROGRESS, Meter

T = TypeVar("T")
R = TypeVar("R")

_WORKER: dict[str, Any] = {}  # per Python worker process: the latest map's setup state
POLL_S = 1.0  # how often a map asks Spark how many of its tasks finished


def _run_partition(token: str, setup: Callable[[], Any] | None, fn: Callable[..., Any],
                   threads: int | None, items: Iterable[tuple[int, Any]]
                   ) -> Iterator[tuple[int, Any]]:
    from pyspark import TaskContext

    from pipeline.engines.gpu import set_task_gpu

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    gpu = int(gpus.addresses[0]) if gpus is not None and gpus.addresses else None
    set_task_gpu(gpu)  # handed to torch and faiss by index: CUDA was maybe set up already
    if threads is not None and _WORKER.get("threads") != threads:
        from pipeline.engines.base import pin_kernel_threads

        pin_kernel_threads(threads)
        _WORKER["threads"] = threads
    # the state (models on a GPU, say) is this map's and this GPU's
    if setup is not None and _WORKER.get("key") != (token, gpu):
        _WORKER.pop("state", None)  # free the last state first
        _WORKER["state"], _WORKER["key"] = setup(), (token, gpu)
    for index, task in items:  # a final error comes back as a result: Spark retries no such
        yield index, (run_task(fn, _WORKER["state"], task) if setup is not None else
                      run_task(fn, task))


def _python_error(err: Exception) -> str:
    """The exception line of the Python traceback inside a Spark error (the last one of a
    chain), or the error's first line."""
    lines = str(err).splitlines()
    marker = "Traceback (most recent call last):"
    start = next((i for i, line in enumerate(lines) if marker in line), None)
    if start is None:
        return lines[0][:500] if lines else type(err).__name__
    found = None
    for line in lines[start + 1 :]:
        if line.startswith("\tat "):  # the JVM's stack: the Python part is over
            break
        if line.strip() and not line[0].isspace() and not line.startswith(
                ("Traceback", "During handling", "The above exception")):
            found = line.strip()
    return (found or lines[0])[:500]


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
        """Joins the Spark context running in this process (the one ``spark-submit``'s job
        made), or starts one with ``master`` (default ``local[*]``) and ``conf``. ``threads``
        pins every worker's numeric kernels.

        Every map is an RDD, so Spark's core is all this needs: a context started here has
        no SQL session, which would add 1.7 s to every start and serve no map.
        """
        from pyspark import SparkConf, SparkContext

        logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines say nothing to users
        self.progress = progress
        self._tokens = itertools.count()
        self._started = SparkContext._active_spark_context is None
        if self._started:
            # Python workers of a context made here run this interpreter (its packages)
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
            settings = SparkConf().setAppName(app_name)
            settings.setMaster(with_retries(master or "local[*]", max_retries))
            settings.set("spark.task.maxFailures", str(max_retries + 1))
            settings.setAll([*self._worker_env(threads).items(), *(conf or {}).items()])
            self.context = SparkContext.getOrCreate(settings)
            self.context.setLogLevel("ERROR")
        else:
            self.context = SparkContext.getOrCreate()
        self.local = self.context.master.startswith("local")
        self.threads = threads
        self._running: dict[str, threading.Thread] = {}  # job group -> its collecting thread

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
            setup: Callable[[], Any] | None = None, concurrent: bool = False,
            progress: Meter | None = None) -> Iterator[R]:
        items = list(enumerate(tasks))
        if not items:
            return
        token = f"{os.getpid()}-{next(self._tokens)}"
        with deferred():  # Py4J calls: a stop waits for their answers (see _collect)
            rdd = self.context.parallelize(items, numSlices=len(items))
            if resources.gpus and not self.local:  # stage-level scheduling needs a cluster
                rdd = rdd.withResources(self._profile(resources))
        threads = self.threads
        job = rdd.mapPartitions(
            lambda part: _run_partition(token, setup, fn, threads, part))
        with map_progress(progress, self.progress, desc, total, unit) as meter:
            try:
                results = dict(self._collect(job, token, desc, meter, len(items)))
            except Exception as err:  # a Py4J error holding the worker's traceback
                raise EngineError(
                    f"{desc}: a Spark task failed, retries included (engine.max_retries, "
                    f"spark.task.maxFailures): {_python_error(err)}"
                ) from err
        for index in range(len(items)):
            yield result_of(results[index])

    def _finished_tasks(self, group: str) -> int:
        """How many tasks of the job group's stages have finished, as Spark reports them."""
        tracker = self.context.statusTracker()
        done = 0
        for job in tracker.getJobIdsForGroup(group):
            info = tracker.getJobInfo(job)
            for stage in info.stageIds if info is not None else ():
                got = tracker.getStageInfo(stage)
                done += got.numCompletedTasks if got is not None else 0
        return done

    def _collect(self, job: Any, token: str, desc: str, meter: Meter,  # noqa: ANN401
                 tasks: int) -> list[Any]:
        """``job.collect()`` in a thread of its own, in a job group: a stop (SIGTERM,
        Ctrl-C) reaches this, the main, thread at once, which cancels the job's tasks on the
        executors instead of leaving them running (and a Py4J call cut in the middle).
        While it waits, ``meter`` follows the tasks Spark reports finished; a stop that
        arrives while this thread asks Spark (a Py4J call) takes effect once the answer is
        read: cut in the middle, the call would leave its answer on the thread's Py4J
        connection, to be read as the answer of the next call (``cancelJobGroup``'s, then
        every later one's)."""
        done: Future[list[Any]] = Future()

        def collect() -> None:
            try:
                self.context.setJobGroup(token, desc, interruptOnCancel=True)
                done.set_result(job.collect())
            except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
                done.set_exception(err)

        thread = threading.Thread(target=collect, name=f"spark {desc}", daemon=True)
        self._running[token] = thread
        thread.start()
        counted = 0
        try:
            while True:
                try:
                    results = done.result(timeout=POLL_S)
                    break
                except TimeoutError:
                    with deferred():
                        finished = min(self._finished_tasks(token), tasks)
                    if finished > counted:
                        meter.advance(finished - counted)
                        counted = finished
            meter.advance(tasks - counted)
            return results
        except STOPS:
            self.cancel()
            raise
        finally:
            self._running.pop(token, None)

    def cancel(self) -> None:
        """Cancel the jobs of maps in flight and wait for their tasks to stop."""
        for token, thread in list(self._running.items()):
            self.context.cancelJobGroup(token)
            thread.join(timeout=60)
        self._running.clear()

    def run_one(self, fn: Callable[[T], R], task: T, *, resources: Resources = DEFAULT) -> R:
        return next(iter(self.map(fn, [task], desc="run_one", resources=resources,
                                  progress=NO_PROGRESS)))

    def close(self) -> None:
        self.cancel()
        if self._started:
            self.context.stop()
            self._started = False
