"""The config contract and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import (
    ConfigError,
    apply_overrides,
    config_json_schema,
    load_config,
    validate_config,
)
from pipeline.stages.registry import enabled_steps

REPO = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path: Path) -> None:
    cfg_file = write_yaml(tmp_path / "c.yaml", "input: {embeddings: /data}\noutput: /out\n")
    cfg = load_config(cfg_file, ["dbp.k=7", "semdedup.eps=0.03", "clip_filter.enabled=true",
                                 "clip_filter.threshold=0.25", "kmeans.niter=5"])
    assert cfg.dbp.k == 7 and cfg.dbp.l == 20 and cfg.dbp.temperature == 0.1
    assert cfg.dbp.keep == "hard" and cfg.dbp.balance == 0
    assert cfg.semdedup.eps == 0.03 and cfg.semdedup.k == "auto"
    assert cfg.clip_filter.threshold == 0.25
    assert cfg.kmeans.niter == 5 and cfg.kmeans.max_points_per_centroid == 256
    assert cfg.work_dir == Path("/out/_work")
    assert [s.name for s in enabled_steps(cfg)] == ["semdedup", "clip_filter", "dbp"]



def test_set_values_are_read_as_yaml() -> None:
    """--set key=value reads the value as YAML, as the config file's values are read."""
    data = apply_overrides({}, [
        "dbp.k=7", "clip_filter.enabled=false", "semdedup.eps=0.05", "kmeans.niter=5",
        "input.shards=[a.tar, b.tar]", "output='007'", 'engine.app_name="true"',
        "engine.conf={spark.executor.memory: 2g}", "dbp.keep_fraction=null", "work="])
    assert data == {
        "dbp": {"k": 7, "keep_fraction": None}, "clip_filter": {"enabled": False},
        "semdedup": {"eps": 0.05}, "kmeans": {"niter": 5},
        "input": {"shards": ["a.tar", "b.tar"]}, "output": "007",
        "engine": {"app_name": "true", "conf": {"spark.executor.memory": "2g"}}, "work": None}
    assert type(data["dbp"]["k"]) is int and type(data["semdedup"]["eps"]) is float
    assert data["clip_filter"]["enabled"] is False
    # and the run's config has the types the YAML said, not strings the model happened to take
    cfg = load_config(None, ["input.shards=[a.tar, b.tar]", "output='007'", "dbp.k=7",
                             "engine.conf={spark.executor.memory: 2g}",
                             "dbp.keep_fraction=null", "dbp.keep_count=100"])
    assert cfg.input.shards == ["a.tar", "b.tar"] and cfg.output == "007"
    assert cfg.engine.conf == {"spark.executor.memory": "2g"}
    assert cfg.dbp.keep_fraction is None and cfg.dbp.keep_count == 100 and cfg.dbp.k == 7

@pytest.mark.parametrize("override, message", [
    ("dbp.keep_fraction=0", "dbp.keep_fraction must be in (0, 1]"),
    ("dbp.keep_fraction=1.5", "dbp.keep_fraction must be in (0, 1]"),
    ("dbp.keep=medium", "dbp.keep"),
    ("semdedup.eps=0", "semdedup.eps"),
    ("dbp.k=0", "dbp.k"),
    ("semdedup.k=0", "semdedup.k must be >= 1"),
    ("dbp.tau=1", "dbp.tau"),
])
def test_bad_settings_name_the_setting(tmp_path: Path, override: str, message: str) -> None:
    cfg_file = write_yaml(tmp_path / "c.yaml", "input: {embeddings: /d}\noutput: /o\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg_file, [override])
    assert message in str(err.value)
    assert str(cfg_file) in str(err.value)


def test_clip_filter_needs_one_rule() -> None:
    base = {"input": {"embeddings": "/d"}, "output": "/o"}
    with pytest.raises(ConfigError, match="exactly one of clip_filter.threshold"):
        validate_config({**base, "clip_filter": {"enabled": True}})
    with pytest.raises(ConfigError, match=r"clip_filter.keep_fraction must be in \(0, 1\]"):
        validate_config({**base, "clip_filter": {"enabled": True, "keep_fraction": 2}})
    with pytest.raises(ConfigError, match="exactly one of input.shards, input.embeddings or"):
        validate_config({"input": {}, "output": "/o"})


def test_bad_override_syntax_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["dbp.k"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_config_schema_is_current() -> None:
    shipped = (REPO / "schemas" / "config.schema.json").read_text()
    assert shipped == config_json_schema(), "run `conceptprune config-schema > " \
        "schemas/config.schema.json`"


def test_cli_run_and_help(tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, ["run", "--help"]).output
    assert "--set" in help_text and "resumes" in help_text
    data = tmp_path / "data"
    res = runner.invoke(app, ["synth-embeddings", str(data), "--samples", "500", "--dim", "16",
                              "--concepts", "5"])
    assert res.exit_code == 0, res.output
    cfg = write_yaml(tmp_path / "run.yaml",
                     f"input: {{embeddings: {data}}}\noutput: {tmp_path / 'out'}\n")
    res = runner.invoke(app, ["run", str(cfg), "--no-progress", "--set", "semdedup.k=3",
                              "--set", "dbp.k=4", "--set", "dbp.keep_fraction=0.4"])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output
    report = json.loads((tmp_path / "out" / "report" / "report.json").read_text())
    assert report["parameters"]["dbp"]["keep_fraction"] == 0.4
    assert (tmp_path / "out" / "logs" / "run.log").exists()


def test_help_shows_flags_as_flags_examples_and_the_version() -> None:
    """`run --help` reads as plain text: a flag takes no value ("<bool>" said it did),
    sentences are not broken mid-line, examples are kept as written; --version answers."""
    from importlib.metadata import version

    runner = CliRunner()
    help_text = runner.invoke(app, ["run", "--help"], terminal_width=100).output
    assert "<bool>" not in help_text and "--overwrite " in help_text
    assert "--set KEY=VALUE" in help_text and "--engine local|ray|spark" in help_text
    assert "Re-running the same command resumes an interrupted run from its work folder, and" \
        in help_text  # the paragraph rewrapped, not cut where the docstring's line ends
    assert "  conceptprune run config.yaml --set dbp.k=200 --set dbp.keep_fraction=0.3\n" \
        in help_text
    for command in ("describe", "status", "synth", "synth-embeddings", "report", "plan"):
        assert "<bool>" not in runner.invoke(app, [command, "--help"]).output, command
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output == f"conceptprune {version('conceptprune')}\n"


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg = write_yaml(tmp_path / "run.yaml",
                     f"input: {{embeddings: {tmp_path / 'missing'}}}\noutput: {tmp_path}/o\n")
    res = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert res.exit_code == 1
    res = runner.invoke(app, ["run", str(cfg), "--set", "dbp.keep_fraction=3"])
    assert res.exit_code == 2
    assert "dbp.keep_fraction must be in (0, 1]" in res.output


def test_a_set_value_that_is_not_yaml_is_taken_as_written(tmp_path: Path) -> None:
    """README's DataComp shard name needs no quoting on the command line, and a broken list
    is named by its setting's own check, not a YAML parser's traceback."""
    from pipeline.config import ConfigError, load_config

    base = [f"input.embeddings={tmp_path}", f"output={tmp_path / 'out'}"]
    cfg = load_config(None, [*base, "write.shard_name={:08d}"])
    assert cfg.write.shard_name == "{:08d}"
    with pytest.raises(ConfigError, match="dbp.k"):
        load_config(None, [*base, "dbp.k=[3"])
    result = CliRunner().invoke(app, ["run", "--set", base[0], "--set", base[1],
                                      "--set", "dbp.k=[3"])
    assert result.exit_code == 2 and "dbp.k" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["synth", "synth-embeddings"])
def test_generators_never_write_into_a_folder_that_holds_files(tmp_path: Path,
                                                               command: str) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    result = CliRunner().invoke(app, [command, str(tmp_path), "--samples", "20"])
    assert result.exit_code == 1
    assert f"{tmp_path} already exists and is not an empty folder" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    assert (tmp_path / "mine.txt").read_text() == "keep"
