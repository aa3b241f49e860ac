"""bench/bench_embed.py runs end to end on the CPU at a tiny size (a smoke test: the figures
themselves mean nothing here; on a GPU, bench/gpu_check.sh runs it at full size)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_embed.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_embed", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_embed_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    out = tmp_path / "figures.json"
    got = bench.main(["--device", "cpu", "--images", "24", "--shards", "2", "--batch-size",
                      "8", "--workers", "0", "--min-size", "40", "--max-size", "90",
                      "--png-fraction", "0.25", "--repeat", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    stages = ("read", "cpu decode", "tensor decode", "cpu preprocess", "tensor preprocess",
              "bare models", "encode_batch", "step (cpu)", "step (tensor)")
    for stage in stages:
        assert got["images_per_s"][stage] > 0, stage
        assert f"{stage} " in printed
    assert got["routes"]["tensor path"] > 0 and sum(got["routes"].values()) == 24
    assert any(why.startswith("cpu path: not a JPEG") for why in got["routes"])  # the PNGs
    assert got["step (cpu) / bare"] > 0 and got["step (tensor) / bare"] > 0
    agreement = got["agreement"]
    assert agreement["same_outcomes"] and agreement["embedded"] == 24
    assert agreement["cosine_min"] >= 0.999
    assert out.is_file()
