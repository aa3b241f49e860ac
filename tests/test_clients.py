"""The tools users already run read the pruned output as it is:

- open_clip's own training data pipeline (``open_clip_train.data.get_wds_dataset``, under the
  webdataset its training extra pins) finds the dataset size in ``sizes.json`` with no
  sample-count flag, and a tiny model takes training steps; every key it reads is kept;
- wids' ``ShardListDataset`` opens the index the run wrote and yields exactly the kept
  samples, even where input shards reuse keys;
- DataComp's subset rule (``np.load`` of ``u8,u8``, then a ``searchsorted`` of each uid's
  two 64-bit halves) selects exactly the kept uids from ``subset.npy``.

The old webdataset lives apart (``.venv/clients/``, made by ``make install``) and is put
first on the path of the client processes only.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import validate_config
from pipeline.io.shards import iter_samples
from pipeline.runner import run
from pipeline.synth.images import synth_images

REPO = Path(__file__).resolve().parents[1]
OLD_WEBDATASET = REPO / ".venv" / "clients" / "webdataset-0.2.86"


def client(script: str, *args: str) -> dict:
    assert OLD_WEBDATASET.is_dir(), f"{OLD_WEBDATASET} is missing: run `make install`"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OLD_WEBDATASET), str(REPO)])}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "clients" / script), *args],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def restart_keys(data: Path) -> None:
    """Keys that restart in every shard, as some downloaders write them: 0, 1, 2, ..."""
    for tar in sorted(data.glob("*.tar")):
        with tarfile.open(tar) as t:
            members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
        order: dict[str, str] = {}
        renamed = []
        for name, payload in members:
            key, ext = name.split(".", 1)
            new = order.setdefault(key, f"{len(order):04d}")
            renamed.append((f"{new}.{ext}", payload))
        with tarfile.open(tar, "w") as out:
            for name, payload in renamed:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                out.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = synth_images(tmp_path_factory.mktemp("clients") / "data", 90, seed=8,
                        samples_per_shard=30, concepts=3)
    restart_keys(data)
    for sidecar in data.glob("0*.parquet"):
        sidecar.unlink()  # their keys no longer match the tars
    out = data.parent / "out"
    run(validate_config({
        "input": {"shards": str(data)}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 32,
                  "workers": 0},
        "semdedup": {"k": 2, "eps": 0.0005}, "dbp": {"k": 3, "keep_fraction": 0.6},
        "kmeans": {"niter": 2}, "write": {"max_count": 40}}))
    return out


def kept(out: Path) -> list[dict]:
    rows = pq.read_table(out / "ledger", columns=["key", "uid", "shard", "status"]).to_pylist()
    return [r for r in rows if r["status"] == "kept"]


def test_open_clip_training_reads_the_shards_without_a_sample_count(pruned: Path) -> None:
    tars = sorted((pruned / "shards").glob("*.tar"))
    pattern = str(pruned / "shards" / f"{{{tars[0].stem}..{tars[-1].stem}}}.tar")
    got = client("open_clip_train_steps.py", pattern, "3")
    assert got["webdataset"] == "0.2.86"
    assert got["dataset_size"] == len(kept(pruned))  # from sizes.json
    assert abs(got["num_samples"] - got["dataset_size"]) < 4  # rounded to whole batches
    assert len(got["losses"]) == 3 and all(np.isfinite(got["losses"]))
    kept_keys = {r["key"] for r in kept(pruned)}
    assert got["seen"] and set(got["seen"]) <= kept_keys


def test_wids_yields_exactly_the_kept_samples(pruned: Path) -> None:
    got = client("wids_read.py", str(pruned / "shards" / "index.wids.json"))
    rows = kept(pruned)
    assert got["length"] == len(rows)
    assert [s["key"] for s in got["samples"]] == [r["key"] for r in rows]
    assert all(s["image"] > 0 and s["caption"] for s in got["samples"])
    assert len({r["key"] for r in rows}) < len(rows), "the input reuses keys across shards"


def test_datacomp_subset_rule_selects_exactly_the_kept_samples(pruned: Path) -> None:
    """Applied to the input shards' json uids (real uids), as DataComp's resharder does."""
    subset = np.load(pruned / "subset.npy")
    assert subset.dtype == np.dtype("u8,u8")
    report = json.loads((pruned / "report" / "report.json").read_text())
    assert report["subset"]["uid_source"] == "given"
    inputs = sorted((pruned.parent / "data").glob("*.tar"))
    samples = [s for tar in inputs for s in iter_samples(str(tar))]

    def selected(uid: str) -> bool:  # DataComp's resharder, as its README describes it
        key = np.array([(int(uid[:16], 16), int(uid[16:32], 16))], dtype="u8,u8")
        i = np.searchsorted(subset, key)[0]
        return bool(i < len(subset) and subset[i] == key[0])

    chosen = [(s.shard, s.key) for s in samples if selected(s.meta["uid"])]
    assert chosen == [(r["shard"], r["key"]) for r in kept(pruned)]
