"""The whole embeddings run against its bare kernels, side by side.

Generates (once, cached) N x 512 float16 embeddings in clip-retrieval layout with clustered
structure and planted duplicates, then:

1. runs ``conceptprune run`` ``--runs`` times, each in a fresh process (fresh work folder),
   and takes the fastest run's wall time from its process start to ``subset.npy``, and its
   peak RSS;
2. in this process, times the bare kernels on the same data, each the fastest of
   ``--repeats`` tries: the faiss fit + assignment of both clusterings (same k, sample size,
   niter, seed) and the pairwise products of SemDeDup (one full Gram matrix per dedup
   cluster, as the public reference computes them, and only the lower-triangle blocks the
   run computes);
3. prints both and their ratios, the run against its FLOP floor (the matrix work its kernels
   must do at numpy's sgemm rate, the higher of its measurements before and after the
   runs), and how fast BLAS, faiss and torch assign vectors here, bare and with the exact
   re-check.

Usage: python bench/bench_embeddings_run.py [--samples 1000000] [--backend auto|blas|faiss|torch]
       [--runs 2] [--repeats 2] [--out bench/out] [--cold]

The input is read once before the runs (not counted) unless ``--cold`` (then one run): the
bare kernels take their vectors from memory, so the runs start with their input in the page
cache too.
"""

from __future__ import annotations

# isort: off
import pipeline  # noqa: F401 - before numpy, as in the console script: it picks OpenBLAS's kernels
# isort: on

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import psutil
from bench_data import cached_embeddings


def process_start() -> float:
    """When this process started, on ``time.time()``'s scale: its age from its start in
    clock ticks since boot (/proc/self/stat) against the boot-time clock. psutil's
    create_time adds those ticks to the boot time as /proc/stat gives it, in whole seconds,
    which put the start up to a second early (0.36 s on this VM: every run's wall was that
    much too long); it remains the fallback where /proc is not there."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime: fields after the name start at 3
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return psutil.Process().create_time()


PROCESS_START = process_start()


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class AnonymousPeak:
    """The largest anonymous memory (``RssAnon``: the process's own arrays, not file pages
    it maps) seen every 20 ms while running: peak RSS also counts the pages of the work
    folder's vector files mapped while a bucket reads them, which are the page cache's,
    shared and reclaimable, not the process's."""

    def __init__(self) -> None:
        import threading

        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            if self._stop.wait(0.02):
                return

    def stop(self) -> float:
        """GB."""
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--dedup-k", type=int, default=500)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--dbp-k", type=int, default=100)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--backend", default="auto", help="kmeans.backend of the run")
    ap.add_argument("--repeats", type=int, default=2,
                    help="tries of each bare kernel, the fastest counted: the ratios then "
                         "err against the run, not for it")
    ap.add_argument("--runs", type=int, default=2,
                    help="tries of the whole run, each in a fresh process, the fastest "
                         "counted as the bare kernels' are (one run's wall moved from 33.8 "
                         "to 40.2 s with this VM's noise)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("bench/out"))
    ap.add_argument("--cold", action="store_true",
                    help="do not read the input once before the run: its wall then counts "
                         "the disk where the page cache does not hold the input")
    args = ap.parse_args()

    from pipeline.config import validate_config

    # every run is measured in a fresh process of its own (``run_in_child``): the data made
    # here, if it was, weighs on neither its start time nor its peak RSS
    data, _ = cached_embeddings(args.out, args.samples, args.dim, args.files)

    out = args.out / "run"
    cfg = validate_config({
        "input": {"embeddings": str(data)}, "output": str(out), "seed": 0, "progress": False,
        "semdedup": {"k": args.dedup_k, "eps": args.eps},
        "dbp": {"k": args.dbp_k, "keep_fraction": args.keep},
        "kmeans": {"backend": args.backend},
    })
    if args.child:  # one run, in this fresh process: its figures to the parent
        print("RUN " + json.dumps(one_run(cfg, out)), flush=True)
        return
    cached = 0.0 if args.cold else read_input_once(data)
    # the sgemm rate, measured before the runs as well as after them: this VM's rate moved
    # from 152 to 184 GFLOP/s between measurements, and the higher of the two makes the
    # floor the lower, so the ratio errs against the run
    rate_before = sgemm_rate(args.dim)
    tries = [run_in_child(args) for _ in range(1 if args.cold else max(1, args.runs))]
    got = min(tries, key=lambda t: t["wall"])
    wall, steps, searched = got["wall"], got["steps"], got["searched"]
    print(got["kernels"], flush=True)
    print(f"run: {got['input']} -> {got['kept']} kept; wall (process start to subset.npy, "
          f"each run in a fresh process) "
          + ", ".join(f"{t['wall']:.1f}" for t in tries)
          + f" s, the fastest counted: {wall:.1f} s; the report {got['report_s']:.1f} s more; "
          f"peak RSS {got['rss_gb']:.2f} GB (its anonymous memory at most "
          f"{got['anon_gb']:.2f} GB, the rest pages of the work folder's files mapped while "
          f"read); steps {steps}", flush=True)
    if not args.cold:
        print(f"the input was read once before the runs ({cached:.1f} s, not counted): the "
              f"runs and the bare kernels start with it in the page cache, so a first bench "
              f"on cold storage measures the same (--cold counts the disk, one run)",
              flush=True)

    bare, flops = bare_kernels(cfg, out, args.repeats)
    total_bare = sum(bare.values())
    print(f"bare kernels (faiss fit and search, numpy's float32 products; the fastest of "
          f"{args.repeats} tries): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in bare.items()))
    reference = total_bare - bare["semdedup lower triangle"]
    minimum = total_bare - bare["semdedup full Gram"]
    print(f"ratio run / bare kernels = {wall / reference:.3f} (SemDeDup as its public code "
          f"computes it, a full Gram matrix per cluster); {wall / minimum:.3f} (only the "
          f"lower triangle the rule needs)")
    rate_after = sgemm_rate(args.dim)
    rate = max(rate_before, rate_after)
    floor = sum(flops.values()) / rate
    print(f"matrix work {sum(flops.values()) / 1e12:.2f} TFLOP ("
          + ", ".join(f"{k} {v / 1e12:.2f}" for k, v in flops.items())
          + f") at the sgemm rate measured in this process ({rate / 1e9:.0f} GFLOP/s, the "
          f"higher of {rate_before / 1e9:.0f} before the runs and {rate_after / 1e9:.0f} "
          f"after them) = FLOP floor {floor:.1f} s; run / FLOP floor = {wall / floor:.3f}")
    matrix = steps.get("semdedup", 0.0) + steps.get("dbp", 0.0)
    print(f"where the run's time goes against that floor: its steps with matrix work "
          f"(semdedup, dbp) {matrix:.1f} s = {matrix / floor:.3f} x the floor; the rest "
          f"{wall - matrix:.1f} s (process start and imports, reading the input, the ledger "
          f"and subset), which has no matrix work")
    # the fits search only the rows their bounds leave unsure: the run's own products
    lloyd = sum(v for k, v in flops.items() if k.endswith((" fit", " assign")))
    done = flops["semdedup blocks"] + searched
    print(f"the run's k-means products as counted in it: {searched / 1e12:.2f} TFLOP "
          f"against {lloyd / 1e12:.2f} for full Lloyd iterations and assignments; its matrix "
          f"work {done / 1e12:.2f} TFLOP = FLOP floor {done / rate:.1f} s; run / that floor "
          f"= {wall / (done / rate):.3f}")
    assignment_speeds(out, args.dim)


def one_run(cfg, out: Path) -> dict:  # noqa: ANN001 - the run's config
    """The run in this process: its wall from this process's start to ``subset.npy``, the
    report's time after it, peak RSS, steps and the k-means products it made."""
    from pipeline.blas_kernels import describe
    from pipeline.runner import run

    shutil.rmtree(out, ignore_errors=True)
    searched = count_kmeans_products()
    anonymous = AnonymousPeak()
    summary = run(cfg)
    returned = time.time()
    anon_gb = anonymous.stop()
    written = (out / "subset.npy").stat().st_mtime  # the report comes after it
    report = json.loads((out / "report" / "report.json").read_text())
    return {"wall": written - PROCESS_START, "report_s": returned - written,
            "rss_gb": _peak_rss_gb(), "anon_gb": anon_gb, "input": summary.input_samples,
            "kept": summary.kept,
            "steps": report["timings_s"], "searched": searched[0], "kernels": describe()}


def run_in_child(args: argparse.Namespace) -> dict:
    """``one_run`` in a fresh process (its start time and peak RSS its own; it chooses its
    BLAS kernels itself, as a user's run would)."""
    from pipeline import blas_kernels

    env = dict(os.environ)
    if blas_kernels.chosen:
        env.pop(blas_kernels.VARIABLE, None)
    done = subprocess.run([sys.executable, *sys.argv, "--child"], check=False, env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RUN ")]
    if done.returncode or not lines:
        sys.exit(f"the run failed (exit {done.returncode}):\n{done.stdout[-4000:]}"
                 f"{done.stderr[-4000:]}")
    return json.loads(lines[-1][4:])


def read_input_once(data: Path, chunk: int = 16 << 20) -> float:
    """Read every file of ``data`` once (into the page cache); returns the seconds taken."""
    start = time.time()
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as f:
            while f.read(chunk):
                pass
    return time.time() - start


def count_kmeans_products() -> list[float]:
    """Count, during the run, the FLOP of every product of vectors with centroids its
    k-means makes (fits, whose bounds spare rows, and assignments): a one-item list that
    fills as the run goes."""
    import threading

    from pipeline.algorithms import kmeans

    total = [0.0]
    lock = threading.Lock()

    def add(rows: int, columns: int, d: int) -> None:
        with lock:
            total[0] += 2.0 * rows * columns * d

    nearest, best_two = kmeans.nearest, kmeans.best_two

    def counted_nearest(x, centroids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        add(len(x), len(centroids), x.shape[1])
        return nearest(x, centroids, *args, **kwargs)

    def counted_best_two(index, x, k):  # noqa: ANN001, ANN202
        add(len(x), k, x.shape[1])
        return best_two(index, x, k)

    kmeans.nearest, kmeans.best_two = counted_nearest, counted_best_two
    return total


def sgemm_rate(d: int) -> float:
    """FLOP/s of numpy's float32 matrix product of 4096 x d by d x 2048 on all of this
    process's BLAS threads, the best of three tries of eight (the run's block products,
    a few hundred rows by a cluster's members, ran at 86-92 GFLOP/s a core alone and
    165-172 on two cores at once here; this shape at 152-184 on two)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, d), dtype=np.float32)
    b = rng.standard_normal((2048, d), dtype=np.float32)
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(8):
            a @ b.T
        best = min(best, time.perf_counter() - t)
    return 8 * 2 * 4096 * 2048 * d / best


def assignment_speeds(out: Path, d: int) -> None:
    """Vectors per second assigned to the semdedup centroids (the best of three tries): the
    bare proposers (numpy's products + the window check, faiss's search, torch's product +
    top-k) and the exact assignment on each."""
    from pipeline.algorithms import proposers
    from pipeline.algorithms.exact import window
    from pipeline.algorithms.kmeans import Assigner
    from pipeline.io.vector_store import VectorStore

    centroids = np.load(out / "_work" / "semdedup" / "centroids.npy")
    path = out / "_work" / "ingest" / "vectors-00000.npy"
    rows = len(np.load(path, mmap_mode="r"))
    x = VectorStore([str(path)], [rows]).gather(np.arange(min(rows, 200_000)))
    found = [proposers.BlasProposer(), proposers.FaissProposer()]
    with contextlib.suppress(proposers.BackendError):
        found.append(proposers.TorchProposer())
    def best_of_three(fn) -> float:  # noqa: ANN001 - seconds of the fastest of 3 calls
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    for p in found:
        index = p.index(centroids)
        # the best and the candidates in the window where the index offers it, as used
        propose = partial(index.near, x, window(d)) if hasattr(index, "near") \
            else partial(index.top, x, 4)
        bare = best_of_three(propose)
        decided = best_of_three(partial(Assigner(centroids, p).assign, x))
        print(f"assignment to {len(centroids)} centroids, {p.name}: proposals "
              f"{len(x) / bare:,.0f} vectors/s, exact assignment {len(x) / decided:,.0f} "
              "vectors/s")


def bare_kernels(cfg, out: Path, repeats: int  # noqa: ANN001 - the run's config
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """Time faiss's fits and searches and the SemDeDup products on in-memory vectors, each the
    fastest of ``repeats`` tries (one try's faiss fit varied from 7.4 to 9.9 s on this VM,
    which swung the ratio from 1.08 to 1.26 for the same run), and count the matrix work
    (FLOP) the run's own kernels must do."""
    import faiss
    import pyarrow.parquet as pq

    from pipeline.algorithms.semdedup import auto_block_rows
    from pipeline.stages.clusters import plan_sample, sample_rows
    from pipeline.stages.semdedup import MAX_BLOCK_ELEMENTS

    data = Path(cfg.input.embeddings)
    vecs = np.concatenate([np.load(p).astype(np.float32)
                           for p in sorted((data / "img_emb").glob("*.npy"),
                                           key=lambda p: int(p.stem.split("_")[-1]))])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    d = vecs.shape[1]
    ledger = pq.read_table(out / "ledger").select(["dedup_cluster", "status", "stage"])
    dedup_cluster = ledger.column("dedup_cluster").to_numpy()
    reaches_dbp = ~np.isin(ledger.column("stage").to_numpy(zero_copy_only=False),
                           ["read", "semdedup", "clip_filter"])
    times: dict[str, float] = {}
    flops: dict[str, float] = {}

    def took(name: str, seconds: float) -> None:  # the fastest of the repeats
        times[name] = min(times.get(name, np.inf), seconds)

    def kmeans(rows: np.ndarray, k: int, name: str) -> None:
        # a sample of the size the run draws (its seeded split over parts aside)
        count = plan_sample([len(rows)], k, cfg.kmeans.max_points_per_centroid, cfg.seed, 0)
        sample = sample_rows(rows, count[0], cfg.seed, 0, 0)
        x = np.ascontiguousarray(vecs[sample])
        t = time.perf_counter()
        km = faiss.Kmeans(x.shape[1], k, niter=cfg.kmeans.niter, seed=cfg.seed, spherical=True,
                          max_points_per_centroid=len(x) // k + 1, min_points_per_centroid=1)
        km.train(x)
        took(f"{name} fit", time.perf_counter() - t)
        flops[f"{name} fit"] = 2.0 * cfg.kmeans.niter * len(x) * k * d
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(km.centroids)
        sub = vecs if len(rows) == len(vecs) else np.ascontiguousarray(vecs[rows])
        t = time.perf_counter()
        index.search(sub, 1)
        took(f"{name} assign", time.perf_counter() - t)
        flops[f"{name} assign"] = 2.0 * len(sub) * k * d

    groups = np.argsort(dedup_cluster, kind="stable")
    bounds = np.searchsorted(dedup_cluster[groups], np.arange(cfg.semdedup.k + 1))
    for _ in range(repeats):
        kmeans(np.arange(len(vecs)), cfg.semdedup.k, "semdedup")
        t_full = t_low = triangle = 0.0
        for c in range(cfg.semdedup.k):
            members = groups[bounds[c] : bounds[c + 1]]
            n = len(members)
            if n < 2:
                continue
            e = vecs[members]  # the gather is not timed: only the products
            t = time.perf_counter()
            for start in range(0, n, 2048):  # full rows, in blocks to bound memory
                e[start : start + 2048] @ e.T
            t_full += time.perf_counter() - t
            block = auto_block_rows(n, max(1, min(cfg.semdedup.block_rows,
                                                  MAX_BLOCK_ELEMENTS // n)))
            t = time.perf_counter()
            for start in range(1, n, block):  # the run's blocks: rows j against columns < stop
                stop = min(n, start + block)
                e[start:stop] @ e[:stop].T
                triangle += 2.0 * (stop - start) * stop * d
            t_low += time.perf_counter() - t
        took("semdedup full Gram", t_full)
        took("semdedup lower triangle", t_low)
        flops["semdedup blocks"] = triangle
        kmeans(np.flatnonzero(reaches_dbp), cfg.dbp.k, "dbp")
    return times, flops


if __name__ == "__main__":
    main()
