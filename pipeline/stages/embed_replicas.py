"""Every GPU of a node busy on the local engine: the shards not embedded yet are dealt out in
turn to one model replica per visible GPU (shard i to GPU i mod N), each run by a thread of
this process with its own decoding workers (``embed.workers`` shared out among them). Ray and
Spark give each task a GPU of its own instead, as before.

A shard's vectors depend only on the shard and the model (batches never span two shards), so
they are the ones a single replica would write, whichever GPU embeds it; each shard's marker
is written by the replica that finished it. A stop (a signal in the main thread) or a
replica's error tells the others to stop after the batch in hand; nothing half-done is
marked, and a rerun embeds what is left.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from pipeline.progress import TaskCounts
from pipeline.stages.embed import EmbedModels, EmbedTask, embed_task

log = logging.getLogger(__name__)


def gpu_replicas(device: str) -> int:
    """How many replicas the local engine runs: every visible CUDA GPU when ``embed.device``
    names none in particular (auto, cuda) and there are several; else one."""
    if str(device) not in ("auto", "cuda"):
        return 1
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def deal(todo: list[tuple[int, str, str]], replicas: int) -> list[list[tuple[int, str, str]]]:
    """The shards of each replica: shard i to replica i mod ``replicas`` (none left empty)."""
    return [group for r in range(replicas) if (group := todo[r::replicas])]


def shared_workers(workers: int, replicas: int) -> int:
    """Each replica's decoding workers: ``embed.workers`` shared out (at least one each when
    there are any)."""
    return 0 if workers == 0 else max(1, workers // replicas)


def embed_on_replicas(tasks: list[EmbedTask], load: Callable[[int], EmbedModels]
                      ) -> Iterator[TaskCounts]:
    """Run task r on GPU r (``load(r)`` builds its models there), all at once; yields each
    replica's counts as it finishes."""
    stop = threading.Event()

    log.info("embedding on %d GPUs at once: %s shards each", len(tasks),
             "/".join(str(len(t.shards)) for t in tasks))
    # every replica's models first, one after the other: a model with random weights is
    # drawn from torch's global generator, which a running replica's data loader draws from
    models = [load(gpu) for gpu in range(len(tasks))]
    with ThreadPoolExecutor(len(tasks), thread_name_prefix="embed-gpu") as pool:
        pending: set[Any] = {pool.submit(embed_task, m, task, stop)
                             for m, task in zip(models, tasks, strict=True)}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except BaseException:
            stop.set()  # the others stop after their batch in hand; the pool waits for them
            raise
