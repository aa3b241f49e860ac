"""``make demo``'s entry point on a small sample: the image path end to end, offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.demo import main, planted_duplicate_figures
from pipeline.runner import RunSummary


def test_demo_runs_offline_and_ends_with_the_report(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["--out", str(tmp_path / "demo"), "--samples", "240", "--workers", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("page: ") and lines[-1].endswith("open it in a browser")
    page = Path(lines[-1].split()[1])
    assert page.name == "index.html" and 'id="demo"' in page.read_text()
    assert lines[-2].startswith("report: ")
    report_path = Path(lines[-2].removeprefix("report: "))
    report = json.loads(report_path.read_text())
    assert report["input_samples"] == 240
    assert report["embed"]["models"]["clip_random_weights"] is True  # said plainly
    assert report["embed"]["models"]["cluster_random_weights"] is False  # real features
    assert "clip_filter" not in [s["name"] for s in report["stages"]]
    assert report["output_shards"]["samples"] == report["kept"] > 0
    assert (tmp_path / "demo" / "run" / "logs" / "run.log").read_text().count("RANDOM WEIGHTS")
    assert any("with more than one 0" in line for line in lines)  # every group collapsed
    found = [re.search(r"recall (\d\.\d\d)\).*precision (\d\.\d\d)\)", line) for line in lines]
    recall, precision = (float(v) for v in next(m for m in found if m).groups())
    assert recall >= 0.9 and precision >= 0.9  # of 24 planted copies
    figures = planted_duplicate_figures(tmp_path / "demo" / "data",
                                        RunSummary(report_path.parents[1], 240, report["kept"],
                                                   report))
    assert figures["planted_exact"] == figures["planted_near"] == 12
    assert (round(figures["recall"], 2), round(figures["precision"], 2)) == (recall, precision)
    assert report["demo"] == figures  # the report (and its page) show them
    semdedup = next(stage for stage in report["stages"] if stage["name"] == "semdedup")
    assert figures["semdedup_removed"] == semdedup["removed"]
    # the config it wrote runs again, and a finished run does nothing more
    assert main(["--out", str(tmp_path / "demo"), "--samples", "240", "--workers", "0"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]
