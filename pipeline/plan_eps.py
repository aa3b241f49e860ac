"""`conceptprune plan RUN --eps ...`: semdedup's removals at other eps, from a finished run.

Each member's m_j (its highest similarity to an earlier member of its cluster) does not
depend on eps (SPEC §3). The semdedup step keeps m_j at float64 in its work table, so the
removals at any eps are decided here, per cluster, by semdedup's own function: exactly what
a full rerun with that eps would have semdedup remove. Later steps would then see other
samples: their removals are not planned here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from rich import box
from rich.console import Console
from rich.table import Table

from pipeline.algorithms.semdedup import removed_at
from pipeline.plan import SHOW_CONCEPTS, PlanError, output_paths, parse_numbers, read_report
from pipeline.stages.semdedup_eps import EXACT, PartValues, read_part
from pipeline.workdir import atomic_write, write_parquet

CLUSTERS = pa.schema([
    ("eps", pa.float64()), ("run_setting", pa.bool_()), ("dedup_cluster", pa.int32()),
    ("members", pa.int64()), ("removed", pa.int64()), ("removed_fraction", pa.float64()),
])
TOTALS = pa.schema([
    ("eps", pa.float64()), ("run_setting", pa.bool_()), ("reaching", pa.int64()),
    ("removed", pa.int64()), ("removed_fraction", pa.float64()), ("kept", pa.int64()),
    ("exact", pa.bool_()),
])
ALONE = ("semdedup's figures alone: with another eps, clip_filter and dbp would see other "
         "samples, so their removals and the final subset would differ")


@dataclass(frozen=True)
class EpsRun:
    """What a finished run's semdedup recorded, and where."""

    run_dir: Path
    eps: float  # the run's own
    k: int  # its clusters
    reaching: int  # samples that reached semdedup
    removed: int  # samples it removed
    parts: list[Path]  # the tables of m_j, one per input part
    source: str  # "work": its work tables (exact m_j); "ledger": the ledger's float32 m_j


def _stage(report: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    stage = next((s for s in report.get("stages", []) if s.get("name") == "semdedup"), None)
    if stage is None or not isinstance(report.get("semdedup"), dict):
        raise PlanError(f"the run in {run_dir} had semdedup disabled, so --eps has nothing to "
                        "plan; run it with semdedup enabled (--set semdedup.enabled=true), "
                        "then plan that run")
    return stage


def load_eps_run(run_dir: str | Path) -> EpsRun:
    """The run's semdedup tables: WORK/semdedup/part-*.parquet when they hold the exact m_j,
    else the ledger's parts (float32 m_j; a run of an older version, or no work folder)."""
    run_dir = Path(run_dir)
    report = read_report(run_dir)
    stage = _stage(report, run_dir)
    params = report["parameters"]
    work = Path(params["work"]) if params.get("work") else run_dir / "_work"
    tables = sorted((work / "semdedup").glob("part-*.parquet"))
    ledger = sorted((run_dir / "ledger").glob("part-*.parquet"))
    if tables and all(EXACT in pq.read_schema(p).names for p in tables):
        parts, source = tables, "work"
    elif ledger or tables:
        parts, source = ledger or tables, "ledger"
    else:
        raise PlanError(f"neither {work / 'semdedup'} nor {run_dir / 'ledger'} holds the "
                        "run's semdedup tables (part-*.parquet); repeat the run's "
                        "`conceptprune run` command to write them, then plan again")
    section = report["semdedup"]
    return EpsRun(run_dir, float(section["eps"]), int(section["k"]), int(stage["in"]),
                  int(stage["removed"]), parts, source)


def part_values(run: EpsRun) -> Iterator[PartValues]:
    """Each part's clusters and m_j, in part order."""
    for path in run.parts:
        try:
            yield read_part(path)
        except (OSError, ValueError, KeyError, pa.ArrowException) as err:
            raise PlanError(f"cannot read {path} ({err}); repeat the run's `conceptprune "
                            "run` command to write it again, then plan again") from None


def removed_masks(run: EpsRun, eps: float) -> list[np.ndarray]:
    """Per part, row-aligned: the samples semdedup removes at ``eps``."""
    return [removed_at(p.similarity, eps) for p in part_values(run)]


def _stale(run: EpsRun, what: str) -> PlanError:
    return PlanError(f"{run.parts[0].parent} does not hold the semdedup of "
                     f"{run.run_dir / 'report' / 'report.json'} ({what}): it was rewritten by "
                     "another run after this one finished; repeat this run's `conceptprune "
                     "run` command, then plan again")


def plan_eps(run: EpsRun, eps_values: Sequence[float]) -> tuple[pa.Table, pa.Table]:
    """Per (eps, cluster) and per eps, the samples semdedup removes; the run's eps is always
    planned. Checked against the run's report, so a rewritten work folder is refused."""
    eps = sorted({*map(float, eps_values), run.eps})
    members = np.zeros(run.k, dtype=np.int64)
    removed = np.zeros((len(eps), run.k), dtype=np.int64)
    exact = True
    for part in part_values(run):
        if len(part.cluster) and int(part.cluster.max()) >= run.k:
            raise _stale(run, f"a cluster id {int(part.cluster.max())} >= k = {run.k}")
        members += np.bincount(part.cluster[part.cluster >= 0], minlength=run.k)
        for i, e in enumerate(eps):
            removed[i] += np.bincount(part.cluster[removed_at(part.similarity, e)],
                                      minlength=run.k)
        exact &= part.exact
    own = removed[eps.index(run.eps)].sum()
    if members.sum() != run.reaching or (exact and own != run.removed):
        raise _stale(run, f"{members.sum()} members, {own} removed at eps {run.eps:g}; the "
                     f"report says {run.reaching} and {run.removed}")
    k, n = run.k, len(eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(members > 0, removed / np.maximum(members, 1), np.nan)
    clusters = pa.table({
        "eps": np.repeat(eps, k), "run_setting": np.repeat([e == run.eps for e in eps], k),
        "dedup_cluster": np.tile(np.arange(k, dtype=np.int32), n),
        "members": np.tile(members, n), "removed": removed.ravel(),
        "removed_fraction": pa.array(fraction.ravel(), mask=np.isnan(fraction.ravel())),
    }, schema=CLUSTERS)
    total = removed.sum(axis=1)
    totals = pa.table({
        "eps": eps, "run_setting": [e == run.eps for e in eps], "reaching": [run.reaching] * n,
        "removed": total, "removed_fraction": total / max(run.reaching, 1),
        "kept": run.reaching - total, "exact": [exact] * n,
    }, schema=TOTALS)
    return clusters, totals


def print_eps_plan(console: Console, run: EpsRun, clusters: pa.Table, totals: pa.Table,
                   per_cluster: bool | None = None) -> None:
    """The totals per eps, a warning when they rest on float32 values, and (for few
    clusters, or when ``per_cluster``) each cluster's removals."""
    rows = totals.to_pylist()
    table = Table(title=f"semdedup removals by eps: {run.reaching} samples reach semdedup in "
                        f"{run.k} clusters",
                  caption=f"*: the run's own eps (it removed {run.removed})",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("eps", "1 − eps", "removed", "removed %", "kept"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(f"{r['eps']:g}{'*' if r['run_setting'] else ''}", f"{1 - r['eps']:g}",
                      str(r["removed"]), f"{r['removed_fraction']:.1%}", str(r["kept"]))
    console.print(table)
    console.print(f"These are {ALONE}.", highlight=False)
    if not rows[0]["exact"]:
        console.print(
            f"[yellow]warning:[/yellow] the run's work tables hold no exact similarities (a "
            f"run of an older version, or no work folder): these counts come from the "
            f"float32 similarities in {run.parts[0].parent}, so at an eps whose 1 − eps lies "
            "within float32 rounding of some member's similarity a count may be off by the "
            "few members near it. Repeat the run with this version for exact figures.",
            highlight=False)
    if per_cluster or (per_cluster is None and run.k <= SHOW_CONCEPTS):
        console.print(_cluster_table(clusters, [r["eps"] for r in rows], run.eps))


def _cluster_table(clusters: pa.Table, eps: list[float], run_eps: float) -> Table:
    table = Table(title="removed per semdedup cluster (columns: eps)", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for name in ("cluster", "members", *(f"{e:g}{'*' if e == run_eps else ''}" for e in eps)):
        table.add_column(name, justify="right", no_wrap=True)
    k = clusters.num_rows // len(eps)
    removed = clusters.column("removed").to_numpy().reshape(len(eps), k)
    members = clusters.column("members").to_numpy()[:k]
    for c in range(k):
        table.add_row(str(c), str(members[c]), *(str(v) for v in removed[:, c]))
    return table


def plot_eps(totals: pa.Table, run_eps: float, path: Path) -> None:
    """semdedup's removed fraction against eps, the run's eps marked (matplotlib's Figure,
    no pyplot; the format follows the suffix)."""
    from matplotlib.figure import Figure

    eps = totals.column("eps").to_numpy()
    fraction = totals.column("removed_fraction").to_numpy()
    own = totals.column("run_setting").to_numpy(zero_copy_only=False)
    fig = Figure(figsize=(5.2, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(eps, fraction, marker="o", markersize=4, color="tab:blue", label="planned eps")
    ax.axvline(run_eps, color="tab:red", linestyle="--", linewidth=1)
    ax.plot(eps[own], fraction[own], marker="o", markersize=8, color="tab:red",
            linestyle="none", label=f"the run's eps {run_eps:g}")
    ax.set_xlabel("eps (removed when similarity > 1 − eps)")
    ax.set_ylabel("removed fraction of semdedup's input")
    ax.set_ylim(0, max(0.05, float(fraction.max()) * 1.1))
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("semdedup removals by eps (semdedup alone)", fontsize=10)
    suffix = path.suffix.lstrip(".").lower() or "svg"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=suffix))


def eps_paths(run_dir: Path, out: Path | None = None) -> dict[str, Path]:
    """Beside the dbp plan's files: OUT_eps.parquet and .csv (per cluster), _eps_totals.csv
    (per eps) and _eps.svg."""
    base = output_paths(run_dir, out)["parquet"].with_suffix("")
    name = base.name + "_eps"
    return {"parquet": base.with_name(name + ".parquet"), "csv": base.with_name(name + ".csv"),
            "totals": base.with_name(name + "_totals.csv"),
            "plot": base.with_name(name + ".svg")}


def write_eps_plan(clusters: pa.Table, totals: pa.Table, run_eps: float,
                   paths: dict[str, Path]) -> list[Path]:
    """Write the tables and the plot (left out without matplotlib); returns the paths."""
    write_parquet(paths["parquet"], clusters)
    atomic_write(paths["csv"], lambda tmp: pcsv.write_csv(clusters, tmp))
    atomic_write(paths["totals"], lambda tmp: pcsv.write_csv(totals, tmp))
    written = [paths["parquet"], paths["csv"], paths["totals"]]
    try:
        plot_eps(totals, run_eps, paths["plot"])
    except ImportError:
        return written
    return [*written, paths["plot"]]


def parse_eps(text: str) -> list[float]:
    """'0.02,0.05' or '0.02 0.05' as [0.02, 0.05], each checked to lie in (0, 1)."""
    values = parse_numbers(text, float, "--eps")
    if not values:
        raise PlanError(f"--eps takes a comma list of numbers, e.g. --eps 0.02,0.05,0.1; got "
                        f"{text!r}")
    for e in values:
        if not 0 < e < 1:
            raise PlanError(f"--eps {e:g}: eps must lie between 0 and 1 (exclusive), as "
                            "semdedup.eps")
    return values


def make_eps_plan(run_dir: str | Path, eps: str, out: Path | None = None,
                  per_cluster: bool | None = None, console: Console | None = None
                  ) -> list[Path]:
    """`conceptprune plan --eps`: the table printed and the files written."""
    start = time.perf_counter()
    console = console or Console()
    values = parse_eps(eps)
    run = load_eps_run(run_dir)
    clusters, totals = plan_eps(run, values)
    print_eps_plan(console, run, clusters, totals, per_cluster)
    paths = eps_paths(Path(run_dir), out)
    written = write_eps_plan(clusters, totals, run.eps, paths)
    for path in written:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    console.print(f"planned {totals.num_rows} eps values in "
                  f"{time.perf_counter() - start:.2f} s", highlight=False)
    return written
