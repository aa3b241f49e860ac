"""What-if dbp budgets from a finished run: other keep fractions, temperatures and balances.

The concepts (sizes and complexities) of a run do not depend on those three settings, so the
budgets a full run with other values would give are computed from the run's concept table
alone, with the run's own functions (SPEC §4), in well under a second: no embedding and no
shard is read. semdedup's removals at other eps are planned by ``plan_eps.py``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from pipeline.algorithms import budget as bud
from pipeline.config import DBPConfig
from pipeline.errors import ConceptpruneError
from pipeline.stages.dbp import dbp_target
from pipeline.workdir import atomic_write, write_parquet
from schemas import arrow as schemas


class PlanError(ConceptpruneError, ValueError):
    """A run folder or a setting that cannot be planned; the message names the path or option
    and the fix."""


OPTIONS = {"keep_fraction": "--keep-fraction", "keep_count": "--keep-count",
           "temperature": "--temperature", "balance": "--balance"}
SHOW_CONCEPTS = 30  # per-concept budgets are printed by default up to this many concepts

PLAN = pa.schema([
    ("combination", pa.int32()), ("keep_fraction", pa.float64()), ("keep_count", pa.int64()),
    ("temperature", pa.float64()), ("balance", pa.float64()), ("run_setting", pa.bool_()),
    ("status", pa.string()), ("error", pa.string()), ("reaching", pa.int64()),
    ("target", pa.int64()), ("id", pa.int32()), ("size", pa.int64()),
    ("complexity", pa.float64()), ("probability", pa.float64()), ("floor", pa.int64()),
    ("budget", pa.int64()), ("share", pa.float64()), ("data_share", pa.float64()),
    ("kept_ratio", pa.float64()),
])

SETTING = ["combination", "keep_fraction", "keep_count", "temperature", "balance",
           "run_setting", "status", "error", "reaching", "target"]
TOTALS = pa.schema([PLAN.field(name) for name in SETTING] + [
    ("budget_sum", pa.int64()), ("concepts", pa.int64()), ("concepts_kept", pa.int64()),
    ("concepts_full", pa.int64()), ("concepts_at_floor", pa.int64()),
    ("min_budget", pa.int64()), ("max_budget", pa.int64()),
    ("min_kept_ratio", pa.float64()), ("max_kept_ratio", pa.float64()),
    ("max_share", pa.float64()), ("effective_concepts", pa.float64()),
    ("effective_concepts_data", pa.float64()), ("shift_from_random", pa.float64()),
])


# ---------------------------------------------------------------------------------------------
# reading a run


def read_report(run_dir: Path) -> dict[str, Any]:
    """report/report.json of a finished run (written last by a run), or a PlanError."""
    if not run_dir.is_dir():
        raise PlanError(f"{run_dir} is not a folder; give the output folder of a finished "
                        "`conceptprune run` (the folder holding report/report.json)")
    path = run_dir / "report" / "report.json"
    if not path.is_file():
        raise PlanError(f"{path} does not exist, so {run_dir} is not a finished run; give the "
                        "output folder of a finished `conceptprune run`, or finish this run by "
                        "repeating its `conceptprune run` command (it resumes)")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PlanError(f"cannot read {path} ({err}); repeat the run's `conceptprune run` "
                        "command to write it again") from None
    if not isinstance(report, dict) or not isinstance(report.get("parameters"), dict):
        raise PlanError(f"{path} has no 'parameters'; it was not written by `conceptprune "
                        "run`: give the output folder of a finished run")
    return report


def _clusters_from_report(report: dict[str, Any]) -> pa.Table | None:
    """The concept table the report keeps a copy of (floats survive JSON exactly)."""
    rows = report.get("clusters")
    return pa.Table.from_pylist(rows, schema=schemas.DBP_CLUSTERS) if rows else None


def load_run(run_dir: str | Path) -> tuple[pa.Table, dict[str, Any]]:
    """The concept table (clusters.parquet) and the parameters of a finished dbp run.

    Read from WORK/dbp/clusters.parquet (WORK = parameters["work"], default RUN_DIR/_work);
    when the work folder is gone, from the copy in report.json. Either is checked against
    the report, so a work folder a later run rewrote is refused rather than planned.
    """
    run_dir = Path(run_dir)
    report = read_report(run_dir)
    params = report["parameters"]
    report_path = run_dir / "report" / "report.json"
    dbp = params.get("dbp") or {}
    if not dbp.get("enabled", True):
        raise PlanError(f"the run in {run_dir} had dbp disabled (dbp.enabled: false in "
                        f"{report_path}), so it has no concepts to plan; run it again with "
                        "dbp enabled (--set dbp.enabled=true), then plan that run")
    work = Path(params["work"]) if params.get("work") else run_dir / "_work"
    path = work / "dbp" / "clusters.parquet"
    copy = _clusters_from_report(report)
    if path.is_file():
        try:
            clusters = pq.read_table(path, schema=schemas.DBP_CLUSTERS)
        except (OSError, ValueError, pa.ArrowException) as err:
            raise PlanError(f"cannot read {path} ({err}); repeat the run's `conceptprune run` "
                            "command to rebuild its work folder") from None
        if copy is not None and not (clusters.column("size").equals(copy.column("size"))
                                     and clusters.column("complexity")
                                     .equals(copy.column("complexity"))):
            raise PlanError(f"{path} does not hold the concepts {report_path} reports: the work "
                            "folder was rewritten by another run after this one finished; "
                            "repeat this run's `conceptprune run` command, then plan again")
    elif copy is not None:
        clusters = copy
    else:
        raise PlanError(f"{path} is missing (and {report_path} keeps no copy of the concepts): "
                        "the run's work folder was deleted or moved; repeat the run's "
                        "`conceptprune run` command to rebuild it, then plan again")
    if dbp.get("k") is not None and clusters.num_rows != dbp["k"]:
        raise PlanError(f"{path} holds {clusters.num_rows} concepts but the run's dbp.k is "
                        f"{dbp['k']} ({report_path}); repeat the run, then plan again")
    return clusters, params


# ---------------------------------------------------------------------------------------------
# planning


def _settings(dbp_params: dict[str, Any], keep_fraction: float | None, keep_count: int | None,
              temperature: float, balance: float) -> DBPConfig:
    """The run's dbp settings with the planned values, checked as a run would check them."""
    data = {**dbp_params, "temperature": temperature, "balance": balance,
            "keep_count": keep_count}
    if keep_fraction is not None:
        data["keep_fraction"] = keep_fraction
    try:
        return DBPConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        if name not in OPTIONS:  # a model check (keep_fraction range) names its setting
            name = next((n for n in OPTIONS if n in first["msg"]), "keep_fraction")
        msg = first["msg"].removeprefix("Value error, ")
        raise PlanError(f"{OPTIONS[name]} {data.get(name)}: {msg}") from None


def _unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _targets(dbp_params: dict[str, Any], keep_fractions: Sequence[float],
             keep_counts: Sequence[int]) -> list[tuple[float | None, int | None]]:
    """(keep_fraction, keep_count) pairs to plan; the run's own when none is given."""
    pairs = [(float(r), None) for r in _unique(keep_fractions)]
    pairs += [(None, int(c)) for c in _unique(keep_counts)]
    if pairs:
        return pairs
    if dbp_params.get("keep_count") is not None:
        return [(None, int(dbp_params["keep_count"]))]
    return [(float(dbp_params.get("keep_fraction", 0.5)), None)]


def _is_run_setting(cfg: DBPConfig, run: dict[str, Any], keep_count: int | None) -> bool:
    """Whether a planned combination is the one the run itself used."""
    same_target = (keep_count == run.get("keep_count") if keep_count is not None
                   else run.get("keep_count") is None
                   and cfg.keep_fraction == run.get("keep_fraction"))
    return (same_target and cfg.temperature == run.get("temperature")
            and cfg.balance == run.get("balance"))


def plan_budgets(clusters: pa.Table, keep_fractions: Sequence[float],
                 temperatures: Sequence[float], balances: Sequence[float],
                 dbp_params: dict[str, Any], keep_counts: Sequence[int] = ()) -> pa.Table:
    """Long table: one row per (target, temperature, balance, concept) with its budget.

    Budgets come from the run's own functions (dbp_target, concept_probability,
    concept_budget), so they are exactly those of a full run with these settings. An empty
    list means the run's own value. An impossible combination (BudgetError) keeps its rows
    with status 'impossible', the error, and null budgets.
    """
    size = clusters.column("size").to_numpy().astype(np.int64)
    complexity = pc.fill_null(clusters.column("complexity"), math.nan).to_numpy()
    ids = clusters.column("id").to_numpy()
    reaching = int(size.sum())
    k = len(size)
    data_share = size / reaching if reaching else np.zeros(k)
    temperatures = _unique(temperatures) or [dbp_params.get("temperature", 0.1)]
    balances = _unique(balances) or [dbp_params.get("balance", 0.0)]
    columns: dict[str, list[Any]] = {name: [] for name in PLAN.names}
    combination = 0
    for keep_fraction, keep_count in _targets(dbp_params, keep_fractions, keep_counts):
        for balance in balances:
            for temperature in temperatures:
                cfg = _settings(dbp_params, keep_fraction, keep_count, float(temperature),
                                float(balance))
                probability = bud.concept_probability(complexity, cfg.temperature)
                target: int | None = None
                floor = budget = None
                error = None
                try:
                    target = dbp_target(cfg, reaching)
                    floor = bud.lower_bounds(size, target, cfg.k, cfg.balance)
                    budget = bud.concept_budget(size, probability, target, cfg.k, cfg.balance)
                except bud.BudgetError as err:
                    error = str(err)
                with np.errstate(invalid="ignore", divide="ignore"):
                    share = None if budget is None else budget / max(target or 0, 1)
                    kept_ratio = None if budget is None else budget / size
                none = [None] * k
                fields = {
                    "combination": [combination] * k,
                    "keep_fraction": [keep_fraction] * k, "keep_count": [keep_count] * k,
                    "temperature": [cfg.temperature] * k, "balance": [cfg.balance] * k,
                    "run_setting": [_is_run_setting(cfg, dbp_params, keep_count)] * k,
                    "status": ["ok" if error is None else "impossible"] * k,
                    "error": [error] * k, "reaching": [reaching] * k, "target": [target] * k,
                    "id": ids.tolist(), "size": size.tolist(),
                    "complexity": [None if math.isnan(c) else c for c in complexity.tolist()],
                    "probability": probability.tolist(),
                    "floor": none if floor is None else floor.tolist(),
                    "budget": none if budget is None else budget.tolist(),
                    "share": none if share is None else share.tolist(),
                    "data_share": data_share.tolist(),
                    "kept_ratio": none if kept_ratio is None else
                    [None if s == 0 else r for s, r in zip(size, kept_ratio.tolist(),
                                                            strict=True)],
                }
                for name, values in fields.items():
                    columns[name].extend(values)
                combination += 1
    return pa.table(columns, schema=PLAN)


def _effective_number(shares: np.ndarray) -> float:
    """exp(entropy) of a distribution: how many equally sized concepts it amounts to."""
    p = shares[shares > 0]
    return float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0


def plan_totals(plan: pa.Table) -> pa.Table:
    """One row per combination: the target and how the budget spreads over the concepts.

    concepts_full: concepts kept whole; concepts_at_floor: concepts held at their lower
    bound (1 sample when balance is 0); effective_concepts: exp(entropy of the budget
    shares), against effective_concepts_data for the data itself; shift_from_random: the
    fraction of the kept samples placed in other concepts than uniform random pruning would
    (half the L1 distance of budget shares to data shares).
    """
    combo = plan.column("combination").to_numpy()
    rows: list[dict[str, Any]] = []
    for c in np.unique(combo):
        part = plan.filter(pc.equal(plan.column("combination"), int(c)))
        first = {name: part.column(name)[0].as_py() for name in SETTING}
        size = part.column("size").to_numpy()
        data_share = part.column("data_share").to_numpy()
        row = {**first, "concepts": int((size > 0).sum()),
               "effective_concepts_data": _effective_number(data_share)}
        if first["status"] == "ok":
            budget = part.column("budget").to_numpy()
            floor = part.column("floor").to_numpy()
            share = part.column("share").to_numpy()
            used = size > 0
            ratio = budget[used] / size[used]
            row.update({
                "budget_sum": int(budget.sum()),
                "concepts_kept": int((budget >= 1).sum()),
                "concepts_full": int(((budget == size) & used).sum()),
                "concepts_at_floor": int(((budget == floor) & (floor < size)).sum()),
                "min_budget": int(budget[used].min()), "max_budget": int(budget[used].max()),
                "min_kept_ratio": float(ratio.min()), "max_kept_ratio": float(ratio.max()),
                "max_share": float(share.max()),
                "effective_concepts": _effective_number(share),
                "shift_from_random": float(np.abs(share - data_share).sum() / 2),
            })
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=TOTALS)


# ---------------------------------------------------------------------------------------------
# showing and writing


def _target_label(keep_fraction: float | None, keep_count: int | None) -> str:
    return f"{keep_fraction:g}" if keep_count is None else f"N={keep_count}"


def _range(low: Any, high: Any, fmt: str) -> str:  # noqa: ANN401 - numbers or None
    return "-" if low is None else f"{low:{fmt}}–{high:{fmt}}"


def _legend(rows: list[dict[str, Any]]) -> str:
    """The marks' explanations, only of the marks some row carries."""
    marks = [("*: the run's own setting", any(r["run_setting"] for r in rows)),
             ("✗: impossible (below)", any(r["status"] != "ok" for r in rows))]
    return "".join(f"{text}; " for text, shown in marks if shown)


def print_plan(console: Console, plan: pa.Table, totals: pa.Table,
               concepts: bool | None = None) -> None:
    """The totals per combination, the impossible ones' reasons, and (for few concepts, or
    when ``concepts`` is True) each concept's budget under every combination."""
    rows = totals.to_pylist()
    first = rows[0]
    table = Table(title=f"dbp budgets: M={first['reaching']} samples reach dbp in "
                        f"{first['concepts']} concepts "
                        f"({first['effective_concepts_data']:.1f} effective)",
                  caption=_legend(rows) + "≥1: concepts "
                          "keeping a sample; full: kept whole; floor: held at the lower "
                          "bound; kept: fraction of a concept kept, min-max; eff.: "
                          "effective number of concepts, exp(entropy) of the budget "
                          "shares; shift: part of N placed "
                          "otherwise than by random pruning",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("#", "keep", "τ", "b", "N", "≥1", "full", "floor", "kept", "eff.", "shift",
                 ""):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        ok = r["status"] == "ok"
        table.add_row(
            f"{r['combination']}{'*' if r['run_setting'] else ''}",
            _target_label(r["keep_fraction"], r["keep_count"]), f"{r['temperature']:g}",
            f"{r['balance']:g}", "-" if r["target"] is None else str(r["target"]),
            *(("-",) * 3 if not ok else (str(r["concepts_kept"]), str(r["concepts_full"]),
                                         str(r["concepts_at_floor"]))),
            _range(r["min_kept_ratio"], r["max_kept_ratio"], ".2f"),
            "-" if not ok else f"{r['effective_concepts']:.1f}",
            "-" if not ok else f"{r['shift_from_random']:.0%}",
            "" if ok else "[red]✗[/red]")
    console.print(table)
    reasons: dict[str, list[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            reasons.setdefault(r["error"], []).append(f"#{r['combination']}")
    for error, combos in reasons.items():
        console.print(f"[red]{', '.join(combos)} impossible:[/red] {error}", highlight=False)
    k = int(pc.count_distinct(plan.column("id")).as_py())
    if concepts or (concepts is None and k <= SHOW_CONCEPTS):
        ok = [r["combination"] for r in rows if r["status"] == "ok"]
        width = max(len(f"#{len(rows)}"), len(str(pc.max(plan.column("size")).as_py())))
        per_table = max(1, (console.width - 29) // (width + 2))
        for i in range(0, len(ok), per_table):
            console.print(_concept_table(plan, ok[i : i + per_table]))


def _concept_table(plan: pa.Table, combos: list[int]) -> Table:
    """Concepts (most complex first) by combination: each one's budget."""
    first = plan.filter(pc.equal(plan.column("combination"), 0))
    complexity = pc.fill_null(first.column("complexity"), -math.inf).to_numpy()
    order = np.argsort(-complexity, kind="stable")
    table = Table(title="budget per concept, most complex first (columns: combination #)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("concept", "size", "complexity", *(f"#{c}" for c in combos)):
        table.add_column(name, justify="right", no_wrap=True)
    budgets = [plan.filter(pc.equal(plan.column("combination"), c)).column("budget")
               .to_pylist() for c in combos]
    ids, sizes = first.column("id").to_pylist(), first.column("size").to_pylist()
    values = first.column("complexity").to_pylist()
    for i in order:
        c = values[i]
        table.add_row(str(ids[i]), str(sizes[i]), "-" if c is None else f"{c:.4f}",
                      *(str(b[i]) for b in budgets))
    return table


def plot_plan(plan: pa.Table, path: Path) -> None:
    """``plan_figure`` written to ``path``; the format follows the suffix (.svg or .png)."""
    fig = plan_figure(plan)
    suffix = path.suffix.lstrip(".").lower() or "svg"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=suffix))


def plan_figure(plan: pa.Table) -> Any:  # noqa: ANN401 - a matplotlib Figure
    """One panel per (target, balance): budget share of each concept, concepts sorted by
    complexity and named by their ids (the report's), one line per temperature, against the
    data's own shares (random pruning).

    Uses matplotlib's Figure directly (no pyplot, no global backend).
    """
    from matplotlib.figure import Figure

    from pipeline.report.concept_ids import id_ticks

    combos = plan_totals(plan).to_pylist()
    targets = _unique([(r["keep_fraction"], r["keep_count"]) for r in combos])
    balances = _unique([r["balance"] for r in combos])
    temps = _unique([r["temperature"] for r in combos])
    first = plan.filter(pc.equal(plan.column("combination"), 0))
    size = first.column("size").to_numpy()
    complexity = pc.fill_null(first.column("complexity"), math.nan).to_numpy()
    order = [i for i in np.argsort(complexity, kind="stable") if size[i] > 0]
    x = np.arange(1, len(order) + 1)
    ids = first.column("id").to_numpy()[order]
    ticks = id_ticks(len(order))
    data_share = first.column("data_share").to_numpy()[order]
    shares = {r["combination"]: plan.filter(pc.equal(plan.column("combination"),
                                                     r["combination"])).column("share")
              for r in combos}
    positive = [s for col in shares.values() for s in col.to_pylist() if s] + \
        [s for s in data_share if s > 0]
    log = bool(positive) and max(positive) / min(positive) > 100
    colours = _colours(len(temps))
    dots = len(order) > 50  # many concepts: points, as neighbours' sizes differ a lot
    style = {"linestyle": "none", "marker": ".", "markersize": 2} if dots else \
        {"marker": "o", "markersize": 3}
    fig = Figure(figsize=(4.2 * len(targets), 3.2 * len(balances) + 0.6), layout="constrained")
    axes = fig.subplots(len(balances), len(targets), squeeze=False, sharex=True, sharey=True)
    for row, balance in enumerate(balances):
        for col, (keep_fraction, keep_count) in enumerate(targets):
            ax = axes[row][col]
            ax.plot(x, data_share, color="0.6", label="data (random pruning)",
                    **({**style, "marker": "x"} if dots else {"linestyle": "--"}))
            impossible = []
            for colour, temperature in zip(colours, temps, strict=True):
                r = next(r for r in combos if r["balance"] == balance
                         and r["temperature"] == temperature
                         and (r["keep_fraction"], r["keep_count"]) == (keep_fraction,
                                                                       keep_count))
                if r["status"] != "ok":
                    impossible.append(f"τ={temperature:g}")
                    continue
                y = np.array(shares[r["combination"]].to_pylist(), dtype=float)[order]
                ax.plot(x, y, color=colour, **style,
                        label=f"τ={temperature:g}" + (" (run)" if r["run_setting"] else ""))
            if impossible:
                ax.text(0.02, 0.95, "impossible: " + ", ".join(impossible),
                        transform=ax.transAxes, va="top", fontsize=8, color="tab:red")
            if log:
                ax.set_yscale("log")
            ax.set_title(f"keep {_target_label(keep_fraction, keep_count)}, balance {balance:g}",
                         fontsize=10)
            ax.set_xticks(x[ticks], [str(ids[i]) for i in ticks],
                          rotation=90 if len(order) > 12 else 0, fontsize=7)
            if row == len(balances) - 1:
                ax.set_xlabel("concept id, least → most complex")
            if col == 0:
                ax.set_ylabel("share of kept samples")
    axes[0][0].legend(fontsize=8, markerscale=3 if dots else 1)
    fig.suptitle("dbp budget per concept by temperature τ")
    return fig


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]


def output_paths(run_dir: Path, out: Path | None = None) -> dict[str, Path]:
    """Where the plan goes: OUT (default RUN_DIR/report/plan) with .parquet and .csv (per
    concept), _totals.csv (per combination) and .svg (a suffix given with OUT is dropped)."""
    base = out if out is not None else run_dir / "report" / "plan"
    if base.suffix.lower() in (".parquet", ".csv", ".svg", ".png"):
        base = base.with_suffix("")
    return {"parquet": base.with_name(base.name + ".parquet"),
            "csv": base.with_name(base.name + ".csv"),
            "totals": base.with_name(base.name + "_totals.csv"),
            "plot": base.with_name(base.name + ".svg")}


def write_plan(plan: pa.Table, totals: pa.Table, paths: dict[str, Path]) -> list[Path]:
    """Write the tables and the plot (left out when matplotlib is not installed); returns
    the paths written."""
    write_parquet(paths["parquet"], plan)
    atomic_write(paths["csv"], lambda tmp: pcsv.write_csv(plan, tmp))
    atomic_write(paths["totals"], lambda tmp: pcsv.write_csv(totals, tmp))
    written = [paths["parquet"], paths["csv"], paths["totals"]]
    try:
        plot_plan(plan, paths["plot"])
    except ImportError:
        return written
    return [*written, paths["plot"]]


def parse_numbers(text: str | None, kind: type, option: str) -> list[Any]:
    """'0.2,0.3' (or '0.2 0.3') as [0.2, 0.3]; None (option not given) as []."""
    if text is None:
        return []
    try:
        return [kind(item) for item in re.split(r"[,\s]+", text) if item]
    except ValueError:
        example = "100,200" if kind is int else "0.2,0.5"
        raise PlanError(f"{option} takes a comma list of numbers, e.g. {option} {example}; "
                        f"got {text!r}") from None


def make_plan(run_dir: str | Path, keep_fraction: str | None = None,
              keep_count: str | None = None, temperature: str | None = None,
              balance: str | None = None, out: Path | None = None,
              concepts: bool | None = None, console: Console | None = None) -> list[Path]:
    """`conceptprune plan` of dbp: comma lists in, the tables printed and the files written
    (semdedup's eps: ``plan_eps.make_eps_plan``)."""
    start = time.perf_counter()
    console = console or Console()
    run_dir = Path(run_dir)
    fractions = parse_numbers(keep_fraction, float, "--keep-fraction")
    counts = parse_numbers(keep_count, int, "--keep-count")
    temperatures = parse_numbers(temperature, float, "--temperature")
    balances = parse_numbers(balance, float, "--balance")
    clusters, params = load_run(run_dir)
    plan = plan_budgets(clusters, fractions, temperatures, balances, params["dbp"], counts)
    totals = plan_totals(plan)
    print_plan(console, plan, totals, concepts)
    paths = output_paths(run_dir, out)
    written = write_plan(plan, totals, paths)
    for path in written:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    if paths["plot"] not in written:
        console.print("no plot: matplotlib is not installed (pip install matplotlib)")
    n = totals.num_rows
    console.print(f"planned {n} combination{'s' * (n != 1)} in "
                  f"{time.perf_counter() - start:.2f} s", highlight=False)
    return written
