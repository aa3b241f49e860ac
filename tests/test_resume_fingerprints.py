"""A changed setting, seed or input redoes exactly the steps that depend on it, and the
result equals a fresh run; a run killed anywhere resumes to the bytes of an unbroken one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from same_bytes import assert_same_contents, assert_same_run

import pipeline.run_inputs as inputs_mod
from pipeline.config import validate_config
from pipeline.output_guard import MANIFEST
from pipeline.runner import run
from pipeline.synth.embeddings import SynthSpec, synth_embeddings

REPO = Path(__file__).resolve().parents[1]
ALL = ["read", "semdedup", "clip_filter", "dbp", "write"]

BASE: dict[str, Any] = {
    "seed": 3, "progress": False,
    "kmeans": {"niter": 10, "max_points_per_centroid": 64},
    "semdedup": {"k": 4, "eps": 0.05},
    "clip_filter": {"enabled": True, "keep_fraction": 0.8},
    "dbp": {"k": 6, "l": 3, "temperature": 0.1, "keep_fraction": 0.5},
}


def settings(**dotted: Any) -> dict[str, Any]:
    raw = json.loads(json.dumps(BASE))
    for key, value in dotted.items():
        node = raw
        *path, last = key.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


def config(data: Path, out: Path, raw: dict[str, Any]) -> Any:
    return validate_config({"input": {"embeddings": str(data)}, "output": str(out), **raw})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_embeddings(tmp_path_factory.mktemp("resume") / "data",
                            SynthSpec(samples=900, dim=16, concepts=6, files=3, seed=4,
                                      near_dup_noise=0.05))


@pytest.fixture(scope="module")
def base(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "out"
    run(config(data, out, settings()))
    return out


def outcome(out: Path) -> dict[str, Any]:
    """Everything a run hands its user, less timings and where it ran."""
    report = json.loads((out / "report" / "report.json").read_text())
    for drop in ("timings_s", "parameters", "inputs", "command"):
        report.pop(drop)
    return {"subset.npy": (out / "subset.npy").read_bytes(),
            "ledger": pq.read_table(out / "ledger").to_pylist(), "report": report}


def assert_same_outcome(got: Path, want: Path) -> None:
    """outcome(got) == outcome(want), failing with a short message that names the first
    differences (subset positions, ledger rows, report paths)."""
    assert_same_contents(outcome(got), outcome(want), f"outcome of {got} vs {want}")


# a change of each setting, with the steps that must be reused
CHANGES = [
    ({"seed": 4}, []),
    ({"kmeans__niter": 3}, []),
    ({"kmeans__max_points_per_centroid": 8}, []),
    ({"semdedup__eps": 0.2}, []),
    ({"semdedup__k": 3}, []),
    ({"clip_filter__keep_fraction": 0.6}, ["semdedup"]),
    ({"clip_filter__keep_fraction": None, "clip_filter__threshold": 0.45}, ["semdedup"]),
    ({"clip_filter__enabled": False}, ["semdedup"]),
    ({"dbp__k": 5}, ["semdedup", "clip_filter"]),
    ({"dbp__l": 1}, ["semdedup", "clip_filter"]),
    ({"dbp__temperature": 0.02}, ["semdedup", "clip_filter"]),
    ({"dbp__keep_fraction": 0.3}, ["semdedup", "clip_filter"]),
    ({"dbp__keep_count": 200}, ["semdedup", "clip_filter"]),
    ({"dbp__balance": 0.9}, ["semdedup", "clip_filter"]),
    ({"dbp__keep": "easy"}, ["semdedup", "clip_filter"]),
    ({"dbp__keep": "random"}, ["semdedup", "clip_filter"]),
    ({"semdedup__enabled": False}, []),
]


@pytest.mark.parametrize("change, reused", CHANGES,
                         ids=[",".join(c) for c, _ in CHANGES])
def test_a_changed_setting_redoes_what_depends_on_it(
        data: Path, base: Path, tmp_path: Path, change: dict[str, Any], reused: list[str]
) -> None:
    out = tmp_path / "rerun"
    shutil.copytree(base, out)
    summary = run(config(data, out, settings(**change)))
    assert summary.skipped_steps == reused
    fresh = tmp_path / "fresh"
    run(config(data, fresh, settings(**change)))
    assert_same_outcome(out, fresh)
    assert outcome(out) != outcome(base), "the change must change the result"


def test_settings_that_change_nothing_reuse_everything(data: Path, base: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "rerun"
    shutil.copytree(base, out)
    # moved: only the write step, which names the output folder, is redone
    assert run(config(data, out, settings())).skipped_steps == ["semdedup", "clip_filter",
                                                               "dbp"]
    for change in ({"vector_cache_gb": 0}, {"progress": True}):
        raw = settings()
        raw.update(change)
        assert run(config(data, out, raw)).skipped_steps == ALL
    assert_same_outcome(out, base)


def test_an_input_file_edited_in_place_is_read_again(data: Path, base: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    out = tmp_path / "out"
    run(config(copy, out, settings()))
    assert_same_outcome(out, base)

    path = copy / "img_emb" / "img_emb_1.npy"
    img = np.load(path)
    img[:40] = img[40:80]  # same name, same size, other contents
    size = path.stat().st_size
    np.save(path, img)
    assert path.stat().st_size == size

    ingested: list[int] = []
    real = inputs_mod.ingest_part

    def counting(part, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        ingested.append(part.index)
        return real(part, *a, **kw)

    monkeypatch.setattr(inputs_mod, "ingest_part", counting)
    summary = run(config(copy, out, settings()))
    assert ingested == [1], "only the edited file is read again"
    assert summary.skipped_steps == []
    fresh = tmp_path / "fresh"
    run(config(copy, fresh, settings()))
    assert_same_outcome(out, fresh)
    assert outcome(fresh) != outcome(base)


# -- kills --------------------------------------------------------------------------------

def run_killed(cfg_file: Path, target: str, nth: int, match: str = "",
               killed: bool = True, signum: int = signal.SIGKILL) -> str:
    """The CLI run of ``cfg_file`` SIGKILLed (or sent ``signum``) at the point (see
    tests/kill_at.py); with ``killed=False``, a run that must finish (no point reached).
    Returns what it printed to stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "CONCEPTPRUNE_KILL_SIGNAL": signal.Signals(signum).name[3:]}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "kill_at.py"), target, str(nth), match, "--",
         "run", str(cfg_file), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # a SIGKILLed process has no say in its status; a stopped run exits 128 + the signal
    want = 0 if not killed else -9 if signum == signal.SIGKILL else 128 + signum
    assert proc.returncode == want, (f"{target} {nth} {match!r}: exit {proc.returncode}, "
                                     f"not {want}\n{proc.stderr[-4000:]}")
    return proc.stderr


def write_config(path: Path, data: Path, out: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"input": {"embeddings": str(data)}, "output": str(out),
                                    **raw}))
    return path


KILLS = [
    ("pipeline.stages.semdedup:decide_cluster", 3, ""),  # inside semdedup, between clusters
    ("pipeline.workdir:WorkDir.mark", 1, "'dbp'"),  # dbp written, its marker not yet
    ("pipeline.stages.ledger:write_parquet", 2, ".ledger.staging"),  # inside the ledger write
    ("pipeline.workdir:WorkDir.mark", 1, "dbp/assign-00001"),  # dbp: a unit done, one not
    ("pipeline.stages.shuffle:write_npy", 1, "bucket-00000.parts"),  # a bucket half written
    ("pathlib:Path.rename", 1, ".ledger.staging"),  # ledger swap: old moved away, new not in
    ("pipeline.report.publish:write_json", 1, "report.json"),  # everything but the report
]


@pytest.mark.parametrize("target, nth, match", KILLS, ids=[k[0] for k in KILLS])
def test_a_killed_rerun_resumes_to_the_same_bytes(data: Path, base: Path, tmp_path: Path,
                                                   target: str, nth: int, match: str) -> None:
    """The output already holds a finished run; a rerun with another setting is killed."""
    raw = settings(semdedup__eps=0.2, dbp__keep_fraction=0.3)
    out = tmp_path / "out"
    shutil.copytree(base, out)
    cfg_file = write_config(tmp_path / "c.yaml", data, out, raw)
    run_killed(cfg_file, target, nth, match)
    run(config(data, out, raw))
    fresh = tmp_path / "fresh"
    run(config(data, fresh, raw))
    assert_same_outcome(out, fresh)
    assert_same_run(out, fresh, parts=("subset.npy", "ledger"))  # and the ledger's bytes
    left = [p for p in out.iterdir() if p.name.startswith(".") and p.name != MANIFEST]
    assert not left, "staging or lock left behind"


def test_a_failed_unit_is_all_a_rerun_redoes(data: Path, base: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """dbp's select over several buckets fails at the third: the rerun selects only the
    buckets not done, and the bytes equal a run cut into other buckets. Resumed with another
    bucket size, no unit of the old plan is reused."""
    import pipeline.stages.dbp as dbp_mod

    real = dbp_mod.select_bucket
    calls: list[int] = []

    def failing(task):  # noqa: ANN001, ANN202
        calls.append(task.bucket)
        if len(calls) == 3:
            raise RuntimeError("worker lost")
        return real(task)

    def counting(task):  # noqa: ANN001, ANN202
        calls.append(task.bucket)
        return real(task)

    for second in (60, 200):
        out = tmp_path / f"out{second}"
        monkeypatch.setattr(dbp_mod, "select_bucket", failing)
        calls.clear()
        with pytest.raises(RuntimeError, match="worker lost"):
            run(config(data, out, settings(engine__bucket_rows=60)))
        monkeypatch.setattr(dbp_mod, "select_bucket", counting)
        calls.clear()
        summary = run(config(data, out, settings(engine__bucket_rows=second)))
        stats = json.loads((out / "_work" / "markers" / "dbp.json").read_text())["stats"]
        buckets = stats["extra"]["buckets"]
        assert buckets >= 3
        assert len(calls) == (buckets - 2 if second == 60 else buckets)
        assert summary.skipped_steps == ["semdedup", "clip_filter"]
        assert_same_outcome(out, base)
