"""The whole embeddings run against its bare kernels, side by side in one process.

Generates (once, cached) N x 512 float16 embeddings in clip-retrieval layout with clustered
structure and planted duplicates, then:

1. runs ``conceptprune run`` in this process (fresh work folder) and takes its wall time from
   process start to ``subset.npy``, and the peak RSS at that point;
2. in the same process, times the bare kernels on the same data: the faiss fit + assignment of
   both clusterings (same k, sample size, niter, seed) and the pairwise products of SemDeDup
   (one full Gram matrix per dedup cluster, as the public reference computes them);
3. prints both and their ratio.

Usage: python bench/bench_embeddings_run.py [--samples 1000000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from bench_data import cached_embeddings

PROCESS_START = psutil.Process().create_time()


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--dedup-k", type=int, default=500)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--dbp-k", type=int, default=100)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    args = ap.parse_args()

    from pipeline.config import validate_config
    from pipeline.runner import run

    data, made = cached_embeddings(args.out, args.samples, args.dim, args.files)
    if made:
        # measure in a fresh process, so that its start time and peak RSS are the run's own
        # (exec would keep both: the pid's start time and the kernel's peak RSS survive it)
        sys.exit(subprocess.run([sys.executable, *sys.argv], check=False).returncode)

    out = args.out / "run"
    shutil.rmtree(out, ignore_errors=True)
    cfg = validate_config({
        "input": {"embeddings": str(data)}, "output": str(out), "seed": 0, "progress": False,
        "semdedup": {"k": args.dedup_k, "eps": args.eps},
        "dbp": {"k": args.dbp_k, "keep_fraction": args.keep},
    })
    summary = run(cfg)
    wall = time.time() - PROCESS_START
    rss = _peak_rss_gb()
    assert (out / "subset.npy").exists()
    report = json.loads((out / "report" / "report.json").read_text())
    print(f"run: {summary.input_samples} -> {summary.kept} kept; wall (process start to "
          f"subset.npy) {wall:.1f} s; peak RSS {rss:.2f} GB; steps {report['timings_s']}",
          flush=True)

    bare = bare_kernels(cfg, out)
    total_bare = sum(bare.values())
    print("bare kernels: " + ", ".join(f"{k} {v:.1f} s" for k, v in bare.items())
          + f"; total {total_bare:.1f} s")
    print(f"ratio run / bare kernels = {wall / total_bare:.3f}")


def bare_kernels(cfg, out: Path) -> dict[str, float]:  # noqa: ANN001
    """Time the faiss fits, assignments and SemDeDup Gram products on in-memory vectors."""
    import faiss
    import pyarrow.parquet as pq

    from pipeline.stages.clusters import plan_sample, sample_rows

    data = Path(cfg.input.embeddings)
    vecs = np.concatenate([np.load(p).astype(np.float32)
                           for p in sorted((data / "img_emb").glob("*.npy"),
                                           key=lambda p: int(p.stem.split("_")[-1]))])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ledger = pq.read_table(out / "ledger").select(["dedup_cluster", "status", "stage"])
    dedup_cluster = ledger.column("dedup_cluster").to_numpy()
    reaches_dbp = ~np.isin(ledger.column("stage").to_numpy(zero_copy_only=False),
                           ["read", "semdedup", "clip_filter"])
    times: dict[str, float] = {}

    def kmeans(rows: np.ndarray, k: int, name: str) -> None:
        # a sample of the size the run draws (its seeded split over parts aside)
        count = plan_sample([len(rows)], k, cfg.kmeans.max_points_per_centroid, cfg.seed, 0)
        sample = sample_rows(rows, count[0], cfg.seed, 0, 0)
        x = np.ascontiguousarray(vecs[sample])
        t = time.perf_counter()
        km = faiss.Kmeans(x.shape[1], k, niter=cfg.kmeans.niter, seed=cfg.seed, spherical=True,
                          max_points_per_centroid=len(x) // k + 1, min_points_per_centroid=1)
        km.train(x)
        times[f"{name} fit"] = time.perf_counter() - t
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(km.centroids)
        sub = vecs if len(rows) == len(vecs) else np.ascontiguousarray(vecs[rows])
        t = time.perf_counter()
        index.search(sub, 1)
        times[f"{name} assign"] = time.perf_counter() - t

    kmeans(np.arange(len(vecs)), cfg.semdedup.k, "semdedup")
    groups = np.argsort(dedup_cluster, kind="stable")
    bounds = np.searchsorted(dedup_cluster[groups], np.arange(cfg.semdedup.k + 1))
    t_gram = 0.0
    for c in range(cfg.semdedup.k):
        members = groups[bounds[c] : bounds[c + 1]]
        if len(members) < 2:
            continue
        e = vecs[members]  # the gather is not timed: only the products
        t = time.perf_counter()
        for start in range(0, len(e), 2048):  # full rows, in blocks to bound memory
            e[start : start + 2048] @ e.T
        t_gram += time.perf_counter() - t
    times["semdedup pairwise"] = t_gram
    kmeans(np.flatnonzero(reaches_dbp), cfg.dbp.k, "dbp")
    return times


if __name__ == "__main__":
    main()
