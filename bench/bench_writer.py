"""Writer throughput against a plain file copy of the same bytes.

Builds input shards of random-byte "images" (plus caption and json members), then times, in
one run, (a) reading every sample with ``iter_samples`` and writing it with ``ShardWriter``
(tars, parquet and stats), and (b) ``shutil.copyfile`` of the input tars. Prints both and
the ratio copy_time / writer_time (the target is >= 0.7). Each is repeated and the best
time is kept, so page-cache noise counts against neither.

    python bench/bench_writer.py [--samples 2000] [--image-kb 50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.io.shard_writer import ShardWriter
from pipeline.io.shards import iter_samples


def build_inputs(root: Path, samples: int, image_kb: int, per_shard: int) -> list[Path]:
    rng = np.random.default_rng(0)
    with ShardWriter(root, max_count=per_shard, max_bytes=1 << 40) as writer:
        for i in range(samples):
            key = f"{i // per_shard:05d}{i % per_shard:04d}"
            size = int(image_kb * 1000 * rng.uniform(0.5, 1.5))
            meta = {"uid": rng.bytes(16).hex(), "url": f"https://example.invalid/{key}.jpg"}
            writer.write([(f"{key}.jpg", rng.bytes(size)),
                          (f"{key}.txt", f"caption of sample {i}".encode()),
                          (f"{key}.json", json.dumps(meta).encode())], key, meta)
    return sorted(root.glob("*.tar"))


def run_writer(inputs: list[Path], out: Path) -> int:
    with ShardWriter(out) as writer:
        for url in inputs:
            for sample in iter_samples(str(url)):
                writer.write_sample(sample)
    return sum(s.bytes for s in writer.shards)


def run_copy(inputs: list[Path], out: Path) -> int:
    out.mkdir(parents=True)
    for path in inputs:
        shutil.copyfile(path, out / path.name)
    return sum(p.stat().st_size for p in inputs)


def best_time(fn, inputs: list[Path], scratch: Path, repeat: int) -> tuple[float, int]:
    times, nbytes = [], 0
    for r in range(repeat):
        out = scratch / f"{fn.__name__}-{r}"
        start = time.perf_counter()
        nbytes = fn(inputs, out)
        times.append(time.perf_counter() - start)
        shutil.rmtree(out)
    return min(times), nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--image-kb", type=int, default=50)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        scratch = Path(tmp)
        inputs = build_inputs(scratch / "in", args.samples, args.image_kb, args.per_shard)
        run_copy(inputs, scratch / "warm")  # page cache warm for both
        shutil.rmtree(scratch / "warm")
        t_copy, b_copy = best_time(run_copy, inputs, scratch, args.repeat)
        t_write, b_write = best_time(run_writer, inputs, scratch, args.repeat)
    mb = b_copy / 1e6
    print(f"samples {args.samples}, {len(inputs)} input shards, {mb:.1f} MB")
    print(f"plain copy      {t_copy:.3f} s  {mb / t_copy:8.1f} MB/s")
    print(f"read + write    {t_write:.3f} s  {b_write / 1e6 / t_write:8.1f} MB/s")
    print(f"ratio (copy time / writer time) {t_copy / t_write:.2f}  (target >= 0.7)")


if __name__ == "__main__":
    main()
