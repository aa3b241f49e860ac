"""One model replica per GPU on the local engine (issue 22 item 2), run here on the CPU with
the GPU count pretended: the shards are dealt out in turn, each replica loads its models for
its own GPU index in a thread of its own with its share of the decoding workers, the outputs
are the bytes of a single replica's run, and a stop ends every replica after its batch in
hand, the rerun giving the same bytes. (On a real multi-GPU node: bench/gpu_check.sh.)"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from test_resume_images import assert_same_result, raw_config

import pipeline.stages.embed as embed
import pipeline.stages.embed_replicas as replicas
from pipeline.config import validate_config
from pipeline.interrupts import Interrupted
from pipeline.run_lock import LOCK_NAME
from pipeline.runner import run


def test_dealing_sharing_and_counting_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    shards = [(i, f"{i}.tar", f"{i}.tar") for i in range(5)]
    assert replicas.deal(shards, 2) == [[shards[0], shards[2], shards[4]],
                                        [shards[1], shards[3]]]
    assert replicas.deal(shards[:1], 4) == [[shards[0]]]
    assert [replicas.shared_workers(w, n) for w, n in ((8, 4), (0, 4), (3, 4), (5, 1))] == \
        [2, 0, 1, 5]
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [replicas.gpu_replicas(d) for d in ("auto", "cuda", "cuda:1", "cpu")] == [4, 4, 1, 1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert replicas.gpu_replicas("auto") == 1


@pytest.fixture()
def two_replicas(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int | None, str]]:
    """Pretend two GPUs; record each load_models call's GPU index, and the thread of each
replica's work (as GPU None)."""
    loads: list[tuple[int | None, str]] = []
    real = embed.load_models

    def load(cfg, seed, gpu=None):  # noqa: ANN001, ANN202
        loads.append((gpu, threading.current_thread().name))
        return real(cfg, seed, gpu)

    real_task = replicas.embed_task

    def task(models, work, stop):  # noqa: ANN001, ANN202
        loads.append((None, threading.current_thread().name))
        return real_task(models, work, stop)

    monkeypatch.setattr(replicas, "gpu_replicas", lambda device: 2)
    monkeypatch.setattr(embed, "load_models", load)
    monkeypatch.setattr(replicas, "embed_task", task)
    return loads


def test_two_replicas_give_the_bytes_of_one(chain_images: Path, chain_clean: Path,
                                            tmp_path: Path,
                                            two_replicas: list[tuple[int | None, str]]) -> None:
    out = tmp_path / "out"
    run(validate_config({**raw_config(chain_images, out), "embed": {
        **raw_config(chain_images, out)["embed"], "workers": 2}}))
    assert [gpu for gpu, _ in two_replicas if gpu is not None] == [0, 1]
    threads = {thread for gpu, thread in two_replicas if gpu is None}
    assert len(threads) == 2 and all(t.startswith("embed-gpu") for t in threads)
    assert_same_result(out, chain_clean)


def test_a_stop_ends_every_replica_and_the_rerun_gives_the_same_bytes(
        chain_images: Path, chain_clean: Path, tmp_path: Path,
        two_replicas: list[tuple[int | None, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.workdir import WorkDir

    out = tmp_path / "out"
    cfg = validate_config(raw_config(chain_images, out))
    real_mark = WorkDir.mark
    marked: list[str] = []

    def mark_then_stop(self, name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        result = real_mark(self, name, *args, **kwargs)
        if name.startswith("embed-"):
            marked.append(name)
            if len(marked) == 1:  # from a replica's thread, as a scheduler would
                os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(WorkDir, "mark", mark_then_stop)
    with pytest.raises(Interrupted, match="SIGTERM"):
        run(cfg)
    assert len(marked) < 3, "the replicas went on to the end after the stop"
    assert not (out / LOCK_NAME).exists()
    monkeypatch.setattr(WorkDir, "mark", real_mark)
    run(cfg)
    assert_same_result(out, chain_clean)
