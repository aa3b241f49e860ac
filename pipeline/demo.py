"""``make demo``: generate a sample dataset and prune it on the local engine, offline."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pipeline.config import validate_config
from pipeline.runner import run
from pipeline.synth.embeddings import SynthSpec, synth_embeddings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("demo"))
    ap.add_argument("--samples", type=int, default=20000)
    args = ap.parse_args(argv)

    data = args.out / "embeddings"
    if not (data / "ground_truth.parquet").exists():
        shutil.rmtree(data, ignore_errors=True)
        print(f"generating {args.samples} samples of clustered embeddings in {data}")
        synth_embeddings(data, SynthSpec(samples=args.samples, dim=256, concepts=40, files=4))
    cfg = validate_config({
        "input": {"embeddings": str(data)},
        "output": str(args.out / "run"),
        "semdedup": {"k": "auto", "eps": 0.02},
        "clip_filter": {"enabled": True, "keep_fraction": 0.9},
        "dbp": {"k": 20, "keep_fraction": 0.5},
    })
    summary = run(cfg)
    print(f"kept {summary.kept} of {summary.input_samples} samples")
    for stage in summary.report["stages"]:
        print(f"  {stage['name']:<12} in {stage['in']:>7}  removed {stage['removed']:>7}  "
              f"out {stage['out']:>7}")
    print(f"subset: {summary.output / 'subset.npy'}")
    print(f"ledger: {summary.output / 'ledger'}")
    print(f"report: {summary.report_path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
