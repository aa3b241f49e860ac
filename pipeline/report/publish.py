"""A finished run's report, written: ``report/report.json`` (checked against
``schemas/report.schema.json``, the schema ``model.py`` generates), the exact configuration as
``report/config.yaml`` with the command that reproduces the run, the thumbnails of the image
path, and ``report/index.html``.
``conceptprune report RUN_DIR`` renders the page again from report.json alone."""

from __future__ import annotations

import json
import logging
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pipeline.errors import ConceptpruneError
from pipeline.report.model import report_schema
from pipeline.report.page import render_page
from pipeline.workdir import atomic_write, write_json

log = logging.getLogger(__name__)

THUMBS = "thumbs"
_THUMB_NAME = re.compile(r"\d{4}\.jpg")
# what `conceptprune plan` writes into report/ by default: an earlier run's, once the run
# is done again with other settings, would describe budgets that no longer hold
_PLAN_NAME = re.compile(r"plan(_eps)?(\.parquet|\.csv|_totals\.csv|\.svg)")


class ReportError(ConceptpruneError, ValueError):
    """A report that does not follow its schema, or a folder holding no report."""


@cache
def _validator() -> jsonschema.Draft202012Validator:
    """The schema generated from ``model.Report`` (shipped as schemas/report.schema.json)."""
    return jsonschema.Draft202012Validator(report_schema())


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``ReportError`` naming the first place where ``report`` breaks its schema."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(report))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ReportError(f"report.json does not follow schemas/report.schema.json at "
                          f"{where}: {error.message}")


def clear_plans(folder: Path) -> None:
    """Remove the plan files `conceptprune plan` wrote here for an earlier run (only files
    named as it names them); the log says so."""
    if folder.is_dir():
        stale = sorted(p for p in folder.iterdir() if _PLAN_NAME.fullmatch(p.name))
        for path in stale:
            path.unlink()
        if stale:
            log.info("removed %d plan files of the earlier run from %s (run `conceptprune "
                     "plan` again for this one)", len(stale), folder)


def clear_thumbnails(folder: Path) -> None:
    """Remove the thumbnails an earlier run made (only files named as this code names them)."""
    if folder.is_dir():
        for path in folder.iterdir():
            if _THUMB_NAME.fullmatch(path.name):
                path.unlink()


def publish(report: dict[str, Any], folder: Path, parameters: dict[str, Any],
            examples: Any = None) -> Path:  # noqa: ANN401 - a callable or None
    """Write the report's files into ``folder`` (OUTPUT/report); returns the page's path.

    ``examples(thumbs_folder)`` returns the report's ``examples`` (the image path)."""
    config = folder / "config.yaml"
    atomic_write(config, lambda tmp: tmp.write_text(
        yaml.safe_dump(parameters, sort_keys=False)))
    report["command"] = f"conceptprune run {config.resolve()}"
    clear_plans(folder)
    if examples is not None:
        clear_thumbnails(folder / THUMBS)
        report["examples"] = examples(folder / THUMBS)
    validate_report(report)
    write_json(folder / "report.json", report)
    return render_page(report, folder, report["command"])


def restate(folder: Path, parameters: dict[str, Any], command: str) -> dict[str, Any]:
    """The report of a run made in a local mirror, saying the settings it was given (its
    remote output) and the command that reruns it; the page rendered again."""
    report = json.loads((folder / "report.json").read_text())
    report["parameters"], report["command"] = parameters, command
    atomic_write(folder / "config.yaml", lambda tmp: tmp.write_text(
        yaml.safe_dump(parameters, sort_keys=False)))
    validate_report(report)
    write_json(folder / "report.json", report)
    render_page(report, folder, command)
    return report


def add_to_report(folder: Path, name: str, section: dict[str, Any]) -> Path:
    """Add a section to a finished run's report.json (the demo's planted-duplicate figures,
    say) and render the page again; returns the page's path."""
    report = json.loads((folder / "report.json").read_text())
    report[name] = section
    validate_report(report)
    write_json(folder / "report.json", report)
    return render_page(report, folder, report.get("command", ""))


def rerender(run_dir: Path) -> Path:
    """``index.html`` of a finished run again, from its report.json (also a report made by
    an older version: what it lacks is left out of the page)."""
    path = run_dir / "report" / "report.json"
    if not path.exists():
        raise ReportError(f"{run_dir} holds no report/report.json: give the output folder of a "
                          "finished `conceptprune run`")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err}): run the same `conceptprune run` "
                          "again to write it anew") from err
    command = report.get("command") or f"conceptprune run <config of {run_dir}>"
    return render_page(report, path.parent, command)
