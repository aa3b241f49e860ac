"""The generated image dataset: readable, deterministic, and its ground truth holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from same_bytes import assert_same_file

from pipeline.ids import is_valid_uid
from pipeline.io.shards import decode_image, expand_shards, iter_samples, read_stats
from pipeline.synth.images import Concept, render, synth_images

N = 260
PER_SHARD = 100


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_images(tmp_path_factory.mktemp("synth") / "data", N, seed=5,
                        samples_per_shard=PER_SHARD, exact_dup_fraction=0.1,
                        near_dup_fraction=0.1)


@pytest.fixture(scope="module")
def samples(data: Path) -> list:
    return [s for url in expand_shards(str(data)) for s in iter_samples(url)]


@pytest.fixture(scope="module")
def truth(data: Path) -> list[dict]:
    return pq.read_table(data / "ground_truth.parquet").to_pylist()


def test_layout(data: Path) -> None:
    names = sorted(p.name for p in data.iterdir())
    assert names == sorted(["ground_truth.parquet"] + [
        f"{i:05d}{ext}" for i in range(3) for ext in (".tar", ".parquet", "_stats.json")])
    assert [read_stats(str(data / f"{i:05d}.tar"))["count"] for i in range(3)] == [100, 100, 60]


def test_round_trip(samples: list, truth: list[dict], data: Path) -> None:
    assert len(samples) == len(truth) == N
    for sample, row in zip(samples, truth, strict=True):
        assert sample.failed_reason is None
        assert (sample.key, sample.uid) == (row["key"], row["uid"])
        assert sample.shard == f"{sample.key[:5]}.tar"
        assert is_valid_uid(sample.uid) and sample.uid == sample.meta["uid"]
        assert sample.caption == sample.meta["caption"]
        assert sample.meta["concept"] == row["concept"]
        assert sample.image_ext in ("jpg", "png")
        assert [n.split(".", 1)[1] for n, _ in sample.members] == [sample.image_ext, "txt",
                                                                    "json"]
    assert len({s.uid for s in samples}) == N
    sidecar = pq.read_table(data / "00001.parquet")
    assert sidecar.column("key").to_pylist() == [s.key for s in samples[100:200]]
    assert sidecar.column("uid").to_pylist() == [s.uid for s in samples[100:200]]


def test_images_decode_with_stated_size(samples: list, truth: list[dict]) -> None:
    for sample, row in zip(samples[:80], truth[:80], strict=True):
        img = decode_image(sample)
        assert img.size == (sample.meta["width"], sample.meta["height"])
        if row["kind"] is None:
            assert 64 <= img.width <= 128 and 64 <= img.height <= 128


def test_captions_mention_the_concept(samples: list, truth: list[dict]) -> None:
    for sample, row in zip(samples, truth, strict=True):
        colour, shape, _, texture = row["concept_name"].split(" ")
        assert colour in sample.caption and shape in sample.caption
        assert texture in sample.caption


def test_ground_truth_duplicates(samples: list, truth: list[dict]) -> None:
    by_key = {s.key: s for s in samples}
    position = {s.key: i for i, s in enumerate(samples)}
    kinds = [r["kind"] for r in truth]
    assert kinds.count("exact") == kinds.count("near") == N // 10
    for row in truth:
        if row["kind"] is None:
            assert row["duplicate_of_key"] is None and row["duplicate_of_uid"] is None
            continue
        dup, src = by_key[row["key"]], by_key[row["duplicate_of_key"]]
        assert src.uid == row["duplicate_of_uid"] and position[src.key] < position[dup.key]
        assert truth[position[src.key]]["kind"] is None  # sources are originals
        assert row["concept"] == truth[position[src.key]]["concept"]
        if row["kind"] == "exact":
            assert dup.image_bytes == src.image_bytes and dup.image_ext == src.image_ext
            assert dup.members[0][1] == src.members[0][1]
        else:
            assert dup.image_bytes != src.image_bytes
            a = np.asarray(decode_image(dup).resize((32, 32)), np.float32)
            b = np.asarray(decode_image(src).resize((32, 32)), np.float32)
            assert np.abs(a - b).mean() < 40  # near, not merely the same concept
            scale = dup.meta["width"] / src.meta["width"]
            assert 0.9 < scale < 1.1 and scale != 1.0


def test_deterministic_tars(data: Path, tmp_path: Path) -> None:
    again = synth_images(tmp_path / "again", N, seed=5, samples_per_shard=PER_SHARD,
                         exact_dup_fraction=0.1, near_dup_fraction=0.1)
    for i in range(3):
        name = f"{i:05d}.tar"
        assert_same_file(again / name, data / name)
    assert (pq.read_table(again / "ground_truth.parquet")
            == pq.read_table(data / "ground_truth.parquet"))
    other = synth_images(tmp_path / "other", 20, seed=6)
    assert (other / "00000.tar").read_bytes()[:20000] != (data / "00000.tar").read_bytes()[:20000]


def test_concept_spread_controls_variety() -> None:
    rng = np.random.default_rng(0)

    def spread_of(spread: float) -> float:
        concept = Concept(0, "square", 0.3, "plain", spread)
        imgs = [np.asarray(render(concept, rng).resize((32, 32)), np.float32)
                for _ in range(20)]
        return float(np.stack(imgs).std(axis=0).mean())

    assert spread_of(0.02) * 3 < spread_of(0.5) < spread_of(1.0)


def test_json_fields(samples: list) -> None:
    meta = samples[0].meta
    assert set(meta) >= {"uid", "key", "url", "caption", "width", "height", "concept"}
    assert json.dumps(meta)  # plain json types
