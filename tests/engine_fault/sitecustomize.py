"""Fault injection for the engine tests, loaded by every Python process started with this
folder on PYTHONPATH:

- when CONCEPTPRUNE_TEST_KILL_ONCE names a file that does not exist yet, the first Ray
  worker or Spark Python worker to deduplicate a cluster creates it and SIGKILLs itself, as
  a lost machine would; other processes (the driver) are left alone;
- when CONCEPTPRUNE_TEST_KILL_DRIVER is ``FILE:PREFIX:N``, the worker that records the N-th
  finished unit whose marker name starts with PREFIX creates FILE and SIGKILLs the driver
  (the pid in the run's lock, OUTPUT/.conceptprune.lock, the work folder being OUTPUT/_work),
  as a lost driver node would, while the other tasks of that map are still running;
- when CONCEPTPRUNE_TEST_KILL_NODE is ``FILE:PREFIX:N`` (set on one Ray node only), the
  worker of that node recording the N-th such unit SIGKILLs the whole node, as a lost
  machine would (see below)."""

import os
import signal

_SENTINEL = os.environ.get("CONCEPTPRUNE_TEST_KILL_ONCE")


def _in_ray_worker() -> bool:
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read()
    return cmdline.startswith(b"ray::") or b"pyspark.daemon" in cmdline \
        or b"pyspark.worker" in cmdline


if _SENTINEL:
    import pipeline.stages.semdedup as _semdedup

    _real = _semdedup.dedup_cluster

    def _dedup_cluster_once(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if _in_ray_worker():
            try:
                fd = os.open(_SENTINEL, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return _real(*args, **kwargs)

    _semdedup.dedup_cluster = _dedup_cluster_once


_DRIVER = os.environ.get("CONCEPTPRUNE_TEST_KILL_DRIVER")

if _DRIVER:
    import json
    from pathlib import Path

    import pipeline.units as _units

    _sentinel, _prefix, _count = _DRIVER.rsplit(":", 2)
    _real_finish = _units.finish

    def _finish_then_kill_driver(unit, stats):  # noqa: ANN001, ANN202
        _real_finish(unit, stats)
        markers = Path(unit.work) / "markers"
        done = len(list(markers.glob(f"{_prefix}*.json")))
        if _in_ray_worker() and unit.name.startswith(_prefix) and done >= int(_count):
            try:
                fd = os.open(_sentinel, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            lock = Path(unit.work).parent / ".conceptprune.lock"
            os.kill(json.loads(lock.read_text())["pid"], signal.SIGKILL)

    _units.finish = _finish_then_kill_driver


_NODE = os.environ.get("CONCEPTPRUNE_TEST_KILL_NODE")

if _NODE:
    from pathlib import Path

    import pipeline.units as _node_units

    # FILE:PREFIX:N: the Ray worker (of the node started with this variable) that records
    # the N-th finished unit whose marker starts with PREFIX creates FILE and SIGKILLs its
    # whole node: the process group whose id FILE.pgid holds (`ray start --block` started
    # in a session of its own, its raylet, object store and workers), itself included
    _node_sentinel, _node_prefix, _node_count = _NODE.rsplit(":", 2)
    _finish_before_node = _node_units.finish

    def _finish_then_kill_node(unit, stats):  # noqa: ANN001, ANN202
        _finish_before_node(unit, stats)
        markers = Path(unit.work) / "markers"
        done = len(list(markers.glob(f"{_node_prefix}*.json")))
        if _in_ray_worker() and unit.name.startswith(_node_prefix) \
                and done >= int(_node_count):
            try:
                fd = os.open(_node_sentinel, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            pgid = int(Path(f"{_node_sentinel}.pgid").read_text())
            os.killpg(pgid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    _node_units.finish = _finish_then_kill_node
