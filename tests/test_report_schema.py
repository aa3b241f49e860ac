"""schemas/report.schema.json is generated from the report's pydantic model
(``pipeline/report/model.py``), and a run's report.json is checked against it: a real report
passes, and a wrong type, a missing key or an unknown key in a section is refused with the
place it breaks the schema. (The image path's report: ``test_report_page.py``.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import validate_config
from pipeline.report.model import report_json_schema
from pipeline.report.publish import ReportError, validate_report
from pipeline.runner import run
from pipeline.synth.embeddings import SynthSpec, synth_embeddings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """report.json of a small embeddings run with every pruning step on."""
    root = tmp_path_factory.mktemp("schema")
    data = synth_embeddings(root / "data", SynthSpec(samples=600, dim=16, concepts=5, files=2,
                                                     seed=3))
    run(validate_config({
        "input": {"embeddings": str(data)}, "output": str(root / "out"), "seed": 1,
        "progress": False, "semdedup": {"k": 3, "eps": 0.01},
        "clip_filter": {"enabled": True, "keep_fraction": 0.9},
        "dbp": {"k": 4, "keep_fraction": 0.5}}))
    return json.loads((root / "out" / "report" / "report.json").read_text())


def test_shipped_report_schema_is_current() -> None:
    shipped = (REPO / "schemas" / "report.schema.json").read_text()
    assert shipped == report_json_schema(), "run `conceptprune report-schema > " \
        "schemas/report.schema.json`"


def test_report_schema_command_prints_a_draft_2020_12_schema() -> None:
    res = CliRunner().invoke(app, ["report-schema"])
    assert res.exit_code == 0 and res.output == report_json_schema()
    schema = json.loads(res.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "conceptprune report.json"
    assert schema["properties"]["stages"]["description"] == "the funnel"


def test_a_real_report_follows_it_unchanged(report: dict[str, Any]) -> None:
    assert {"semdedup", "dbp", "clusters", "subset", "inputs"} <= set(report)
    before = json.dumps(report)
    validate_report(report)
    assert json.dumps(report) == before  # checked, never rewritten
    # a step's own section, or one added to a finished report, is a key of its own
    validate_report({**report, "toy": {"digit": "7", "removed": 3}, "demo": {"recall": 1.0}})


def broken(report: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict:  # noqa: ANN401
    """A copy of ``report`` with the value at ``path`` replaced (``DELETE``: removed)."""
    out = copy.deepcopy(report)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


DELETE = object()
CASES = [  # (path, value, where the message says it breaks, what it says)
    (("stages", 1, "in"), "12", "stages/1/in", "is not of type 'integer'"),
    (("stages", 0, "name"), "Read", "stages/0/name", "does not match"),
    (("engine",), "dask", "engine", "is not one of"),
    (("keep_fraction",), 1.5, "keep_fraction", "greater than the maximum"),
    (("stages",), DELETE, "(top level)", "'stages' is a required property"),
    (("subset", "uid_source"), DELETE, "subset", "'uid_source' is a required property"),
    (("subset", "uid_source"), "made up", "subset/uid_source", "is not one of"),
    (("dbp", "buckets"), 2, "dbp", "'buckets' was unexpected"),
    (("semdedup",), None, "semdedup", "is not of type 'object'"),
    (("clusters", 0, "probability"), -0.1, "clusters/0/probability", "less than the minimum"),
    (("clusters", 0, "name"), "c0", "clusters/0", "'name' was unexpected"),
    (("histograms", "clip_after", 0), -1, "histograms/clip_after/0", "less than the minimum"),
    (("inputs", 0, "shard"), "00000.tar", "inputs/0", "is not valid under any"),
    (("timings_s", "read"), "fast", "timings_s/read", "is not of type 'number'"),
    (("parameters", "seed"), DELETE, "parameters", "'seed' is a required property"),
]


@pytest.mark.parametrize(("path", "value", "where", "says"), CASES,
                         ids=["/".join(map(str, c[0])) for c in CASES])
def test_a_broken_report_is_refused_where_it_breaks(
        report: dict[str, Any], path: tuple[str | int, ...], value: Any,  # noqa: ANN401
        where: str, says: str) -> None:
    with pytest.raises(ReportError, match="schemas/report.schema.json") as err:
        validate_report(broken(report, path, value))
    assert f" at {where}: " in str(err.value) and says in str(err.value)


def test_a_shard_count_is_a_count(report: dict[str, Any]) -> None:
    shard = next(iter(report["shards"]))
    for key, value in (("read", DELETE), ("kept", -1), ("other", "3")):
        with pytest.raises(ReportError, match=f" at shards/{shard}"):
            validate_report(broken(report, ("shards", shard, key), value))
