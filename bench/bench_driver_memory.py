"""Driver memory against the number of samples: the same config on 1M and 4M samples.

Each run is ``conceptprune run`` in a fresh process; the figure is that process's own peak
RSS (Ray's workers excluded). On ``local`` the maps run in that process too, so the vector
cache is switched off (``vector_cache_gb=0``) to measure what the run holds, not what it
caches. Parts hold 125,000 rows; k is the same at both sizes.

Usage: python bench/bench_driver_memory.py [--sizes 1000000 4000000] [--dim 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from bench_data import cached_embeddings
from bench_engines import run_engine

PART_ROWS = 125_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--engines", nargs="+", default=["local", "ray"])
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    args = ap.parse_args()

    temp = tempfile.mkdtemp(prefix="cp-bench-mem-", dir="/tmp")
    peak: dict[tuple[str, int], float] = {}
    try:
        for n in args.sizes:
            data, _ = cached_embeddings(args.out, n, args.dim, max(1, n // PART_ROWS))
            for engine in args.engines:
                wall, rss, out = run_engine(args.out, f"memory_{engine}_{n}", {
                    "input": {"embeddings": str(data)}, "seed": 0, "vector_cache_gb": 0,
                    "semdedup": {"k": 400, "eps": 0.02},
                    "clip_filter": {"enabled": True, "keep_fraction": 0.9},
                    "dbp": {"k": 100, "keep_fraction": 0.5}}, engine, args.cpus, temp)
                peak[engine, n] = rss
                print(f"{engine} {n} x {args.dim}: {wall:.1f} s, driver peak RSS {rss:.3f} GB",
                      flush=True)
                shutil.rmtree(out / "_work", ignore_errors=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    small, large = min(args.sizes), max(args.sizes)
    for engine in args.engines:
        print(f"{engine}: driver peak RSS {large} / {small} samples = "
              f"{peak[engine, large] / peak[engine, small]:.2f}")


if __name__ == "__main__":
    main()
