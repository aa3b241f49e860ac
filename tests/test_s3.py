"""Inputs in object storage: shards and clip-retrieval embeddings read from ``s3://`` through
fsspec/s3fs, against a moto S3 server this test starts on 127.0.0.1 (no network). The result
is the one the same files give from local disk; the credentials reach no log or report."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from same_bytes import assert_same_bytes, assert_same_contents, assert_same_file, assert_same_rows
from test_error_messages import make_data

from pipeline.config import validate_config
from pipeline.io.shards import iter_samples
from pipeline.runner import run
from pipeline.synth.images import synth_images

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

SECRET = "not-a-real-secret-3f9a"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A moto S3 server and an fsspec filesystem on it; credentials from the environment,
    the endpoint from fsspec's configuration, as a user sets them."""
    import fsspec

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{host}:{port}"})
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("bucket")
    yield fs
    mp.undo()
    server.stop()


def upload(fs: object, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe(f"{prefix}/{path.relative_to(local)}", path.read_bytes())


def members_by_key(folder: Path) -> dict[str, dict[str, bytes]]:
    out = {}
    for tar in sorted(folder.glob("*.tar")):
        for s in iter_samples(str(tar)):
            out[s.key] = {name.split(".", 1)[1]: data for name, data in s.members}
    return out


def image_config(shards: str, out: Path) -> object:
    return validate_config({
        "input": {"shards": shards}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
                  "workers": 0},
        "semdedup": {"k": 2, "eps": 0.001}, "dbp": {"k": 2, "keep_fraction": 0.5},
        "kmeans": {"niter": 2}})


def test_shards_in_s3_give_the_local_result(s3: object, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    data = synth_images(tmp_path / "data", 45, seed=5, samples_per_shard=15, concepts=3)
    upload(s3, data, "bucket/laion")
    local = run(image_config(str(data), tmp_path / "local"))
    remote = run(image_config("s3://bucket/laion/{00000..00002}.tar", tmp_path / "remote"))
    assert remote.input_samples == local.input_samples == 45
    for name in ("subset.npy",):
        assert_same_file(tmp_path / "remote" / name, tmp_path / "local" / name)
    assert_same_rows(pq.read_table(tmp_path / "remote" / "ledger").to_pylist(),
                     pq.read_table(tmp_path / "local" / "ledger").to_pylist(), "ledger rows")
    # remote shards are read again to copy (no byte spans): same samples, same members
    assert_same_contents(members_by_key(tmp_path / "remote" / "shards"),
                         members_by_key(tmp_path / "local" / "shards"), "shards' samples by key")
    report = json.loads((tmp_path / "remote" / "report" / "report.json").read_text())
    assert report["output_shards"]["copied_by_parsing"] == remote.kept
    pinned = report["inputs"][0]["file"]
    assert pinned[0] == "s3://bucket/laion/00000.tar" and len(pinned) > 2  # size and ETag
    for text in (caplog.text, json.dumps(report),
                 (tmp_path / "remote" / "logs" / "run.log").read_text()):
        assert SECRET not in text


def test_embeddings_in_s3_give_the_local_result(s3: object, tmp_path: Path) -> None:
    data = make_data(tmp_path, files=2)
    upload(s3, data, "bucket/emb")
    raw = {"output": "", "semdedup": {"k": 2}, "dbp": {"k": 2}, "kmeans": {"niter": 2},
           "progress": False}
    run(validate_config({**raw, "input": {"embeddings": str(data)},
                         "output": str(tmp_path / "local")}))
    run(validate_config({**raw, "input": {"embeddings": "s3://bucket/emb"},
                         "output": str(tmp_path / "remote")}))
    assert np.array_equal(np.load(tmp_path / "remote" / "subset.npy"),
                          np.load(tmp_path / "local" / "subset.npy"))
    assert_same_rows(pq.read_table(tmp_path / "remote" / "ledger").to_pylist(),
                     pq.read_table(tmp_path / "local" / "ledger").to_pylist(), "ledger rows")


def test_output_in_s3_gives_the_bytes_of_a_local_output(s3: object, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Input shards and the output folder in S3: the uploaded ledger, subset and shards are
    the bytes a local output of the same run holds; the report says the S3 output and a
    command that reruns it; a rerun replaces only what runs wrote there, and a folder
    holding someone else's files is refused."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the local mirror's default place
    data = synth_images(tmp_path / "data", 45, seed=5, samples_per_shard=15, concepts=3)
    upload(s3, data, "bucket/in")
    shards = "s3://bucket/in/{00000..00002}.tar"
    local = tmp_path / "local"
    run(image_config(shards, local))
    summary = run(image_config(shards, "s3://bucket/out"))
    assert summary.remote == "s3://bucket/out"
    for rel in ["subset.npy", *(str(p.relative_to(local)) for p in
                                sorted((local / "ledger").iterdir())),
                *(str(p.relative_to(local)) for p in sorted((local / "shards").iterdir())
                  if not p.name.endswith("_stats.json"))]:
        assert_same_bytes(s3.cat_file(f"bucket/out/{rel}"), (local / rel).read_bytes(), rel)
    report = json.loads(s3.cat_file("bucket/out/report/report.json"))
    assert report["parameters"]["output"] == "s3://bucket/out"
    assert report["command"] == "conceptprune run s3://bucket/out/report/config.yaml"
    assert s3.exists("bucket/out/report/index.html")
    # the command reruns it from the uploaded config (nothing to redo: same local mirror)
    res = CliRunner().invoke(app, ["run", "s3://bucket/out/report/config.yaml",
                                   "--no-progress", "--set", "dbp.keep_fraction=0.3"])
    assert res.exit_code == 0, res.output
    assert "uploaded to s3://bucket/out" in res.output
    again = json.loads(s3.cat_file("bucket/out/report/report.json"))
    tars = [p for p in s3.find("bucket/out/shards") if p.endswith(".tar")]
    assert len(tars) == again["output_shards"]["count"]
    assert sum(json.loads(s3.cat_file("bucket/out/shards/sizes.json")).values()) == \
        again["kept"] < report["kept"]
    s3.pipe("bucket/theirs/notes.txt", b"keep me")
    with pytest.raises(ValueError, match="already holds files no conceptprune run wrote"):
        run(image_config(shards, "s3://bucket/theirs"))
    assert s3.cat_file("bucket/theirs/notes.txt") == b"keep me"
