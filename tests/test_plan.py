"""`conceptprune plan`: what-if dbp budgets from a finished run equal those of full runs with
the same settings, are computed without reading any embedding, and fail clearly."""

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

from pipeline.cli import app
from pipeline.config import validate_config
from pipeline.plan import PlanError, load_run, plan_budgets, plan_totals
from pipeline.runner import run
from pipeline.synth.embeddings import SynthSpec, synth_embeddings

K = 5
BASE = {"keep_fraction": 0.4, "temperature": 0.1, "balance": 0.0}


def run_once(data: Path, out: Path, work: Path | None = None, **dbp: object) -> Path:
    """A small, fast embeddings run (the same clusters in every run, on any thread count)."""
    cfg = {"input": {"embeddings": str(data)}, "output": str(out), "seed": 0,
           "progress": False, "semdedup": {"k": 2}, "kmeans": {"niter": 2},
           "dbp": {"k": K, **dbp}}
    if work is not None:
        cfg["work"] = str(work)
    run(validate_config(cfg))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan")
    return synth_embeddings(root / "data", SynthSpec(samples=300, dim=16, concepts=5))


@pytest.fixture(scope="module")
def base(data: Path) -> Path:
    return run_once(data, data.parent / "base", **BASE)


def combination(plan: pa.Table, keep_fraction: float | None, keep_count: int | None,
                temperature: float, balance: float) -> pa.Table:
    """The rows of one combination of a plan."""
    mask = pc.and_(pc.equal(plan.column("temperature"), temperature),
                   pc.equal(plan.column("balance"), balance))
    if keep_count is None:
        mask = pc.and_(mask, pc.equal(plan.column("keep_fraction"), keep_fraction))
    else:
        mask = pc.and_(mask, pc.equal(plan.column("keep_count"), keep_count))
    rows = plan.filter(mask)
    assert rows.num_rows == K
    return rows


def test_plan_reproduces_the_run_s_own_budgets(base: Path) -> None:
    clusters, params = load_run(base)
    plan = plan_budgets(clusters, [], [], [], params["dbp"])
    assert plan.column("run_setting").to_pylist() == [True] * K
    assert plan.column("budget").to_pylist() == clusters.column("budget").to_pylist()
    assert plan.column("probability").to_pylist() == clusters.column("probability").to_pylist()


@pytest.mark.parametrize("setting", [
    {"keep_fraction": 0.2, "temperature": 0.05, "balance": 0.0},
    {"keep_fraction": 0.3, "temperature": 0.01, "balance": 1.0},  # floors bind
    {"keep_count": 100, "temperature": 0.5, "balance": 0.0},
], ids=["r0.2-t0.05", "r0.3-t0.01-b1", "n100-t0.5"])
def test_plan_budgets_equal_a_full_run_with_those_settings(
        data: Path, base: Path, tmp_path: Path, setting: dict) -> None:
    other = run_once(data, tmp_path / "out", work=tmp_path / "work", **setting)
    got = pq.read_table(tmp_path / "work" / "dbp" / "clusters.parquet")
    clusters, params = load_run(base)
    # the concepts do not depend on the planned settings
    assert got.column("size").equals(clusters.column("size"))
    assert got.column("complexity").equals(clusters.column("complexity"))

    plan = plan_budgets(clusters, [0.2, 0.3], [0.01, 0.05, 0.1, 0.5], [0.0, 1.0],
                        params["dbp"], keep_counts=[100])
    rows = combination(plan, setting.get("keep_fraction"), setting.get("keep_count"),
                       setting["temperature"], setting["balance"])
    assert rows.column("status").to_pylist() == ["ok"] * K
    assert rows.column("budget").to_pylist() == got.column("budget").to_pylist()
    assert rows.column("probability").to_pylist() == got.column("probability").to_pylist()
    assert not any(rows.column("run_setting").to_pylist())
    if setting["balance"]:  # some concepts are held at their lower bound
        budget, floor = rows.column("budget").to_numpy(), rows.column("floor").to_numpy()
        assert ((budget == floor) & (floor < rows.column("size").to_numpy())).any()

    # the other run (its work folder elsewhere) planned with its own settings
    own_clusters, own = load_run(other)
    own_plan = plan_budgets(own_clusters, [], [], [], own["dbp"])
    assert own_plan.column("budget").to_pylist() == got.column("budget").to_pylist()
    assert own_plan.column("run_setting").to_pylist() == [True] * K


def test_totals_describe_each_combination(base: Path) -> None:
    clusters, params = load_run(base)
    plan = plan_budgets(clusters, [0.2, 0.5], [0.01, 1.0], [0.0, 3.0], params["dbp"])
    totals = {(r["keep_fraction"], r["temperature"], r["balance"]): r
              for r in plan_totals(plan).to_pylist()}
    assert len(totals) == 8
    for (_, _, balance), r in totals.items():
        if balance == 3.0:  # floors of 3N/k each cannot fit in N
            assert r["status"] == "impossible"
            assert "lower bounds sum to" in r["error"] and r["budget_sum"] is None
            continue
        assert r["status"] == "ok" and r["budget_sum"] == r["target"]
        assert 1 <= r["effective_concepts"] <= r["concepts"] == K
        assert 0 <= r["shift_from_random"] <= 1
    # a higher temperature spreads the budget over more concepts
    assert totals[(0.2, 1.0, 0.0)]["effective_concepts"] > \
        totals[(0.2, 0.01, 0.0)]["effective_concepts"]
    assert totals[(0.2, 1.0, 0.0)]["shift_from_random"] < \
        totals[(0.2, 0.01, 0.0)]["shift_from_random"]


def plan_cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["plan", *map(str, args)], env={"COLUMNS": "120"})


def test_cli_prints_and_writes_the_plan(base: Path, tmp_path: Path) -> None:
    res = plan_cli(base, "--keep-fraction", "0.2,0.4", "--temperature", "0.05,0.1",
                   "--balance", "0,3")
    assert res.exit_code == 0, res.output
    assert "dbp budgets" in res.output and "budget per concept" in res.output
    assert "impossible: dbp lower bounds sum to" in res.output
    report = base / "report"
    for name in ("plan.parquet", "plan.csv", "plan_totals.csv", "plan.svg"):
        assert f"wrote {report / name}" in res.output
    plan = pq.read_table(report / "plan.parquet")
    assert plan.num_rows == 8 * K
    assert pcsv.read_csv(report / "plan.csv").num_rows == 8 * K
    totals = pcsv.read_csv(report / "plan_totals.csv").to_pylist()
    assert [r["status"] for r in totals] == ["ok", "ok", "impossible", "impossible"] * 2
    assert sum(r["run_setting"] for r in totals) == 1
    assert "<svg" in (report / "plan.svg").read_text()

    assert "*: the run's own setting" in res.output and "✗: impossible" in res.output

    out = tmp_path / "elsewhere" / "what-if.csv"
    res = plan_cli(base, "--temperature", "0.3", "--out", out, "--no-concepts")
    assert res.exit_code == 0, res.output
    assert "budget per concept" not in res.output
    # no row is the run's own or impossible: the legend explains neither mark
    assert "*: the run's own" not in res.output and "✗" not in res.output
    for name in ("what-if.parquet", "what-if.csv", "what-if_totals.csv", "what-if.svg"):
        assert (out.parent / name).is_file()


def test_plan_files_of_an_earlier_run_go_when_the_run_is_done_again(data: Path,
                                                                    tmp_path: Path) -> None:
    """A rerun with another dbp.k would leave report/plan.* describing budgets that no
    longer hold: the run removes them (and only them)."""
    out = run_once(data, tmp_path / "out", **BASE)
    assert plan_cli(out, "--keep-fraction", "0.2").exit_code == 0
    assert plan_cli(out, "--eps", "0.05").exit_code == 0
    report = out / "report"
    planned = {p.name for p in report.glob("plan*")}
    assert {"plan.csv", "plan.svg", "plan_totals.csv", "plan_eps.csv"} <= planned
    (report / "plan-notes.txt").write_text("mine")
    run_once(data, out, **{**BASE, "keep_fraction": 0.3})
    assert {p.name for p in report.glob("plan*")} == {"plan-notes.txt"}


def test_cli_refuses_what_is_not_a_finished_dbp_run(data: Path, tmp_path: Path) -> None:
    res = plan_cli(tmp_path)
    assert res.exit_code == 1
    assert f"{tmp_path / 'report' / 'report.json'} does not exist" in res.output
    assert "not a finished run" in res.output and "Traceback" not in res.output

    no_dbp = run_once(data, tmp_path / "no-dbp", enabled=False)
    res = plan_cli(no_dbp)
    assert res.exit_code == 1
    assert "had dbp disabled" in res.output and "--set dbp.enabled=true" in res.output

    res = plan_cli(no_dbp.parent, "--temperature", "0.1,x")
    assert res.exit_code == 1 and "--temperature takes a comma list" in res.output


def only_the_report(base: Path, to: Path, clusters: bool = True) -> Path:
    """A copy of a run with report.json (its input pointing nowhere) and, optionally,
    clusters.parquet: no vectors, no ledger, no input folder."""
    report = json.loads((base / "report" / "report.json").read_text())
    report["parameters"]["input"]["embeddings"] = str(to / "no-such-input")
    (to / "report").mkdir(parents=True)
    (to / "report" / "report.json").write_text(json.dumps(report))
    if clusters:
        (to / "_work" / "dbp").mkdir(parents=True)
        shutil.copy(base / "_work" / "dbp" / "clusters.parquet", to / "_work" / "dbp")
    return to


def test_plan_reads_no_embedding(base: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    expected = pq.read_table(base / "_work" / "dbp" / "clusters.parquet").column("budget")
    copy = only_the_report(base, tmp_path / "run")

    def no_vectors(*args: object, **kwargs: object) -> None:
        raise AssertionError("plan read an array file")

    monkeypatch.setattr(np, "load", no_vectors)
    res = plan_cli(copy)
    assert res.exit_code == 0, res.output
    plan = pq.read_table(copy / "report" / "plan.parquet")
    assert plan.column("budget").to_pylist() == expected.to_pylist()


def test_missing_or_stale_concept_table(base: Path, tmp_path: Path) -> None:
    expected = pq.read_table(base / "_work" / "dbp" / "clusters.parquet")
    # the work folder deleted: the report's copy of the concepts is used
    copy = only_the_report(base, tmp_path / "no-work", clusters=False)
    clusters, params = load_run(copy)
    assert plan_budgets(clusters, [], [], [], params["dbp"]).column("budget").equals(
        expected.column("budget"))

    # ... and without that copy the missing file is named
    report_path = copy / "report" / "report.json"
    report = json.loads(report_path.read_text())
    del report["clusters"]
    report_path.write_text(json.dumps(report))
    res = plan_cli(copy)
    assert res.exit_code == 1
    assert f"{copy / '_work' / 'dbp' / 'clusters.parquet'} is missing" in res.output

    # a work folder another run rewrote is refused
    stale = only_the_report(base, tmp_path / "stale")
    path = stale / "_work" / "dbp" / "clusters.parquet"
    size = expected.column("size").to_numpy() + 1
    pq.write_table(expected.set_column(1, "size", pa.array(size)), path)
    with pytest.raises(PlanError, match="does not hold the concepts"):
        load_run(stale)


def test_empty_concepts_get_nothing() -> None:
    """An empty concept (null complexity, as a run writes it) has probability and budget 0
    and is left out of the per-concept ratios, as in a run."""
    clusters = pa.table({"id": pa.array([0, 1, 2], pa.int32()),
                         "size": pa.array([10, 0, 30], pa.int64()),
                         "complexity": pa.array([0.3, None, 0.5], pa.float64())})
    plan = plan_budgets(clusters, [0.5], [0.1], [0.0], {"k": 3, **BASE})
    assert plan.column("probability")[1].as_py() == 0.0
    budget = plan.column("budget").to_pylist()
    assert budget[1] == 0 and sum(budget) == 20
    assert plan.column("kept_ratio")[1].as_py() is None
    (totals,) = plan_totals(plan).to_pylist()
    assert totals["concepts"] == 2 and totals["concepts_kept"] == 2
