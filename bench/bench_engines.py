"""The same embeddings run on several engines (local, ray, spark), side by side in one sitting.

Each run is ``conceptprune run`` in a fresh process (Ray or Spark started by the run, on all
CPUs unless --cpus), timed from process start to exit; the runs alternate, and the driver's
own peak RSS (workers excluded) is read at its exit. All must give the same ``subset.npy``.

Usage: python bench/bench_engines.py [--samples 1000000] [--engines local ray spark]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_data import cached_embeddings

DRIVER = """
import atexit, resource, sys
atexit.register(lambda: print("PEAK_RSS_GB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                              / 1024**2, flush=True))
from pipeline.cli import app
app(sys.argv[1:])
"""


def one_run(cfg: Path, engine: str) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", DRIVER, "run", str(cfg), "--no-progress",
                           "--engine", engine], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{engine} run failed:\n{proc.stderr[-3000:]}")
    rss = float(next(line.split()[1] for line in proc.stdout.splitlines()
                     if line.startswith("PEAK_RSS_GB")))
    return wall, rss


def run_engine(folder: Path, name: str, settings: dict, engine: str, cpus: int, temp: str
               ) -> tuple[float, float, Path]:
    """Write ``NAME.yaml`` (``settings``, output ``NAME/``, every engine on ``cpus`` CPUs of this
    machine) and run it on ``engine`` in a fresh process: (wall s, driver peak RSS GB, output)."""
    out = folder / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = folder / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        **settings, "output": str(out),
        "engine": {"num_cpus": cpus, "temp_dir": temp, "object_store_gb": 1.0,
                   "master": f"local[{cpus}]"}}))
    wall, rss = one_run(cfg, engine)
    return wall, rss, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--engines", nargs="+", default=["local", "ray"],
                    choices=["local", "ray", "spark"])
    args = ap.parse_args()

    data, _ = cached_embeddings(args.out, args.samples, args.dim, args.files)
    temp = tempfile.mkdtemp(prefix="cp-bench-ray-", dir="/tmp")
    walls: dict[str, list[float]] = {e: [] for e in args.engines}
    rss: dict[str, list[float]] = {e: [] for e in args.engines}
    subsets: dict[str, bytes] = {}
    try:
        for _ in range(args.repeat):
            for engine in args.engines:
                wall, peak, out = run_engine(args.out, f"engines_{engine}", {
                    "input": {"embeddings": str(data)}, "seed": 0,
                    "semdedup": {"k": max(1, args.samples // 2000), "eps": 0.02},
                    "dbp": {"k": 100, "keep_fraction": 0.5}}, engine, args.cpus, temp)
                walls[engine].append(wall)
                rss[engine].append(peak)
                subsets[engine] = (out / "subset.npy").read_bytes()
                print(f"{engine}: {wall:.1f} s, driver peak RSS {peak:.2f} GB", flush=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert len(set(subsets.values())) == 1, "the engines disagree on subset.npy"
    best = {e: min(w) for e, w in walls.items()}
    base = best[args.engines[0]]
    print(f"{args.samples} x {args.dim}: " + ", ".join(
        f"{e} {best[e]:.1f} s ({best[e] / base:.2f}x {args.engines[0]}, driver peak RSS "
        f"{max(rss[e]):.2f} GB)" for e in args.engines) + "; same subset.npy")


if __name__ == "__main__":
    main()
