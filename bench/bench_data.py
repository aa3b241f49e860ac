"""The generated embeddings the benchmarks share, made once and cached under ``bench/out``."""

from __future__ import annotations

from pathlib import Path


def cached_embeddings(out: Path, samples: int, dim: int, files: int) -> tuple[Path, bool]:
    """The clip-retrieval folder of ``samples`` x ``dim`` clustered embeddings with planted
    duplicates, and whether it was made just now (not timed by any benchmark)."""
    data = out / f"emb_{samples}x{dim}"
    if (data / "ground_truth.parquet").exists():
        return data, False
    from pipeline.synth.embeddings import SynthSpec, synth_embeddings

    print(f"generating {data} (cached for later runs; not timed) ...", flush=True)
    synth_embeddings(data, SynthSpec(samples=samples, dim=dim, concepts=200, files=files,
                                     seed=0))
    return data, True
