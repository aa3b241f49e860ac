"""The Ray engine: every map runs on a pool of Ray actors kept for the whole run, retried on
a restarted actor when a worker is lost; results come back in task order.

Tasks are small descriptors and results small summaries: the data stays in the work folder,
which every worker must see (a shared filesystem, or one machine). At most two tasks per
actor are in flight, so the driver never holds many results at once. Actors live as long as the
engine, so a worker imports the libraries once, and a map's ``setup`` (open the vector store,
load a model) runs once per actor and map, not once per task.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pipeline.engines.base import DEFAULT, EngineError, Resources, map_progress
from pipeline.engines.task_errors import plain, result_of, run_task
from pipeline.interrupts import STOPS
from pipeline.progress import NO_PROGRESS, Meter

T = TypeVar("T")
R = TypeVar("R")

# Ray's own defaults phone home and ask for a token; neither is wanted in a batch job.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _same_code_env(threads: int | None) -> dict[str, Any]:
    """Workers of an instance started here import this very ``pipeline`` (a checkout run in
    place, not only an installed copy) and run numeric kernels on as many threads as this
    process does."""
    import pipeline

    root = str(Path(pipeline.__file__).resolve().parents[1])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    # Ray gives each worker one OpenMP/BLAS thread; faiss and BLAS round differently with
    # another thread count, so workers on this machine use the local engine's count
    count = str(threads) if threads else \
        os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 1)
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": count}}


class _Worker:
    """An actor running tasks; it keeps the state of the latest map's ``setup``."""

    def __init__(self, threads: int | None = None) -> None:
        self.token: int | None = None
        self.state: Any = None
        if threads is not None:
            from pipeline.engines.base import pin_kernel_threads

            pin_kernel_threads(threads)

    def ping(self) -> None:
        """Answers while the actor lives (``RayEngine._kill_pools`` waits on it)."""

    def run(self, token: int, setup: Callable[[], Any] | None, fn: Callable[..., R],
            task: Any) -> R:
        if setup is None:
            return run_task(fn, task)
        if token != self.token:
            self.state, self.token = None, None  # free the last map's state first
            self.state, self.token = setup(), token
        return run_task(fn, self.state, task)


def pool_nodes(nodes: list[dict[str, Any]], resources: Resources, threads: int | None
               ) -> list[str]:
    """The node of each actor of a pool for tasks needing ``resources``: as many on each live
    node as its own CPUs hold (each actor's kernels run on ``threads`` threads: more actors
    would only make the threads fight over the cores) and its GPUs allow, taken from the
    nodes in turn, so that a pool's first tasks reach every node. Holding no CPU, an actor
    leaves its node looking idle, and Ray's own placement may put a whole pool on one node."""
    per_node: list[list[str]] = []
    for node in nodes:
        have = node.get("Resources", {})
        if not node.get("Alive") or not have.get("CPU"):
            continue
        size = int(have["CPU"] / max(resources.cpus, 0.01) / (threads or 1))
        if resources.gpus:
            size = min(size, int(have.get("GPU", 0) / resources.gpus))
        per_node.append([node["NodeID"]] * size)
    order = [node for turn in itertools.zip_longest(*per_node) for node in turn if node]
    if not order:  # no node holds a whole actor: one, on the node with the most CPUs
        live = [n for n in nodes if n.get("Alive")]
        order = [max(live, key=lambda n: n.get("Resources", {}).get("CPU", 0))["NodeID"]]
    return order


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 object_store_gb: float | None = None, temp_dir: str | Path | None = None,
                 max_retries: int = 3, progress: bool = True, threads: int | None = None
                 ) -> None:
        """``threads`` pins every worker's numeric kernels (also on a cluster joined by
        ``address``, where Ray's default is one thread per worker)."""
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        import ray
        from ray.util import ActorPool

        self._ray, self._actor_pool = ray, ActorPool
        self.progress = progress
        self.max_retries = max_retries
        self.threads = threads
        self._started = False
        self._pools: dict[Resources, list[Any]] = {}
        self._tokens = itertools.count()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "configure_logging": False}
            if address:
                env = {"env_vars": {"OMP_NUM_THREADS": str(threads)}} if threads else None
                ray.init(address=address, runtime_env=env, **kwargs)
            else:
                if object_store_gb:
                    kwargs["object_store_memory"] = int(object_store_gb * 2**30)
                if temp_dir:
                    Path(temp_dir).mkdir(parents=True, exist_ok=True)
                    kwargs["_temp_dir"] = str(Path(temp_dir).resolve())
                env = _same_code_env(threads)
                ray.init(num_cpus=num_cpus, runtime_env=env, **kwargs)
                self.threads = int(env["env_vars"]["OMP_NUM_THREADS"])
            self._started = True

    def _pool(self, resources: Resources) -> list[Any]:
        """The actors for tasks of this shape, started on first use and kept until a map
        of another shape comes."""
        actors = self._pools.get(resources)
        if actors is None:
            # actors hold their CPUs and GPUs while they live: a pool of another shape must
            # go first, or the new one might wait for resources forever
            self._kill_pools()
            # CPUs are not held: an actor without num_cpus needs a CPU to be placed and
            # none while it lives, so pools of two engines in one cluster never wait on
            # each other; the pool's size is what spreads the work over the CPUs
            opts: dict[str, Any] = {"max_restarts": self.max_retries,
                                    "max_task_retries": self.max_retries}
            if resources.gpus:
                opts["num_gpus"] = resources.gpus
            if resources.memory_gb:
                opts["memory"] = int(resources.memory_gb * 2**30)
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            worker = self._ray.remote(_Worker)
            # soft: an actor restarted after its node was lost may go to another node
            actors = [worker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                          node, soft=True), **opts).remote(self.threads)
                      for node in pool_nodes(self._ray.nodes(), resources, self.threads)]
            self._pools[resources] = actors
        return actors

    def map(self, fn: Callable[..., R], tasks: Iterable[Any], *, desc: str,
            total: int | None = None, unit: str = "task", resources: Resources = DEFAULT,
            setup: Callable[[], Any] | None = None, concurrent: bool = False,
            progress: Meter | None = None) -> Iterator[R]:
        ray = self._ray
        actors = self._pool(resources)
        pool = self._actor_pool(actors)
        token = next(self._tokens)
        setup_ref = ray.put(setup) if setup is not None else None
        fn_ref = ray.put(fn)

        def call(actor: Any, task: Any) -> Any:
            return actor.run.remote(token, setup_ref, fn_ref, task)

        turns = itertools.count()

        def again(task: Any) -> Any:  # the task once more, on the next actor in turn
            return ray.get(call(actors[next(turns) % len(actors)], task))

        window = 2 * len(actors)  # tasks in flight: enough to keep every actor busy
        submitted: deque[Any] = deque()  # in flight, in order: results come in this order
        with map_progress(progress, self.progress, desc, total, unit) as meter:
            try:
                for task in tasks:
                    pool.submit(call, task)
                    submitted.append(task)
                    if len(submitted) >= window:
                        yield self._next(pool, desc, meter, submitted.popleft(), again)
                while pool.has_next():
                    yield self._next(pool, desc, meter, submitted.popleft(), again)
            except STOPS:  # a stop (SIGTERM, Ctrl-C): the tasks in flight are dropped
                self.cancel()
                raise

    def _next(self, pool: Any, desc: str, meter: Meter, task: Any,
              again: Callable[[Any], Any]) -> Any:
        """The next result (of ``task``); a task whose workers kept dying is a clear error,
        not a trace. An actor unreachable for a while (its node lost, the actor restarting
        elsewhere) is a failure Ray does not retry: the task is run again, up to
        ``max_retries`` times."""
        errors = self._ray.exceptions
        lost = (errors.RayActorError, errors.WorkerCrashedError)
        unavailable = getattr(errors, "ActorUnavailableError", ())
        try:
            try:
                result = result_of(pool.get_next())
            except unavailable as first:
                result = self._again(task, again, first)
            meter.advance(1)
            return result
        except errors.RayTaskError as err:  # a bug: its traceback, uncoloured
            raise RuntimeError(f"{desc}: a task failed on a Ray worker\n"
                               f"{plain(str(err))}") from None
        except lost as err:
            raise EngineError(
                f"{desc}: a Ray worker died running a task, {self.max_retries + 1} times in "
                f"all ({type(err).__name__}); raise engine.max_retries if workers are lost "
                "now and then, or read the worker logs under Ray's session folder "
                "(engine.temp_dir, default /tmp/ray)"
            ) from err

    def _again(self, task: Any, again: Callable[[Any], Any], err: Exception) -> Any:
        """``task`` run again while its actor is unavailable, waiting 1, 2, 4 ... s between
        tries; the last error once ``max_retries`` tries failed."""
        unavailable = self._ray.exceptions.ActorUnavailableError
        for attempt in range(self.max_retries):
            time.sleep(min(2.0**attempt, 16.0))
            try:
                return result_of(again(task))
            except unavailable as later:
                err = later
        raise err

    def run_one(self, fn: Callable[[T], R], task: T, *, resources: Resources = DEFAULT) -> R:
        return next(iter(self.map(fn, [task], desc="run_one", resources=resources,
                                  progress=NO_PROGRESS)))

    def _kill_pools(self, wait_s: float = 0.0) -> None:
        """Kill every actor; with ``wait_s``, wait up to that long until they are gone (a
        killed actor's process dies a moment after the call)."""
        actors = [a for pool in self._pools.values() for a in pool]
        self._pools.clear()
        for actor in actors:
            self._ray.kill(actor)
        if wait_s and actors:
            gone = [actor.ping.remote() for actor in actors]  # fail once the actor is dead
            self._ray.wait(gone, num_returns=len(gone), timeout=wait_s)

    def cancel(self) -> None:
        """The actors are killed, their running tasks with them; the next map starts new
        ones."""
        self._kill_pools(wait_s=30.0)

    def close(self) -> None:
        self._kill_pools()
        if self._started:
            self._ray.shutdown()
            self._started = False
