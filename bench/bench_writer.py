"""Write-step throughput against a plain file copy of the same kept bytes.

Builds input shards of random-byte "images" (plus caption and json members), ledger parts
that keep a fraction of the samples and the metadata parts the embed step writes, then times,
side by side in one run, the real write step, ``write_kept`` (kept samples copied into new
tars with their parquet and stats files), both ways it works: by the spans the embed step
recorded (its path for local tars) and by parsing the shards again (its fallback); and
``shutil.copyfile`` of the tars it wrote, i.e. the same kept bytes. Prints the times and the
ratios copy_time / write_time (the target is >= 0.7). The three are interleaved, each run
starts after an ``os.sync``, and the best time of each is kept, so page-cache and write-back
noise counts against none.

    python bench/bench_writer.py [--samples 4000] [--image-kb 50] [--keep 0.5] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.shard_writer import ShardWriter
from pipeline.io.shards import identity_metadata, iter_samples, span_columns, tar_identity
from pipeline.stages.write_shards import write_kept


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


def build_ledger(root: Path, inputs: list[Path], keep: float) -> tuple[list[Path], list[Path]]:
    """Per input shard, a ledger part with ``keep`` of its samples marked kept at random, and
    the metadata part the embed step writes (where each sample lies in the tar)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    ledgers, metas = [], []
    for shard_index, path in enumerate(inputs):
        samples = list(iter_samples(str(path)))
        status = np.where(rng.random(len(samples)) < keep, "kept", "removed")
        ledger = root / f"part-{shard_index:05d}.parquet"
        pq.write_table(pa.table({"key": [s.key for s in samples], "status": status.tolist()}),
                       ledger)
        table = pa.table({
            "key": [s.key for s in samples], "uid": [s.uid for s in samples],
            "caption": [s.caption for s in samples],
            **span_columns([s.span for s in samples], [s.json_span for s in samples])})
        meta = root / f"metadata_{shard_index}.parquet"
        pq.write_table(table.replace_schema_metadata(
            identity_metadata(tar_identity(str(path)))), meta)
        ledgers.append(ledger)
        metas.append(meta)
    return ledgers, metas


def timed(fn: Callable[[Path], int], out: Path) -> tuple[float, int]:
    """One timed run, started with no dirty pages so the kernel's write-back throttling
    (which the previous run's output would trigger) falls on neither side."""
    os.sync()
    start = time.perf_counter()
    nbytes = fn(out)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return elapsed, nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--image-kb", type=int, default=50)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of samples kept")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        scratch = Path(tmp)
        inputs = build_inputs(scratch / "in", args.samples, args.image_kb, args.per_shard)
        parts, metas = build_ledger(scratch / "ledger", inputs, args.keep)
        urls = [str(p) for p in inputs]
        kept = scratch / "kept"  # the reference output: its tars are the bytes to copy
        written, _ = write_kept(urls, parts, kept, args.per_shard, 1 << 40, metadata_parts=metas)
        kept_tars = [s.path for s in written]
        for path in inputs:  # the page cache warm for all
            path.read_bytes()

        def by_span(out: Path) -> int:
            shards, counts = write_kept(urls, parts, out, args.per_shard, 1 << 40,
                                                metadata_parts=metas)
            assert counts.by_parsing == 0
            return sum(s.bytes for s in shards)

        def by_parsing(out: Path) -> int:
            return sum(s.bytes for s in write_kept(urls, parts, out, args.per_shard, 1 << 40)[0])

        def plain_copy(out: Path) -> int:
            out.mkdir(parents=True)
            for path in kept_tars:
                shutil.copyfile(path, out / path.name)
            return sum(p.stat().st_size for p in kept_tars)

        runs: dict[str, list[tuple[float, int]]] = {"copy": [], "span": [], "parse": []}
        for r in range(args.repeat):  # interleaved, so drift in the machine hits all
            runs["copy"].append(timed(plain_copy, scratch / f"copy-{r}"))
            runs["span"].append(timed(by_span, scratch / f"span-{r}"))
            runs["parse"].append(timed(by_parsing, scratch / f"parse-{r}"))
    (t_copy, b_copy), (t_span, b_span), (t_parse, b_parse) = (
        min(runs[k]) for k in ("copy", "span", "parse"))
    assert b_copy == b_span == b_parse
    mb = b_copy / 1e6
    print(f"samples {args.samples} in {len(inputs)} shards, keep {args.keep}: "
          f"{len(kept_tars)} output tars, {mb:.1f} MB kept")
    print(f"plain copy of the kept tars      {t_copy:.3f} s  {mb / t_copy:8.1f} MB/s")
    print(f"write step, by recorded span     {t_span:.3f} s  {mb / t_span:8.1f} MB/s")
    print(f"write step, parsing shards again {t_parse:.3f} s  {mb / t_parse:8.1f} MB/s")
    print(f"ratio copy time / write time: by span {t_copy / t_span:.2f} (target >= 0.7), "
          f"by parsing {t_copy / t_parse:.2f}")


if __name__ == "__main__":
    main()
