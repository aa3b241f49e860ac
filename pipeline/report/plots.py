"""The report's plots, drawn by matplotlib as SVG text to inline in the page (no files to
lose, no network): complexity against kept fraction per concept, cluster sizes before and
after dbp, the CLIP-score histogram before and after the filter, the duplicate-similarity
histogram with semdedup's 1 − eps line, and semdedup's removals against eps."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.report.concept_ids import LABELLED, id_ticks  # noqa: E402

_STYLE = {"svg.hashsalt": "conceptprune", "svg.fonttype": "none", "font.size": 9,
          "savefig.dpi": 150}  # what the rasterized shapes are drawn at
# from this many concepts, a plot's per-concept shapes are one embedded picture, not an SVG
# element each: at 30,000 concepts the complexity scatter was a 20 MB SVG
RASTER_FROM = 2000


def _svg(fig: Any) -> str:  # noqa: ANN401 - a matplotlib Figure
    """The figure as SVG text, the same bytes for the same data (fixed ids, no date)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # the page holds it inline: no XML prolog


def complexity_vs_kept(clusters: list[dict[str, Any]]) -> str | None:
    rows = [c for c in clusters if c["size"] and c["complexity"] is not None]
    if not rows:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        x = [c["complexity"] for c in rows]
        y = [c["kept"] / c["size"] for c in rows]
        largest = max(c["size"] for c in rows)
        ax.scatter(x, y, s=[12 + 60 * c["size"] / largest for c in rows], alpha=0.7,
                   rasterized=len(rows) > RASTER_FROM)
        named = rows if len(rows) <= LABELLED else \
            sorted(rows, key=lambda c: (c["complexity"], c["id"]))[:: len(rows) // 10 or 1]
        for c in named:  # the concept ids of the table
            ax.annotate(str(c["id"]), (c["complexity"], c["kept"] / c["size"]),
                        xytext=(3, 3), textcoords="offset points", fontsize=7, color="#34495e")
        ax.set_xlabel("concept complexity (d_intra × d_inter)")
        ax.set_ylabel("kept fraction")
        ax.set_ylim(0, 1.05)
        ax.set_title("complex concepts keep more (dbp)")
        return _svg(fig)


def cluster_sizes(clusters: list[dict[str, Any]]) -> str | None:
    rows = sorted((c for c in clusters if c["size"]), key=lambda c: -c["size"])
    if not rows:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        # one filled step outline per series, not a bar per concept: as many concepts as a
        # run has (a bar each took 0.8 s at 100 concepts and grows with them), and an SVG
        # of two paths
        edges = np.arange(len(rows) + 1) - 0.5
        many = len(rows) > RASTER_FROM
        ax.stairs([c["size"] for c in rows], edges, fill=True, color="#c9d4e5",
                  label="before dbp", rasterized=many)
        ax.stairs([c["kept"] for c in rows], edges, fill=True, color="#3b6db3", label="kept",
                  rasterized=many)
        ax.set_xlim(edges[0], edges[-1])
        ticks = id_ticks(len(rows))
        ax.set_xticks(ticks, [str(rows[i]["id"]) for i in ticks],
                      rotation=90 if len(rows) > 12 else 0, fontsize=7)
        ax.set_xlabel(f"concept id ({len(rows)} concepts, largest first)")
        ax.set_ylabel("samples")
        ax.set_title("cluster sizes before and after dbp")
        ax.legend(frameon=False)
        return _svg(fig)


def _histogram(bins: list[float], series: list[tuple[str, list[int]]], title: str,
               xlabel: str, line: float | None = None, line_label: str = "") -> str | None:
    if not any(sum(counts) for _, counts in series):
        return None
    edges = np.asarray(bins)
    used = np.flatnonzero(np.sum([counts for _, counts in series], axis=0))
    lo, hi = edges[max(used[0] - 2, 0)], edges[min(used[-1] + 3, len(edges) - 1)]
    if line is not None:
        lo, hi = min(lo, line - 0.02), max(hi, line + 0.02)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        for label, counts in series:
            ax.stairs(counts, edges, label=label, fill=len(series) == 1, alpha=0.8)
        if line is not None:
            ax.axvline(line, color="#c0392b", linestyle="--", label=line_label)
        ax.set_xlim(lo, hi)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples")
        ax.set_title(title)
        ax.legend(frameon=False)
        return _svg(fig)


def clip_scores(histograms: dict[str, Any], filtered: bool) -> str | None:
    series = ([("before clip_filter", histograms["clip_before"]),
               ("after", histograms["clip_after"])] if filtered else
              [("every usable sample (clip_filter off)", histograms["clip_before"])])
    return _histogram(histograms["bins"], series, "CLIP score", "image–caption cosine")


def duplicate_similarity(histograms: dict[str, Any], eps: float | None) -> str | None:
    return _histogram(histograms["bins"], [("every sample", histograms["dup_similarity"])],
                      "duplicate similarity (semdedup)",
                      "highest cosine to an earlier member of its semdedup cluster",
                      None if eps is None else 1 - eps,
                      "" if eps is None else f"1 − eps = {1 - eps:.3f}: removed right of it")


def eps_curve(curve: dict[str, Any], run_eps: float) -> str | None:
    """semdedup's removed fraction against eps, the run's eps marked."""
    reaching = curve["reaching"]
    if not reaching:
        return None
    eps = np.asarray(curve["eps"], dtype=float)
    fraction = np.asarray(curve["removed"], dtype=float) / reaching
    at = int(np.argmin(np.abs(eps - run_eps)))
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        ax.plot(eps, fraction, marker="o", markersize=3, color="#3b6db3",
                label="removed at this eps" + ("" if curve["exact"] else " (float32: ≈)"))
        ax.axvline(run_eps, color="#c0392b", linestyle="--", linewidth=1)
        ax.plot([eps[at]], [fraction[at]], marker="o", markersize=7, color="#c0392b",
                linestyle="none", label=f"this run: eps {run_eps:g}, removed "
                f"{curve['removed'][at]} ({fraction[at]:.1%})")
        ax.set_xlabel("eps (removed when similarity > 1 − eps)")
        ax.set_ylabel(f"removed fraction (of {reaching})")
        ax.set_ylim(0, max(0.05, float(fraction.max()) * 1.1))
        ax.set_title("semdedup removals by eps (this run's data)")
        ax.legend(frameon=False, loc="upper left")
        return _svg(fig)


def evaluation(section: dict[str, Any]) -> str | None:
    """Each arm's zero-shot accuracy: one dot per seed, its mean as a bar."""
    arms = section.get("arms") or []
    if not arms:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        for i, arm in enumerate(arms):
            ax.bar(i, arm["mean"], width=0.6, color="#3b6db3" if arm["name"] != "random"
                   else "#999999", alpha=0.5)
            ax.plot([i] * len(arm["top1"]), arm["top1"], marker="o", markersize=4,
                    linestyle="none", color="#1d3557")
        ax.set_xticks(range(len(arms)), [f"{a['name']}\n{a['subset_size']}" for a in arms])
        ax.set_ylabel("zero-shot top-1 (dots: seeds)")
        ax.set_ylim(0, min(1.0, max(max(a["top1"]) for a in arms) * 1.25 + 0.02))
        ax.set_title(f"{section['model']}, {section['samples_seen']} samples seen per arm")
        return _svg(fig)


def all_plots(report: dict[str, Any]) -> dict[str, str]:
    """Every plot the report's data allows, by name, as inline SVG."""
    clusters = report.get("clusters") or []
    hist = report.get("histograms")
    eps = (report.get("semdedup") or {}).get("eps")
    curve = (report.get("semdedup") or {}).get("curve")
    made = {"complexity": complexity_vs_kept(clusters), "sizes": cluster_sizes(clusters),
            "clip": clip_scores(hist, any(s["name"] == "clip_filter"
                                          for s in report.get("stages", []))) if hist else None,
            "duplicates": duplicate_similarity(hist, eps) if hist and "semdedup" in report
            else None,
            "eps": eps_curve(curve, eps) if curve and eps is not None else None,
            "evaluate": evaluation(report["evaluate"]) if report.get("evaluate") else None}
    return {name: svg for name, svg in made.items() if svg}
