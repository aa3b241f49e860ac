"""Fault injection for the engine tests, loaded by every Python process started with this
folder on PYTHONPATH:

- when CONCEPTPRUNE_TEST_KILL_ONCE names a file that does not exist yet, the first Ray
  worker or Spark Python worker to deduplicate a cluster creates it and SIGKILLs itself, as
  a lost machine would; other processes (the driver) are left alone;
- when CONCEPTPRUNE_TEST_KILL_DRIVER is ``FILE:PREFIX:N``, the worker that records the N-th
  finished unit whose marker name starts with PREFIX creates FILE and SIGKILLs the driver
  (the pid in the run's lock, OUTPUT/.conceptprune.lock, the work folder being OUTPUT/_work),
  as a lost driver node would, while the other tasks of that map are still running."""

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
