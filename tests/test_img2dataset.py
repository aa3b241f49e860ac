"""The real img2dataset downloads generated pictures (and a few URLs that fail) from an HTTP
server this test starts on 127.0.0.1 into webdataset shards; `conceptprune run` on them
accounts for every URL: kept + removed + failed = URLs attempted, the failed downloads are
ledger rows at stage download with img2dataset's error, and kept captions are copied as
they were. img2dataset lives apart (``.venv/clients/img2dataset``, made by ``make install``):
its pins differ from this project's."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import validate_config
from pipeline.io.shards import iter_samples
from pipeline.runner import run
from pipeline.synth.images import make_concepts, render

REPO = Path(__file__).resolve().parents[1]
IMG2DATASET = REPO / ".venv" / "clients" / "img2dataset"
PICTURES, BROKEN = 40, 4


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # the test's output stays readable
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Pictures of three concepts served from 127.0.0.1; (base URL, folder)."""
    www = tmp_path_factory.mktemp("www")
    rng = np.random.default_rng(3)
    concepts = make_concepts(3, rng)
    for i in range(PICTURES):
        render(concepts[i % 3], rng).save(www / f"{i}.jpg", quality=90)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()


def img2dataset(url_list: Path, out: Path) -> None:
    assert IMG2DATASET.is_dir(), f"{IMG2DATASET} is missing: run `make install`"
    env = {**os.environ, "PYTHONPATH": str(IMG2DATASET), "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from img2dataset.main import main; main()",
         "--url_list", str(url_list), "--input_format", "csv", "--url_col", "url",
         "--caption_col", "caption", "--output_format", "webdataset", "--output_folder",
         str(out), "--processes_count", "1", "--thread_count", "4",
         "--number_sample_per_shard", "16", "--resize_mode", "no", "--enable_wandb", "False"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_img2dataset_shards_every_url_accounted_for(server: tuple[str, Path],
                                                    tmp_path: Path) -> None:
    base, _ = server
    url_list = tmp_path / "urls.csv"
    captions = {}
    with url_list.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "caption"])
        for i in range(PICTURES + BROKEN):
            name = f"{i}.jpg" if i < PICTURES else f"gone-{i}.jpg"
            captions[f"{base}/{name}"] = f"picture {i} of a concept"
            writer.writerow([f"{base}/{name}", captions[f"{base}/{name}"]])
    shards = tmp_path / "shards"
    img2dataset(url_list, shards)

    out = tmp_path / "out"
    summary = run(validate_config({
        "input": {"shards": str(shards)}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
                  "workers": 0},
        "semdedup": {"k": 2, "eps": 0.001}, "dbp": {"k": 3, "keep_fraction": 0.6},
        "kmeans": {"niter": 2}}))
    rows = pq.read_table(out / "ledger").to_pylist()
    counts = {s: sum(r["status"] == s for r in rows) for s in ("kept", "removed", "failed")}
    assert summary.input_samples == len(rows) == PICTURES + BROKEN  # URLs attempted
    assert sum(counts.values()) == PICTURES + BROKEN
    downloads = [r for r in rows if r["stage"] == "download"]
    assert len(downloads) == BROKEN == counts["failed"]
    assert all("404" in r["reason"] and "gone-" in r["reason"] for r in downloads)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["embed"]["derived_uids"] == PICTURES + BROKEN  # no uid in its json or parquet
    assert report["subset"]["uid_source"] == "derived"
    assert 'id="uid-source">derived' in (out / "report" / "index.html").read_text()
    # kept captions copied as img2dataset wrote them
    written = {s.key: s.caption for t in sorted((out / "shards").glob("*.tar"))
               for s in iter_samples(str(t))}
    assert set(written) == {r["key"] for r in rows if r["status"] == "kept"}
    sources = {s.key: s for t in sorted(shards.glob("*.tar")) for s in iter_samples(str(t))}
    for key, caption in written.items():
        assert caption == captions[sources[key].meta["url"]]
