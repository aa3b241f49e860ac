"""The demo's pictures (``synth_images(style="scenes")``) on the demo's clustering features:
near copies sit above the 1 - eps line, different pictures below it, so semdedup at the
demo's eps finds the planted copies and removes little else. Features are computed here
directly with the cluster encoder, without a pipeline run, to stay fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.demo import CONCEPTS, EPS, duplicate_figures, synth_settings
from pipeline.embed.models import (
    EFFICIENTNET_LITE0_MODEL,
    EFFICIENTNET_LITE0_WHEEL,
    load_cluster_encoder,
)
from pipeline.io.shards import decode_image, expand_shards, iter_samples
from pipeline.synth.images import synth_images

N = 300


def _features(data: Path) -> tuple[list[str], np.ndarray]:
    """Keys and unit EfficientNet-Lite0 features of every sample, as the demo's run sees them."""
    encoder = load_cluster_encoder(EFFICIENTNET_LITE0_MODEL, EFFICIENTNET_LITE0_WHEEL, "cpu")
    samples = [s for url in expand_shards(str(data)) for s in iter_samples(url)]
    feats = []
    with torch.inference_mode():
        for i in range(0, len(samples), 100):
            batch = [encoder.transform(decode_image(s)) for s in samples[i:i + 100]]
            feats.append(encoder.model(torch.stack(batch)))
    unit = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
    return [s.key for s in samples], unit.numpy()


def _semdedup_one_cluster(vectors: np.ndarray, eps: float) -> np.ndarray:
    """SemDeDup's rule with every sample in one cluster (stricter than the demo's k clusters):
    farthest from the centroid first, removed when its best earlier cosine is > 1 - eps."""
    centroid = vectors.mean(axis=0)
    order = np.argsort(vectors @ (centroid / np.linalg.norm(centroid)), kind="stable")
    sims = vectors[order] @ vectors[order].T
    best = np.where(np.tri(len(order), k=-1, dtype=bool), sims, -np.inf).max(axis=1)
    removed = np.zeros(len(order), bool)
    removed[order] = best > 1 - eps
    return removed


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], np.ndarray]:
    settings = synth_settings(N) | {"seed": 1, "samples_per_shard": N,
                                    "exact_dup_fraction": 0.1, "near_dup_fraction": 0.1}
    data = synth_images(tmp_path_factory.mktemp("demo") / "data", **settings)
    return data, *_features(data)


def test_near_copies_above_and_look_alikes_below_the_line(
        embedded: tuple[Path, list[str], np.ndarray]) -> None:
    data, keys, vectors = embedded
    truth = pq.read_table(data / "ground_truth.parquet").to_pylist()
    row = {k: i for i, k in enumerate(keys)}
    near = [float(vectors[row[t["key"]]] @ vectors[row[t["duplicate_of_key"]]])
            for t in truth if t["kind"] == "near"]
    originals = [row[t["key"]] for t in truth if t["kind"] is None]
    sims = vectors[originals] @ vectors[originals].T
    np.fill_diagonal(sims, -1)
    assert len(near) == N // 10
    assert np.mean(np.array(near) > 1 - EPS) >= 0.95  # near copies above the line
    assert np.median(near) > 1 - EPS + 0.03  # (median 0.99 measured)
    assert np.quantile(sims.max(axis=1), 0.99) < 1 - EPS - 0.02  # look-alikes well below


def test_semdedup_finds_the_planted_copies(
        embedded: tuple[Path, list[str], np.ndarray]) -> None:
    data, keys, vectors = embedded
    removed = _semdedup_one_cluster(vectors, EPS)
    figures = duplicate_figures(data, {k for k, r in zip(keys, removed, strict=True) if r})
    assert figures["planted_exact"] == figures["planted_near"] == N // 10
    assert figures["recall"] >= 0.9 and figures["precision"] >= 0.9, figures


def test_concepts_differ_in_spread(embedded: tuple[Path, list[str], np.ndarray]) -> None:
    data, keys, vectors = embedded
    truth = pq.read_table(data / "ground_truth.parquet", columns=["key", "concept"]).to_pylist()
    concept = dict((t["key"], t["concept"]) for t in truth)
    labels = np.array([concept[k] for k in keys])
    d_intra = []
    for c in range(CONCEPTS):
        members = vectors[labels == c]
        if len(members) >= 10:
            mean = members.mean(axis=0)
            d_intra.append(float(1 - (members @ (mean / np.linalg.norm(mean))).mean()))
    assert max(d_intra) > 1.5 * min(d_intra)  # tight concepts and diverse ones
