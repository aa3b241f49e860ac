"""``conceptprune describe CONFIG``: the steps a run would take and what the work folder
already holds for each, without running anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import validate_config
from pipeline.runner import run
from pipeline.synth.embeddings import SynthSpec, synth_embeddings

SPEC = SynthSpec(samples=900, dim=16, concepts=5, files=3, seed=4, near_dup_noise=0.001)


def raw(data: Path, out: Path) -> dict:
    return {"input": {"embeddings": str(data)}, "output": str(out), "seed": 1,
            "progress": False, "semdedup": {"k": 4, "eps": 0.01},
            "clip_filter": {"enabled": True, "keep_fraction": 0.9},
            "dbp": {"k": 5, "keep_fraction": 0.5}}


def states(cfg_file: Path, *sets: str) -> dict[str, dict]:
    args = ["describe", str(cfg_file), "--json"] + [a for s in sets for a in ("--set", s)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return {s["name"]: s for s in json.loads(result.output)["steps"]}


def test_describe_follows_a_run_from_nothing_to_done(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = synth_embeddings(tmp_path / "data", SPEC)
    out = tmp_path / "out"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(raw(data, out)))
    fresh = states(cfg_file)
    assert list(fresh) == ["read", "uids", "semdedup", "clip_filter", "dbp", "write"]
    assert all(s["state"] == "to run" for s in fresh.values())
    assert fresh["read"]["total"] == 3
    assert not out.exists(), "describe wrote nothing"

    import pipeline.stages.dbp as dbp

    def killed(*_: object) -> None:
        raise RuntimeError("the node was lost in dbp")

    monkeypatch.setattr(dbp, "select_bucket", killed)
    with pytest.raises(Exception, match="node was lost"):
        run(validate_config(raw(data, out)))
    monkeypatch.undo()
    halfway = states(cfg_file)
    assert [halfway[n]["state"] for n in ("read", "uids", "semdedup", "clip_filter")] == \
        ["done"] * 4
    assert halfway["read"]["units"] == {"part": 3}
    assert halfway["dbp"]["state"] == "partly done"
    assert halfway["dbp"]["units"]["fit"] == 1 and halfway["dbp"]["units"]["assign"] == 3
    assert halfway["write"]["state"] == "to run"
    # a changed dbp setting: what comes before it stays done, dbp starts over
    other = states(cfg_file, "dbp.keep_fraction=0.3")
    assert other["clip_filter"]["state"] == "done" and other["dbp"]["state"] == "to run"
    # a changed semdedup setting redoes everything after read
    assert states(cfg_file, "semdedup.eps=0.02")["clip_filter"]["state"] == "to run"

    run(validate_config(raw(data, out)))
    assert all(s["state"] == "done" for s in states(cfg_file).values())
    text = CliRunner().invoke(app, ["describe", str(cfg_file)]).output
    assert "semdedup     done" in text and "engine: local" in text


def test_describe_plans_embed_on_the_image_path_and_waits_for_it(tmp_path: Path) -> None:
    from test_resume_images import raw_config

    from pipeline.synth.images import synth_images

    data = synth_images(tmp_path / "data", 24, seed=1, samples_per_shard=8, concepts=2)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(raw_config(data, tmp_path / "out")))
    plan = states(cfg_file)
    assert plan["embed"]["state"] == "to run" and plan["embed"]["total"] == 3
    assert plan["dbp"]["state"] == "to run (after embed)"


def status_of(out: Path) -> dict:
    result = CliRunner().invoke(app, ["status", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_status_tells_a_failed_a_stopped_a_running_and_a_finished_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import socket
    import time

    import pipeline.stages.dbp as dbp
    from pipeline.interrupts import Interrupted
    from pipeline.run_lock import LOCK_NAME

    data = synth_embeddings(tmp_path / "data", SPEC)
    out = tmp_path / "out"
    nothing = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert nothing.exit_code == 1 and "holds no run of conceptprune" in nothing.output

    def broken(*_: object) -> None:
        raise ZeroDivisionError("a bug in dbp")

    monkeypatch.setattr(dbp, "select_bucket", broken)
    with pytest.raises(ZeroDivisionError):
        run(validate_config(raw(data, out)))
    failed = status_of(out)
    steps = {s["name"]: s for s in failed["plan"]["steps"]}
    assert failed["state"] == "failed" and "internal error" in failed["last_problem"]
    assert steps["semdedup"]["state"] == "done" and steps["dbp"]["state"] == "partly done"

    def stop(*_: object) -> None:
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(dbp, "select_bucket", stop)
    with pytest.raises(Interrupted):
        run(validate_config(raw(data, out)))
    stopped = status_of(out)
    assert stopped["state"] == "stopped"
    assert stopped["last_problem"].endswith("stopped by SIGTERM at dbp; run the same command "
                                            "to resume")
    monkeypatch.undo()

    lock = out / LOCK_NAME  # another run holds the folder now, its heartbeat fresh
    lock.write_text(json.dumps({"run": "r1", "host": socket.gethostname(),
                                "pid": os.getpid(), "started": "now"}))
    running = status_of(out)
    assert running["state"] == "running" and running["holder"]["run"] == "r1"
    past = time.time() - 3600  # ... or its heartbeat stopped an hour ago
    os.utime(lock, (past, past))
    assert status_of(out)["state"] == "stopped"
    lock.unlink()

    run(validate_config(raw(data, out)))
    finished = status_of(out)
    assert finished["state"] == "finished" and finished["last_problem"] is None
    text = CliRunner().invoke(app, ["status", str(out)]).output
    assert text.startswith("state:  finished") and "dbp          done" in text
