"""``make demo``'s entry point on a small sample: the image path end to end, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.demo import main


def test_demo_runs_offline_and_ends_with_the_report(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["--out", str(tmp_path / "demo"), "--samples", "240", "--workers", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("report: ")
    report_path = Path(lines[-1].removeprefix("report: "))
    report = json.loads(report_path.read_text())
    assert report["input_samples"] == 240
    assert report["embed"]["models"]["clip_random_weights"] is True  # said plainly
    assert report["embed"]["models"]["cluster_random_weights"] is False  # real features
    assert "clip_filter" not in [s["name"] for s in report["stages"]]
    assert report["output_shards"]["samples"] == report["kept"] > 0
    assert (tmp_path / "demo" / "run" / "logs" / "run.log").read_text().count("RANDOM WEIGHTS")
    assert any("with more than one 0" in line for line in lines)  # exact copies collapsed
    # the config it wrote runs again, and a finished run does nothing more
    assert main(["--out", str(tmp_path / "demo"), "--samples", "240", "--workers", "0"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]
