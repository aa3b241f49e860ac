"""Two shapes that grow faster than the data, each against its bare kernel in one process.

1. SemDeDup on a cluster where one vector is copied many times (a placeholder image): the
   exact kernel with copies decided from their member (``HEAVY_COPIES``), the same with every
   copy a row of the blocks, and the bare float32 products of the distinct members' lower
   triangle, which any exact answer needs at least.
2. d_inter at large k: ``budget.inter_distance`` against the bare float32 k x k products.

Usage: python bench/bench_large_cases.py [--dim 512] [--distinct 2000]
       [--copies 10000 30000 300000] [--k 5000 20000]
"""

from __future__ import annotations

# isort: off
import pipeline  # noqa: F401 - before numpy, as in the console script: it picks OpenBLAS's kernels
# isort: on

import argparse
import time
from collections.abc import Callable

import numpy as np

from pipeline.algorithms import budget, semdedup
from pipeline.algorithms.proposers import BlasProposer

ROWS_LIMIT = 40_000  # the rows path is quadratic: beyond this it is not timed


def seconds(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def copies_case(distinct: int, copies: int, d: int, rng: np.random.Generator) -> None:
    base = unit_rows(distinct, d, rng)
    x = np.concatenate([base, np.repeat(base[:1], copies, axis=0)])
    x = x[rng.permutation(len(x))]
    n = len(x)
    block = semdedup.auto_block_rows(n, max(1, min(4096, (1 << 26) // n)))

    def decide(heavy: int) -> Callable[[], object]:
        def run() -> object:
            semdedup.HEAVY_COPIES = heavy
            return semdedup.decide_cluster(x, 0.02, block, BlasProposer())
        return run

    kept = semdedup.HEAVY_COPIES
    bare = seconds(lambda: [base[s : s + 256] @ base[: s + 256].T
                            for s in range(0, distinct, 256)])
    heavy = seconds(decide(kept))
    rows = seconds(decide(10**12)) if n <= ROWS_LIMIT else float("nan")
    semdedup.HEAVY_COPIES = kept
    print(f"semdedup, {distinct:,} distinct + {copies:,} copies of one (d = {d}): copies from "
          f"their member {heavy:.2f} s, every copy a row {rows:.2f} s "
          f"({rows / heavy:.1f}x); bare products of the distinct triangle {bare:.3f} s, "
          f"run / bare = {heavy / bare:.1f}", flush=True)


def inter_case(k: int, d: int, rng: np.random.Generator) -> None:
    c = unit_rows(k, d, rng)
    step = max(1, budget.INTER_BLOCK_PRODUCTS // k)
    bare = seconds(lambda: [c[s : s + step] @ c.T for s in range(0, k, step)])
    run = seconds(lambda: budget.inter_distance(c, np.ones(k, dtype=bool), 20))
    print(f"d_inter, k = {k:,} (d = {d}, l = 20): {run:.2f} s; bare k x k products "
          f"{bare:.2f} s, run / bare = {run / bare:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--distinct", type=int, default=2000)
    ap.add_argument("--copies", type=int, nargs="+", default=[10_000, 30_000, 300_000])
    ap.add_argument("--k", type=int, nargs="+", default=[5_000, 20_000])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for copies in args.copies:
        copies_case(args.distinct, copies, args.dim, rng)
    for k in args.k:
        inter_case(k, args.dim, rng)


if __name__ == "__main__":
    main()
