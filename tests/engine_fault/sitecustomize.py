"""Fault injection for the engine tests, loaded by every Python process started with this
folder on PYTHONPATH: when CONCEPTPRUNE_TEST_KILL_ONCE names a file that does not exist yet,
the first Ray worker or Spark Python worker to deduplicate a cluster creates it and SIGKILLs
itself, as a lost machine would. Other processes (the driver) are left alone."""

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
