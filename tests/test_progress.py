"""Progress a person can follow (issue 21, item 1): done of the total, rate and ETA of every
long step, as a line in the log at a steady interval off a terminal, and one summary line per
step; the reporter itself with a fake clock."""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import pytest

from pipeline.config import validate_config
from pipeline.engines.local import LocalEngine
from pipeline.logs import SHOWN_ON_BAR
from pipeline.progress import (
    NO_PROGRESS,
    NoProgress,
    Progress,
    Samples,
    Tally,
    TaskCounts,
    duration,
    eta,
    rate,
)
from pipeline.runner import run
from pipeline.stages.embed import images_in
from pipeline.synth.images import synth_images

SAMPLES, PER_SHARD = 90, 30


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]


# -- the reporter ----------------------------------------------------------------------


def test_durations_rates_and_eta_read_as_a_person_writes_them() -> None:
    assert duration(3.24) == "3.2s"
    assert duration(492) == "8m12s"
    assert duration(7500) == "2h05m"
    assert rate(2020, 492, "img") == "4.1 img/s"
    assert rate(1_000_000, 4.2054, "sample") == "237,790 sample/s"  # no decimal from 100/s
    assert rate(999, 10, "pair") == "99.9 pair/s"
    assert rate(3, 75, "shard") == "25.0s/shard"  # below one a second: the time per unit
    assert rate(0, 10, "part") == "0 part/s"
    assert eta(500, 2000, 100) == "5m00s"
    assert eta(0, 2000, 100) is None and eta(10, None, 100) is None
    assert eta(2000, 2000, 100) is None


def test_a_line_holds_done_of_total_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO)
    with Progress("embed", 11, "shard", samples=Samples(2020, "images", "img"),
                  interval_s=0, clock=clock, ticker=False) as meter:
        clock.now += 100
        meter.advance(units=3, samples=505)
        assert meter.line() == \
            "embed: 505/2,020 images (25%), 3/11 shards, 5.0 img/s, ETA 5m00s"
        clock.now += 392
        meter.advance(units=8, samples=1515)
    got = lines(caplog)
    assert got[0] == "embed: 505/2,020 images (25%), 3/11 shards, 5.0 img/s, ETA 5m00s"
    assert got[-1] == "embed: 2,020 images from 11 shards in 8m12s, 4.1 img/s"


def test_without_a_sample_total_it_counts_and_takes_the_eta_from_the_units() -> None:
    clock = Clock()
    with Progress("embed", 4, "shard", samples=Samples(None, "images", "img"),
                  clock=clock, ticker=False) as meter:
        clock.now += 60
        meter.advance(units=1, samples=1318)
        assert meter.line() == "embed: 1,318 images, 1/4 shards, 22.0 img/s, ETA 3m00s"
    with Progress("semdedup: clusters", None, "bucket", clock=clock, ticker=False) as meter:
        clock.now += 2
        meter.advance(4)
        assert meter.line() == "semdedup: clusters: 4 buckets, 2.0 bucket/s"


def test_a_line_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.INFO)
    with Progress("dbp: select", 100, "bucket", interval_s=30, clock=clock,
                  ticker=False, summary=False) as meter:
        for _ in range(100):  # one bucket a second
            clock.now += 1
            meter.advance(1)
    got = lines(caplog)
    assert [re.match(r"dbp: select: (\d+)/100 buckets", line)[1] for line in got] == \
        ["30", "60", "90"]
    assert got[0] == "dbp: select: 30/100 buckets (30%), 1.0 bucket/s, ETA 1m10s"


def test_the_ticker_logs_while_nothing_advances(caplog: pytest.LogCaptureFixture) -> None:
    """A task that takes long still gets its lines at the interval."""
    import time

    caplog.set_level(logging.INFO)
    with Progress("dbp: fit", 1, "fit", interval_s=0.02, summary=False):
        time.sleep(0.4)
    assert len(lines(caplog)) >= 2
    assert all(line.startswith("dbp: fit: 0/1 fit (0%), 0 fit/s") for line in lines(caplog))


def test_no_summary_when_the_step_fails(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(RuntimeError), Progress("ledger", 3, "part", ticker=False) as meter:
        meter.advance(1)
        raise RuntimeError("boom")
    assert lines(caplog) == []
    with Progress("ledger", 3, "part", ticker=False) as meter:
        meter.advance(3)
    assert re.fullmatch(r"ledger: 3 parts in \d+\.\ds, .*", lines(caplog)[-1])


def test_a_bar_keeps_its_final_state_and_its_lines_skip_the_console(
        capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with Progress("read", 5, "part", bar=True, interval_s=0, ticker=False) as meter:
        for _ in range(5):
            meter.advance(1)
    final = capsys.readouterr().err.split("\r")[-1]  # what the terminal shows at the end
    assert final.startswith("read: 100%") and "5/5" in final and final.endswith("\n")
    shown = [r for r in caplog.records if r.name == "pipeline.progress"]
    assert all(getattr(r, SHOWN_ON_BAR) for r in shown[:-1])  # in the log file, not twice
    assert not getattr(shown[-1], SHOWN_ON_BAR, False)  # the summary: everywhere


def test_a_copy_in_another_process_shows_nothing_and_tasks_return_their_counts() -> None:
    meter = Progress("embed", 2, "shard", ticker=False)
    assert isinstance(pickle.loads(pickle.dumps(meter)), NoProgress)
    here, there = Tally(meter), Tally(pickle.loads(pickle.dumps(meter)))
    for tally in (here, there):
        tally.advance(units=1, samples=30)
    assert here.counts() == TaskCounts(1, 30, True) and there.counts() == TaskCounts(1, 30, False)
    for counts in (here.counts(), there.counts()):  # the driver adds what was not shown
        meter.add(counts)
    assert (meter.units_done, meter.samples_done) == (2, 60)
    NO_PROGRESS.add(there.counts())  # and a silenced meter takes anything


def test_an_engine_map_advances_its_callers_meter() -> None:
    meter = Progress("square", 6, "item", ticker=False)
    with meter:
        got = list(LocalEngine(threads=2).map(lambda x: x * x, range(6), desc="square",
                                              total=6, concurrent=True, progress=meter))
    assert got == [x * x for x in range(6)] and meter.units_done == 6


# -- a run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_images(tmp_path_factory.mktemp("progress") / "in", SAMPLES, seed=4,
                        samples_per_shard=PER_SHARD, concepts=3)


def test_the_image_total_comes_from_img2datasets_stats_or_a_header_scan(
        shards: Path, tmp_path: Path) -> None:
    import gzip

    tars = sorted(str(p) for p in shards.glob("*.tar"))
    assert images_in(tars) == SAMPLES
    stats = json.loads(Path(tars[0]).with_name("00000_stats.json").read_text())
    stats["successes"] += 1000  # img2dataset's own figure wins where there is one
    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "00000.tar").write_bytes(Path(tars[0]).read_bytes())
    (tmp_path / "stats" / "00000_stats.json").write_text(json.dumps(stats))
    assert images_in([str(tmp_path / "stats" / "00000.tar")]) == PER_SHARD + 1000
    (tmp_path / "00000.tar").write_bytes(Path(tars[0]).read_bytes())  # no stats beside it
    assert images_in([*tars, str(tmp_path / "00000.tar")]) == SAMPLES + PER_SHARD  # scanned
    (tmp_path / "00000.tar.gz").write_bytes(gzip.compress(Path(tars[0]).read_bytes()))
    assert images_in([*tars, str(tmp_path / "00000.tar.gz")]) is None  # neither: no total
    assert images_in([]) == 0


def test_the_log_of_an_image_run_holds_progress_lines_and_a_summary_per_step(
        shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # as the command line logs (pytest's root: warnings)
    out = tmp_path / "out"
    run(validate_config({
        "input": {"shards": str(shards)}, "output": str(out), "seed": 0,
        "progress": True, "progress_interval_s": 0,  # a line whenever a step advances
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
                  "workers": 0},
        "semdedup": {"k": 2, "eps": 0.01}, "dbp": {"k": 2, "keep_fraction": 0.5},
        "kmeans": {"niter": 2}, "write": {"max_count": 20, "shards_per_task": 1}}))
    log = (out / "logs" / "run.log").read_text()
    shards_in = SAMPLES // PER_SHARD
    # embed counts images up to the total of img2dataset's stats, and shards
    progress = re.findall(r"embed: ([\d,]+)/([\d,]+) images \(\d+%\), (\d+)/(\d+) shards, "
                          r"[\d.,]+ img/s", log)
    assert progress, log
    assert {(total, shards) for _, total, _, shards in progress} == \
        {(str(SAMPLES), str(shards_in))}
    assert (str(SAMPLES), str(SAMPLES), str(shards_in), str(shards_in)) in progress
    assert re.search(rf"embed: {SAMPLES} images from {shards_in} shards in [\dms.]+, ", log)
    # the other long steps: units done of their total, then one summary line each
    for step, unit in (("read", "part"),  # (the uids' maps run only where uids repeat)
                       ("semdedup: assign", "part"), ("semdedup: clusters", "bucket"),
                       ("dbp: select", "bucket"), ("ledger", "part"),
                       ("write shards", "range")):
        assert re.search(rf"{step}: ([\d,/]+ \w+( \(\d+%\))?, )?\d+/\d+ {unit}s?", log), step
        assert len(re.findall(rf"INFO pipeline.progress: {step}: [\d,]+ \w+ "
                              rf"(from \d+ {unit}s? )?in [\dms.]+, ", log)) == 1, step
    assert re.search(r"write shards: \d+/\d+ samples \(\d+%\), \d+/\d+ ranges?", log)
    # the fits count their iterations (run where the fit runs: here, the driver's log)
    for step in ("semdedup", "dbp"):
        assert re.search(rf"INFO pipeline.progress: {step}: fit: 2/2 iterations \(100%\), ",
                         log), step


WORKER_CODE = """
import logging, sys
if sys.argv[1] == "configured":  # the command line's process: its own handler
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from pipeline.logs import worker_lines
from pipeline.progress import Progress
with worker_lines(), Progress("semdedup: fit", 2, "iteration", interval_s=0, summary=False,
                              ticker=False) as meter:
    meter.advance(1)
    meter.advance(1)
logging.getLogger("pipeline.progress").info("after the block")
"""


@pytest.mark.parametrize("process", ["worker", "configured"])
def test_a_worker_s_fit_shows_its_progress_lines(process: str) -> None:
    """In a process whose logging nobody set up (a Ray or Spark worker) the fit's progress
    lines go to its stderr, which Ray shows on the driver's console, and only within the
    fit; where the command line set logging up they go where it says, once."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", WORKER_CODE, process], capture_output=True,
                         text=True, timeout=120, check=True)
    shown, other = (out.stderr, out.stdout) if process == "worker" else \
        (out.stdout, out.stderr)
    assert shown.count("semdedup: fit: 1/2 iterations (50%)") == 1, (out.stdout, out.stderr)
    assert "semdedup: fit: 2/2 iterations (100%)" in shown
    assert "semdedup: fit" not in other
    assert ("after the block" in shown) == (process == "configured")


def test_a_big_cluster_logs_its_pairs_and_rows_as_it_is_decided(
        caplog: pytest.LogCaptureFixture) -> None:
    """A cluster decided block by block with a meter shows its pairs and rows done, rising
    to all of them, and one summary line; its decisions are those without a meter."""
    import numpy as np

    from pipeline.algorithms.semdedup import decide_cluster
    from pipeline.stages.semdedup import ClusterLines

    x = np.random.default_rng(3).standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[200:220] = x[5]  # copies: decided as rows, their columns left out
    task = type("Task", (), {"progress_interval_s": 0})()
    with caplog.at_level(logging.INFO, logger="pipeline.progress"), \
            ClusterLines(task, 7, 300) as meter:
        got = decide_cluster(x, 0.1, block_rows=64, meter=meter)
    want = decide_cluster(x, 0.1, block_rows=64)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want, strict=True))
    shown = [line for line in lines(caplog) if line.startswith("semdedup: cluster 7 ")]
    done = [int(m.group(1).replace(",", "")) for line in shown
            if (m := re.match(r"semdedup: cluster 7 \(300 members\): ([\d,]+)/44,850 pairs "
                              r"\(\d+%\), [\d,]+/299 rows", line))]
    assert len(done) >= 4 and done == sorted(done) and done[-1] == 300 * 299 // 2, shown
    assert re.fullmatch(r"semdedup: cluster 7 \(300 members\): 44,850 pairs from 299 rows "
                        r"in .*", shown[-1]), shown


def test_a_run_meters_only_clusters_of_enough_pairs(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """In a run with progress lines, the clusters of METERED_PAIRS pairs or more (and only
    they) log their own, and the step's lines count every cluster's pairs; with progress
    off, no cluster logs its own."""
    caplog.set_level(logging.INFO)  # as the command line logs (pytest's root: warnings)
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.stages import semdedup as stage
    from pipeline.synth.embeddings import SynthSpec, synth_embeddings

    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=1200, dim=16, concepts=3))
    monkeypatch.setattr(stage, "METERED_PAIRS", 25_000)  # 225 members or more
    for progress in (True, False):
        out = tmp_path / f"out-{progress}"
        run(validate_config({
            "input": {"embeddings": str(data)}, "output": str(out), "seed": 0,
            "progress": progress, "progress_interval_s": 0,
            "semdedup": {"k": 6, "eps": 0.05}, "dbp": {"k": 2, "keep_fraction": 0.5}}))
        log = (out / "logs" / "run.log").read_text()
        metered = {int(c): int(n.replace(",", "")) for c, n in re.findall(
            r"semdedup: cluster (\d+) \(([\d,]+) members\): [\d,]+ pairs from", log)}
        if not progress:
            assert not metered, log
            continue
        cluster = pq.read_table(out / "ledger", columns=["dedup_cluster"]).column(
            "dedup_cluster").drop_null().to_numpy()
        sizes = np.bincount(cluster, minlength=6)
        assert metered == {c: int(n) for c, n in enumerate(sizes) if n * (n - 1) // 2 >= 25_000}
        assert metered and len(metered) < len(sizes), (metered, sizes)
        # the step's own lines count the buckets and their pairs, and take the ETA from these
        pairs = int(sum(int(n) * (int(n) - 1) // 2 for n in sizes))
        assert re.search(rf"semdedup: clusters: {pairs:,}/{pairs:,} pairs \(100%\), 1/1 bucket",
                         log), log
        assert f"semdedup: clusters: {pairs:,} pairs from 1 bucket in " in log, log
