"""``report/index.html``: the run's report as a page anyone can open from the file system.

Rendered by jinja2 with autoescaping on: every caption, key, URL, reason and setting is
untrusted text (web captions hold markup) and reaches the page only escaped. The plots are
inline SVG made here from numbers; the thumbnails are files beside the page. Nothing is
fetched from the network, and a Content-Security-Policy says so to the browser.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jinja2

from pipeline.report.explain import explain, explain_kept_for
from pipeline.workdir import atomic_write

PAGE = "index.html"
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pipeline.report", "templates"),
    autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4g}"


def _random_weights(report: dict[str, Any]) -> str | None:
    models = (report.get("embed") or {}).get("models") or {}
    said = [name for name, flag in (("CLIP model", models.get("clip_random_weights")),
                                    ("clustering model", models.get("cluster_random_weights")))
            if flag]
    if not said:
        return None
    return (f"The {' and the '.join(said)} had RANDOM WEIGHTS: "
            + ("CLIP scores carry no meaning." if "CLIP model" in said else "")
            + (" Concepts and duplicates carry no meaning." if "clustering model" in said
               else ""))


def render_page(report: dict[str, Any], folder: Path, command: str) -> Path:
    """Write ``folder/index.html`` for ``report`` (the content of report.json)."""
    # matplotlib only once the page is drawn: imported with the runner it was 0.33 of the
    # 1.2 s a run spent before its first step
    from pipeline.report.plots import all_plots

    html = _ENV.get_template("index.html.j2").render(
        r=report, plots=all_plots(report), fmt=_fmt, command=command,
        explain=explain, explain_kept_for=explain_kept_for,
        concepts_by_id={c["id"]: c for c in report.get("clusters") or []},
        random_weights=_random_weights(report),
        parameters=json.dumps(report.get("parameters", {}), indent=2, sort_keys=True),
        inputs=json.dumps(report.get("inputs", []), indent=1))
    path = folder / PAGE
    atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return path
