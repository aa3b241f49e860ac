"""The GPU the running task was given, for the stages to hand to torch and faiss by index.

An engine that gives each task a GPU of its own among several a process sees (Spark: the
address in the task's ``TaskContext``) records it here before the task runs. A Python worker
runs many tasks, and CUDA reads ``CUDA_VISIBLE_DEVICES`` only once, so the index is passed
explicitly instead. ``None`` means the process's first visible GPU: Ray narrows
``CUDA_VISIBLE_DEVICES`` per worker itself, and the local engine owns the whole machine.
"""

from __future__ import annotations

_task_gpu: int | None = None


def task_gpu() -> int | None:
    """Index of the GPU the engine gave the running task, or None."""
    return _task_gpu


def set_task_gpu(index: int | None) -> None:
    global _task_gpu
    _task_gpu = index
