"""A generated clip-retrieval folder with known structure, for demos, tests and benchmarks.

Concepts are random directions with different spreads; every sample is its concept's
direction plus noise. A fraction of samples are planted duplicates of an earlier sample of
the same file: exact copies, or near copies (tiny noise). Text embeddings agree with their
image by a random amount, so CLIP scores vary. ``ground_truth.parquet`` lists the plants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.workdir import write_npy, write_parquet


@dataclass(frozen=True)
class SynthSpec:
    samples: int
    dim: int = 512
    concepts: int = 100
    files: int = 1
    seed: int = 0
    dtype: str = "float16"
    exact_dup_fraction: float = 0.05
    near_dup_fraction: float = 0.05
    near_dup_noise: float = 0.002
    min_spread: float = 0.5
    max_spread: float = 2.0
    with_text: bool = True


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synth_embeddings(out: str | Path, spec: SynthSpec) -> Path:
    """Write ``img_emb/``, ``text_emb/``, ``metadata/`` and ``ground_truth.parquet`` to ``out``."""
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    centers = _unit(rng.standard_normal((spec.concepts, spec.dim)))
    spreads = rng.uniform(spec.min_spread, spec.max_spread, spec.concepts)
    weights = rng.dirichlet(np.full(spec.concepts, 2.0))
    sizes = np.full(spec.files, spec.samples // spec.files)
    sizes[: spec.samples % spec.files] += 1
    truth: list[pa.Table] = []
    for f, n in enumerate(sizes):
        n = int(n)
        concept = rng.choice(spec.concepts, size=n, p=weights)
        noise = rng.standard_normal((n, spec.dim), dtype=np.float32)
        noise *= (spreads[concept] / np.sqrt(spec.dim)).astype(np.float32)[:, None]
        img = _unit(centers[concept].astype(np.float32) + noise)
        del noise
        keys = np.array([f"{f:05d}{i:06d}" for i in range(n)], dtype=object)
        n_exact = int(spec.exact_dup_fraction * n)
        n_near = int(spec.near_dup_fraction * n)
        planted = rng.choice(np.arange(1, n), size=min(n - 1, n_exact + n_near), replace=False)
        source = (rng.random(len(planted)) * planted).astype(np.int64)  # an earlier row
        # a source must itself be original, so chains of plants do not form
        is_plant = np.zeros(n, dtype=bool)
        is_plant[planted] = True
        source = np.where(is_plant[source], 0, source)
        keep = ~is_plant[source] & (source != planted)
        planted, source = planted[keep], source[keep]
        kind = np.where(np.arange(len(planted)) < n_exact, "exact", "near")
        img[planted] = img[source]
        near = planted[kind == "near"]
        img[near] = _unit(img[near] + spec.near_dup_noise * rng.standard_normal(
            (len(near), spec.dim), dtype=np.float32))
        concept[planted] = concept[source]
        write_npy(out / "img_emb" / f"img_emb_{f}.npy", img.astype(spec.dtype))
        if spec.with_text:
            agree = rng.uniform(0.5, 3.0, n).astype(np.float32)[:, None]
            txt = _unit(agree * img + rng.standard_normal((n, spec.dim), dtype=np.float32)
                        / np.sqrt(spec.dim))
            write_npy(out / "text_emb" / f"text_emb_{f}.npy", txt.astype(spec.dtype))
            del txt
        del img
        write_parquet(out / "metadata" / f"metadata_{f}.parquet", pa.table({
            "image_path": pa.array(keys, pa.string()),
            "caption": pa.array([f"a photo of concept {c}" for c in concept], pa.string()),
            "url": pa.array([f"https://example.invalid/{k}.jpg" for k in keys], pa.string()),
            "concept": pa.array(concept.astype(np.int32)),
        }))
        truth.append(pa.table({
            "key": pa.array(keys[planted], pa.string()),
            "duplicate_of": pa.array(keys[source], pa.string()),
            "kind": pa.array(kind, pa.string()),
        }))
    pq.write_table(pa.concat_tables(truth), out / "ground_truth.parquet")
    return out
