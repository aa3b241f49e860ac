"""The Ray engine: every map is a set of Ray tasks (or an actor pool when a ``setup`` is
costly), retried when a worker is lost; results come back in task order.

Tasks are small descriptors and results small summaries: the data stays in the work folder,
which every worker must see (a shared filesystem, or one machine). At most ``window`` tasks
are in flight, so the driver never holds more than that many results.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from pipeline.engines.base import DEFAULT, EngineError, Resources, progress_bar

T = TypeVar("T")
R = TypeVar("R")

# Ray's own defaults phone home and start a dashboard; neither is wanted in a batch job.
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _call(fn: Callable[[Any], R], task: Any) -> R:
    return fn(task)


def _same_code_env() -> dict[str, Any]:
    """Workers of an instance started here import this very ``pipeline`` (a checkout run in
    place, not only an installed copy)."""
    import pipeline

    root = str(Path(pipeline.__file__).resolve().parents[1])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


class _Worker:
    """An actor that runs ``setup`` once and then many tasks with its result."""

    def __init__(self, setup: Callable[[], Any]) -> None:
        self.state = setup()

    def run(self, fn: Callable[[Any, Any], R], task: Any) -> R:
        return fn(self.state, task)


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 object_store_gb: float | None = None, temp_dir: str | Path | None = None,
                 max_retries: int = 3, progress: bool = True) -> None:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        import ray

        self._ray = ray
        self.progress = progress
        self.max_retries = max_retries
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                                      "configure_logging": False}
            if address:
                ray.init(address=address, **kwargs)
            else:
                if object_store_gb:
                    kwargs["object_store_memory"] = int(object_store_gb * 2**30)
                if temp_dir:
                    Path(temp_dir).mkdir(parents=True, exist_ok=True)
                    kwargs["_temp_dir"] = str(Path(temp_dir).resolve())
                ray.init(num_cpus=num_cpus, runtime_env=_same_code_env(), **kwargs)
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.window = max(2, 2 * cpus)

    def _options(self, resources: Resources) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": resources.cpus, "num_gpus": resources.gpus}
        if resources.memory_gb:
            opts["memory"] = int(resources.memory_gb * 2**30)
        return opts

    def map(self, fn: Callable[..., R], tasks: Iterable[Any], *, desc: str,
            total: int | None = None, unit: str = "task", resources: Resources = DEFAULT,
            setup: Callable[[], Any] | None = None, concurrent: bool = False
            ) -> Iterator[R]:
        ray = self._ray
        if setup is None:
            remote = ray.remote(_call).options(max_retries=self.max_retries,
                                               **self._options(resources))
            fn_ref = ray.put(fn)
            submit = lambda task: remote.remote(fn_ref, task)  # noqa: E731
            actors: list[Any] = []
        else:
            actor_cls = ray.remote(_Worker).options(
                max_restarts=self.max_retries, max_task_retries=self.max_retries,
                **self._options(resources))
            count = max(1, min(self.window // 2, total or self.window // 2))
            actors = [actor_cls.remote(setup) for _ in range(count)]
            fn_ref = ray.put(fn)
            turn = iter(range(1 << 62))
            submit = lambda task: actors[next(turn) % len(actors)].run.remote(  # noqa: E731
                fn_ref, task)
        pending: deque = deque()
        try:
            with progress_bar(desc, total, unit, self.progress) as bar:
                for task in tasks:
                    pending.append(submit(task))
                    if len(pending) >= self.window:
                        yield self._get(pending.popleft(), desc)
                        bar.update(1)
                while pending:
                    yield self._get(pending.popleft(), desc)
                    bar.update(1)
        finally:
            for ref in pending:  # the caller stopped early, or a task failed for good
                with contextlib.suppress(Exception):  # already finished or gone
                    ray.cancel(ref, force=not actors)
            for actor in actors:
                ray.kill(actor)

    def _get(self, ref: Any, desc: str) -> Any:
        """A task's result; a task whose workers kept dying is a clear error, not a trace."""
        lost = (self._ray.exceptions.RayActorError, self._ray.exceptions.WorkerCrashedError)
        try:
            return self._ray.get(ref)
        except lost as err:
            raise EngineError(
                f"{desc}: a Ray worker died running a task, {self.max_retries + 1} times in "
                f"all ({type(err).__name__}); raise engine.max_retries if workers are lost "
                "now and then, or read the worker logs under Ray's session folder "
                "(engine.temp_dir, default /tmp/ray)"
            ) from err

    def run_one(self, fn: Callable[[T], R], task: T, *, resources: Resources = DEFAULT) -> R:
        ray = self._ray
        remote = ray.remote(_call).options(max_retries=self.max_retries,
                                           **self._options(resources))
        return self._get(remote.remote(fn, task), "run_one")

    def bar(self, desc: str, total: int, unit: str = "it") -> tqdm:
        return progress_bar(desc, total, unit, self.progress, scale=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False
