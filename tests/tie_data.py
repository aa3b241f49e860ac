"""An embeddings input built to split hairs, for the tests that compare engines, thread counts
and backends byte for byte.

Generated concepts (5 parts, 20,000 x 64, float32) with planted exact copies and near copies,
plus:

- near copies whose similarity lies within a few 1e-7 of semdedup's line 1 - eps;
- rows on the exact bisector of two neighbouring centroids of the semdedup fit, and of the dbp
  fit: their two nearest centroids are within float32's error of each other. The fits are
  known before planting because the planted rows stay out of both fits' samples and leave
  every earlier decision that shapes those samples as it was (a planted row keeps its uid,
  and its caption vector is set to its image vector, so it keeps a clip score above the cut).

A decision left to float32 rounding anywhere would show as a difference between two runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.algorithms import exact
from pipeline.config import validate_config
from pipeline.runner import run
from pipeline.stages.clusters import STEP_SALT, plan_sample, sample_rows
from pipeline.stages.context import alive_rows
from pipeline.synth.embeddings import SynthSpec, synth_embeddings
from pipeline.workdir import write_npy

EPS = 0.05
SAMPLES, DIM, FILES = 20000, 64, 5
LINE_PAIRS = 400  # per part: rows placed on semdedup's line
LINE_SPREAD = 3e-7  # their exact similarity lies within this of 1 - eps
BOUNDARY_ROWS = 60  # per part and fit: rows placed between two centroids


def settings(data: Path, out: Path) -> dict[str, Any]:
    """The run the data is planted for (every tie test runs these settings)."""
    return {"input": {"embeddings": str(data)}, "output": str(out), "seed": 5,
            "progress": False, "semdedup": {"k": 6, "eps": EPS},
            "clip_filter": {"enabled": True, "keep_fraction": 0.85},
            "dbp": {"k": 12, "keep_fraction": 0.4}}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _on_the_line(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows at cosine 1 - EPS (+- LINE_SPREAD) from ``source`` rows."""
    u = rng.standard_normal(source.shape)
    u -= (u * source).sum(axis=1, keepdims=True) * source  # orthogonal to the source
    u = _unit(u)
    cos = 1 - EPS + rng.uniform(-LINE_SPREAD, LINE_SPREAD, len(source))
    return cos[:, None] * source + np.sqrt(1 - cos**2)[:, None] * u


def _between(centroids: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct unit rows each exactly equidistant (in real numbers) from two
    neighbouring centroids that are its two nearest: the bisector of the pair, moved within
    the bisecting hyperplane."""
    c = centroids.astype(np.float64)
    sims = c @ c.T
    np.fill_diagonal(sims, -np.inf)
    pairs = sorted({tuple(sorted((a, int(sims[a].argmax())))) for a in range(len(c))})
    out: list[np.ndarray] = []
    while len(out) < count:
        a, b = pairs[len(out) % len(pairs)]
        diff, mid = _unit(c[a] - c[b]), _unit(c[a] + c[b])
        w = rng.standard_normal(c.shape[1])
        w -= (w @ diff) * diff + (w @ mid) * mid
        v = _unit(mid + 0.4 * _unit(w))
        if set(np.argsort(-(c @ v))[:2].tolist()) == {a, b}:
            out.append(v)
    return np.array(out)


def _sampled(work: Path, step: str, earlier: tuple[str, ...], k: int, seed: int
             ) -> list[np.ndarray]:
    """Per part, the rows the step's fit drew (as ``stages/clusters.py`` draws them)."""
    alive = [alive_rows(work, p, earlier) for p in range(FILES)]
    counts = plan_sample([len(a) for a in alive], k, 256, seed, STEP_SALT[step])
    return [sample_rows(a, c, seed, STEP_SALT[step], p)
            for p, (a, c) in enumerate(zip(alive, counts, strict=True))]


def _plant(data: Path, rows: list[np.ndarray], centroids: np.ndarray,
           rng: np.random.Generator) -> None:
    """Give ``rows`` of each part vectors between two centroids, caption vectors alike."""
    for f in range(FILES):
        chosen = _between(centroids, len(rows[f]), rng).astype(np.float32)
        for sub in ("img_emb/img_emb", "text_emb/text_emb"):
            path = data / f"{sub}_{f}.npy"
            arr = np.load(path)
            arr[rows[f]] = chosen
            write_npy(path, arr)


class PlantingError(AssertionError):
    """The planted rows moved a fit: the ties would not be where they were put."""


def planted_ties(root: Path, seed: int = 2) -> Path:
    """The input folder (clip-retrieval layout) under ``root / "data"``; runs under
    ``root / "plan"`` find the fits the boundary rows are planted for, and a last one checks
    that both fits still come out as planned."""
    data = synth_embeddings(root / "data", SynthSpec(samples=SAMPLES, dim=DIM, concepts=20,
                                                     files=FILES, seed=seed, dtype="float32"))
    rng = np.random.default_rng(seed + 100)
    taken = []
    for f in range(FILES):
        path = data / "img_emb" / f"img_emb_{f}.npy"
        img = np.load(path).astype(np.float64)
        n = len(img)
        rows = rng.choice(np.arange(n // 2, n), size=LINE_PAIRS, replace=False)
        img[rows] = _on_the_line(_unit(img[rng.integers(0, n // 2, LINE_PAIRS)]), rng)
        write_npy(path, img.astype(np.float32))
        taken.append(set(rows.tolist()))
    fits = {}
    for step, earlier in (("semdedup", ()), ("dbp", ("semdedup", "clip_filter"))):
        cfg = settings(data, root / "plan" / step)
        run(validate_config(cfg))
        work = Path(cfg["output"]) / "_work"
        for f, drawn in enumerate(_sampled(work, step, earlier, cfg[step]["k"], cfg["seed"])):
            taken[f].update(drawn.tolist())  # a fit's sample stays as it is
        fits[step] = np.load(work / step / "centroids.npy")
        # a row some removed copy points at keeps its vector: moved, its copy would stay
        ledger = pq.read_table(work.parent / "ledger", columns=["dup_of", "status"])
        sources = set(ledger.filter(pc.equal(ledger["status"], "removed"))["dup_of"]
                      .drop_null().to_pylist())
        rows = []
        for f in range(FILES):
            uids = pq.read_table(work.parent / "ledger" / f"part-{f:05d}.parquet",
                                 columns=["uid"])["uid"].to_pylist()
            free = [r for r in alive_rows(work, f, earlier)
                    if r not in taken[f] and uids[r] not in sources]
            pick = rng.choice(free, size=BOUNDARY_ROWS, replace=False)
            taken[f].update(pick.tolist())
            rows.append(pick)
        _plant(data, rows, fits[step], rng)
    cfg = settings(data, root / "plan" / "check")
    run(validate_config(cfg))
    for step, want in fits.items():
        got = np.load(Path(cfg["output"]) / "_work" / step / "centroids.npy")
        if not np.array_equal(got, want):
            raise PlantingError(f"the {step} fit moved after planting")
    return data


def near_ties(out: Path) -> dict[str, int]:
    """How many decisions of a finished run lay within float32's window: semdedup members
    whose similarity is within it of 1 - eps, and rows whose two nearest centroids (of the
    semdedup and of the dbp fit) are within it of each other."""
    work = out / "_work"
    vectors = np.concatenate([np.load(p) for p in sorted((work / "ingest").glob(
        "vectors-*.npy"))]).astype(np.float32)
    win = exact.window(vectors.shape[1])
    sim = pq.read_table(out / "ledger", columns=["dup_similarity"]).column(0)
    sim = sim.fill_null(np.nan).to_numpy()
    got = {"line": int((np.abs(sim - (1 - EPS)) < win).sum())}
    for step in ("semdedup", "dbp"):
        top2 = np.sort(exact.dots(vectors, np.load(work / step / "centroids.npy")), axis=1)
        got[step] = int((top2[:, -1] - top2[:, -2] < win).sum())
    return got
