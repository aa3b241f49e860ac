"""Fault injection for the engine tests, loaded by every Python process started with this
folder on PYTHONPATH:

- when CONCEPTPRUNE_TEST_KILL_ONCE names a file that does not exist yet, the first Ray
  worker or Spark Python worker to deduplicate a cluster creates it and SIGKILLs itself, as
  a lost machine would; other processes (the driver) are left alone;
- when CONCEPTPRUNE_TEST_KILL_DRIVER is ``FILE:PREFIX:N``, the worker that records the N-th
  finished unit whose marker name starts with PREFIX creates FILE and SIGKILLs the driver
  (the pid in the run's lock, OUTPUT/.conceptprune.lock, the work folder being OUTPUT/_work),
  as a lost driver node would, while the other tasks of that map are still running;
- when CONCEPTPRUNE_TEST_KILL_NODE is ``FILE:PREFIX:N`` (set on one node of a Ray or Spark
  cluster only), the worker of that node recording the N-th such unit SIGKILLs the whole
  node, as a lost machine would."""

import os
import signal

_SENTINEL = os.environ.get("CONCEPTPRUNE_TEST_KILL_ONCE")


def _in_ray_worker() -> bool:
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read()
    return cmdline.startswith(b"ray::") or b"pyspark.daemon" in cmdline \
        or b"pyspark.worker" in cmdline


def _claim(sentinel: str) -> bool:
    """Create ``sentinel`` holding this pid; False when another process did first (a fault
    is injected once per test)."""
    try:
        fd = os.open(sentinel, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _after_nth_unit(spec: str, fault) -> None:  # noqa: ANN001 - a callable of the unit
    """``spec`` is FILE:PREFIX:N: in a worker, once the N-th unit whose marker starts with
    PREFIX is recorded, claim FILE and call ``fault(unit, FILE)``."""
    from pathlib import Path

    import pipeline.units as units

    sentinel, prefix, count = spec.rsplit(":", 2)
    real_finish = units.finish

    def finish_then_fault(unit, stats):  # noqa: ANN001, ANN202
        real_finish(unit, stats)
        done = len(list((Path(unit.work) / "markers").glob(f"{prefix}*.json")))
        if _in_ray_worker() and unit.name.startswith(prefix) and done >= int(count) \
                and _claim(sentinel):
            fault(unit, sentinel)

    units.finish = finish_then_fault


if _SENTINEL:
    import pipeline.stages.semdedup as _semdedup

    _real = _semdedup.decide_cluster  # what a bucket calls per cluster (renamed: fails loudly)

    def _decide_cluster_once(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if _in_ray_worker() and _claim(_SENTINEL):
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(*args, **kwargs)

    _semdedup.decide_cluster = _decide_cluster_once


def _kill_driver(unit, _: str) -> None:  # noqa: ANN001
    """SIGKILL the run's driver: the pid in its lock (the work folder is OUTPUT/_work)."""
    import json
    from pathlib import Path

    lock = Path(unit.work).parent / ".conceptprune.lock"
    os.kill(json.loads(lock.read_text())["pid"], signal.SIGKILL)


def _kill_node(_, sentinel: str) -> None:  # noqa: ANN001
    """SIGKILL this worker's whole node: the process group whose id FILE.pgid holds (`ray
    start --block` or a Spark worker started in a session of its own: its raylet or JVMs,
    and their workers), this process included."""
    with open(f"{sentinel}.pgid") as f:
        os.killpg(int(f.read()), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("CONCEPTPRUNE_TEST_KILL_DRIVER"):
    _after_nth_unit(os.environ["CONCEPTPRUNE_TEST_KILL_DRIVER"], _kill_driver)

if os.environ.get("CONCEPTPRUNE_TEST_KILL_NODE"):
    _after_nth_unit(os.environ["CONCEPTPRUNE_TEST_KILL_NODE"], _kill_node)
