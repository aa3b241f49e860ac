"""`conceptprune plan RUN --eps`: semdedup's removals at other eps, planned from one run, are
exactly those of full reruns with those eps (counts, per cluster, and the very uids), even for
members whose similarity lies within float32 rounding of 1 - eps; the report's curve agrees
with the run; a run without exact similarities is planned from float32 values, with a warning.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from typer.testing import CliRunner

from pipeline.algorithms.semdedup import removed_at
from pipeline.cli import app
from pipeline.config import validate_config
from pipeline.plan_eps import load_eps_run, plan_eps, removed_masks
from pipeline.runner import run
from pipeline.stages.semdedup import DECISION_DTYPE
from pipeline.stages.semdedup_eps import EXACT, GRID, read_part
from pipeline.stages.shuffle import read_results, write_results
from pipeline.synth.embeddings import SynthSpec, synth_embeddings
from pipeline.workdir import write_npy

RUN_EPS = 0.07
OTHER_EPS = (0.02, 0.05, 0.1)
K = 4
FILES = 2
PAIRS = 60  # per file and eps: near copies at cosine 1 - eps (+- SPREAD) of their source
SPREAD = 1e-7


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def plant_lines(data: Path, seed: int = 3) -> None:
    """Put rows at cosine 1 - eps (within a few float32 steps) of an earlier row, for the
    run's eps and every other: a plan deciding on float32 values would miss some."""
    rng = np.random.default_rng(seed)
    for f in range(FILES):
        path = data / "img_emb" / f"img_emb_{f}.npy"
        img = np.load(path).astype(np.float64)
        n = len(img)
        rows = rng.choice(np.arange(n // 2, n), size=PAIRS * (1 + len(OTHER_EPS)), replace=False)
        for i, eps in enumerate((RUN_EPS, *OTHER_EPS)):
            at = rows[i * PAIRS : (i + 1) * PAIRS]
            source = _unit(img[rng.integers(0, n // 2, PAIRS)])
            away = rng.standard_normal(source.shape)
            away = _unit(away - (away * source).sum(axis=1, keepdims=True) * source)
            cos = 1 - eps + rng.uniform(-SPREAD, SPREAD, PAIRS)
            img[at] = cos[:, None] * source + np.sqrt(1 - cos**2)[:, None] * away
        write_npy(path, img.astype(np.float32))


def run_at(data: Path, out: Path, eps: float) -> Path:
    """A small full run (semdedup, clip_filter, dbp): the same clusters at any eps."""
    run(validate_config({
        "input": {"embeddings": str(data)}, "output": str(out), "seed": 0, "progress": False,
        "semdedup": {"k": K, "eps": eps}, "kmeans": {"niter": 2},
        "clip_filter": {"enabled": True, "keep_fraction": 0.9},
        "dbp": {"k": 3, "keep_fraction": 0.5}}))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan-eps")
    data = synth_embeddings(root / "data", SynthSpec(samples=4000, dim=32, concepts=8,
                                                     files=FILES, dtype="float32"))
    plant_lines(data)
    return data


@pytest.fixture(scope="module")
def base(data: Path) -> Path:
    return run_at(data, data.parent / "base", RUN_EPS)


def ledger(out: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(out / "ledger", columns=["uid", "stage", "status", "dedup_cluster",
                                                   "dup_similarity"])
    return {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in table.column_names}


def semdedup_removed(out: Path) -> tuple[set[str], np.ndarray]:
    """A run's semdedup removals (ledger rows of stage semdedup): uids, and count per cluster."""
    led = ledger(out)
    hit = (led["status"] == "removed") & (led["stage"] == "semdedup")
    return (set(led["uid"][hit].tolist()),
            np.bincount(led["dedup_cluster"][hit].astype(np.int64), minlength=K))


def near_line(out: Path, eps: float) -> int:
    """Members whose exact m_j lies within float32 rounding (half a step) of 1 - eps."""
    run_ = load_eps_run(out)
    m = np.concatenate([read_part(p).similarity for p in run_.parts])
    return int((np.abs(m - (1 - eps)) <= 2.0**-25).sum())


@pytest.mark.parametrize("eps", OTHER_EPS)
def test_plan_equals_a_full_rerun(data: Path, base: Path, tmp_path: Path, eps: float) -> None:
    assert near_line(base, eps) > 0, "the data does not test exactness at this eps"
    rerun = run_at(data, tmp_path / "rerun", eps)
    want_uids, want_per_cluster = semdedup_removed(rerun)
    stage = next(s for s in json.loads((rerun / "report" / "report.json").read_text())
                 ["stages"] if s["name"] == "semdedup")

    planned = load_eps_run(base)
    assert planned.source == "work"
    clusters, totals = plan_eps(planned, [eps])
    row = next(r for r in totals.to_pylist() if r["eps"] == eps)
    assert row["exact"] and not row["run_setting"]
    assert row["removed"] == stage["removed"] == len(want_uids)
    assert row["reaching"] == stage["in"]
    per_cluster = clusters.filter(pc.equal(clusters.column("eps"), eps))
    assert per_cluster.column("removed").to_pylist() == want_per_cluster.tolist()

    uids = ledger(base)["uid"]
    got = set(uids[np.concatenate(removed_masks(planned, eps))].tolist())
    assert got == want_uids


def test_float32_values_decide_otherwise(base: Path) -> None:
    """The ledger's float32 m_j put some member on the other side of 1 - eps: a plan made
    from them would differ from the reruns above, and the fallback says so."""
    led = ledger(base)
    rounded = led["dup_similarity"].astype(np.float64)
    exact = np.concatenate([read_part(p).similarity for p in load_eps_run(base).parts])
    differ = [eps for eps in (RUN_EPS, *OTHER_EPS)
              if (removed_at(rounded, eps) != removed_at(exact, eps)).any()]
    assert differ, "no member near enough to 1 - eps for float32 to matter"


def plan_cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["plan", *map(str, args)], env={"COLUMNS": "120"})


def test_without_exact_values_it_warns_and_uses_the_ledger(base: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"  # as a run of an older version left it: no exact column
    shutil.copytree(base, old)
    for path in sorted((old / "_work" / "semdedup").glob("part-*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([EXACT]), path)
    res = plan_cli(old, "--eps", ",".join(map(str, OTHER_EPS)))
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "float32" in res.output
    totals = pcsv.read_csv(old / "report" / "plan_eps_totals.csv").to_pylist()
    assert not any(r["exact"] for r in totals)
    assert load_eps_run(old).source == "ledger"
    exact = {r["eps"]: r["removed"] for r in plan_eps(load_eps_run(base), OTHER_EPS)[1]
             .to_pylist()}
    for r in totals:  # off by at most the members near the line
        assert abs(r["removed"] - exact[r["eps"]]) <= near_line(base, r["eps"])

    # an exact column without the values (decisions an older version left, then resumed)
    path = old / "_work" / "semdedup" / "part-00000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.append_column(EXACT, pa.nulls(table.num_rows, pa.float64())), path)
    assert not read_part(path).exact

    # no work folder at all: the ledger too
    shutil.rmtree(old / "_work")
    res = plan_cli(old, "--eps", "0.05")
    assert res.exit_code == 0 and "warning:" in res.output


def test_cli_takes_comma_and_space_lists(base: Path, tmp_path: Path) -> None:
    commas = plan_cli(base, "--eps", "0.02,0.05", "--out", tmp_path / "a")
    spaces = plan_cli(base, "--eps", "0.02 0.05", "--out", tmp_path / "b")
    for res in (commas, spaces):
        assert res.exit_code == 0, res.output
        assert "semdedup removals by eps" in res.output and "0.07*" in res.output
        assert "semdedup's figures alone" in res.output and "warning" not in res.output
        assert "dbp budgets" not in res.output  # --eps alone plans semdedup only
    a = pcsv.read_csv(tmp_path / "a_eps_totals.csv")
    assert a.equals(pcsv.read_csv(tmp_path / "b_eps_totals.csv"))
    assert a.column("eps").to_pylist() == [0.02, 0.05, RUN_EPS]
    assert a.column("run_setting").to_pylist() == [False, False, True]
    per_cluster = pq.read_table(tmp_path / "a_eps.parquet")
    assert per_cluster.num_rows == 3 * K
    assert "<svg" in (tmp_path / "a_eps.svg").read_text()
    assert not (tmp_path / "a.parquet").exists()

    both = plan_cli(base, "--eps", "0.05", "--temperature", "0.1", "--out", tmp_path / "c")
    assert both.exit_code == 0, both.output
    assert "dbp budgets" in both.output and "semdedup removals by eps" in both.output
    assert (tmp_path / "c.parquet").is_file() and (tmp_path / "c_eps.parquet").is_file()

    for bad, says in (("0.02,x", "--eps takes a comma list"), ("1.5", "between 0 and 1"),
                      ("", "--eps takes a comma list")):
        res = plan_cli(base, "--eps", bad)
        assert res.exit_code == 1 and says in res.output, res.output


def test_a_run_without_semdedup_is_refused(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "no-semdedup"
    run(validate_config({"input": {"embeddings": str(data)}, "output": str(out),
                         "progress": False, "semdedup": {"enabled": False},
                         "dbp": {"enabled": False}}))
    res = plan_cli(out, "--eps", "0.05")
    assert res.exit_code == 1 and "had semdedup disabled" in res.output, res.output
    assert "Traceback" not in res.output


def test_report_curve_is_the_run_s(base: Path) -> None:
    report = json.loads((base / "report" / "report.json").read_text())
    stage = next(s for s in report["stages"] if s["name"] == "semdedup")
    curve = report["semdedup"]["curve"]
    assert curve["exact"] and curve["reaching"] == stage["in"]
    assert curve["eps"] == sorted({*GRID, RUN_EPS})
    assert curve["removed"][curve["eps"].index(RUN_EPS)] == stage["removed"]
    totals = plan_eps(load_eps_run(base), curve["eps"])[1]
    assert totals.column("removed").to_pylist() == curve["removed"]
    html = (base / "report" / "index.html").read_text()
    assert 'id="plot-eps"' in html and f"conceptprune plan {base} --eps" in html


def test_decisions_of_an_older_version_mix_with_new_ones(tmp_path: Path) -> None:
    """A run interrupted in semdedup by an older version and resumed by this one has bucket
    decisions without m_j beside ones with it: they are read together, without m_j."""
    old = np.dtype([(n, DECISION_DTYPE[n]) for n in DECISION_DTYPE.names if n != "exact"])
    first, second = np.zeros(3, old), np.zeros(2, DECISION_DTYPE)
    first["row"], second["row"] = [0, 2, 4], [1, 3]
    first["similarity"], second["similarity"] = [0.1, 0.2, 0.3], [0.4, 0.5]
    write_results(tmp_path, 0, 1, np.zeros(3, np.int32), first)
    write_results(tmp_path, 1, 1, np.zeros(2, np.int32), second)
    got = read_results(tmp_path, 2, 0)
    assert got is not None and "exact" not in got.dtype.names
    assert got["row"].tolist() == [0, 2, 4, 1, 3]
    assert got["similarity"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
