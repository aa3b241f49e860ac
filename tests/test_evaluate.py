"""``conceptprune evaluate`` on generated data: the run's pruned shards, a random subset of the
same size and the whole input, each trained with open_clip's own trainer (tiny model, one
seed, 64 samples seen) and scored zero-shot on a generated labelled set.

It completes; a stop after a training run resumes without training that run again; a fresh
rerun of an arm gives the same weights and figures; evaluate.json follows its shipped schema;
the page shows the table; each arm holds what it says (the random arm as many usable
samples as the run kept, byte copies of the input, with a ledger row per input sample).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import validate_config
from pipeline.evaluate.arms import check_arms, load_run, members
from pipeline.evaluate.model import evaluate_json_schema
from pipeline.evaluate.settings import EvaluateError
from pipeline.io.shards import iter_samples
from pipeline.runner import run
from pipeline.synth.eval_set import synth_eval_set
from pipeline.synth.images import synth_images

REPO = Path(__file__).resolve().parents[1]
SEED, CONCEPTS = 5, 3


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with semdedup and dbp over 150 generated images, and a labelled set of the same
    concepts beside it (``../evalset``)."""
    root = tmp_path_factory.mktemp("evaluate")
    data = synth_images(root / "data", 150, seed=SEED, samples_per_shard=50, concepts=CONCEPTS)
    out = root / "out"
    run(validate_config({
        "input": {"shards": str(data)}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 50,
                  "workers": 0},
        "semdedup": {"k": 2, "eps": 0.0005}, "dbp": {"k": 3, "keep_fraction": 0.5},
        "kmeans": {"niter": 2}, "write": {"max_count": 40}}))
    synth_eval_set(root / "evalset", 8, seed=SEED, concepts=CONCEPTS)
    return out


def command(out: Path, *more: str) -> list[str]:
    return ["evaluate", str(out), "--eval", str(out.parent / "evalset"), "--samples-seen",
            "64", "--model", "conceptprune-tiny-vit", "--arm", "random,full", "--seeds", "1",
            "--batch-size", "32", "--workers", "0", "--threads", "1", *more]


def ledger_counts(out: Path) -> tuple[int, int]:
    status = pq.read_table(out / "ledger", columns=["status"])["status"].to_numpy(
        zero_copy_only=False)
    return int((status == "kept").sum()), int((status != "failed").sum())


def test_three_arms_train_score_resume_and_rerun_to_the_same_figures(
        finished: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.evaluate.harness as harness

    runs = finished / "evaluate" / "runs"
    # a stop (SIGTERM) while the first arm's checkpoint is being scored
    real_score = harness.score_checkpoint

    def score_then_stop(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        os.kill(os.getpid(), signal.SIGTERM)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(harness, "score_checkpoint", score_then_stop)
    stopped = CliRunner().invoke(app, command(finished))
    assert stopped.exit_code == 143, stopped.output
    assert not (finished / ".conceptprune.lock").exists()
    assert (runs / "pruned-s0" / "train.json").exists()
    assert not (runs / "pruned-s0" / "result.json").exists()
    trained_at = (runs / "pruned-s0" / "trainer.log").stat().st_mtime_ns
    monkeypatch.undo()

    import pipeline.evaluate.trainer as trainer

    monkeypatch.setattr(trainer, "PROGRESS_S", 0.3)  # a training run says how far it got
    done = CliRunner().invoke(app, command(finished))
    assert done.exit_code == 0, done.output
    said = (finished / "evaluate" / "evaluate.log").read_text()
    assert re.search(r"random-s0: (trainer starting|epoch 1 of 1, \d+ of 64 samples)", said)
    # the trainer's own lines, as the progress relay reads them
    steps = trainer._STEP_LINE.findall((runs / "random-s0" / "trainer.log").read_text())
    assert steps and steps[-1] == ("0", "64", "64", "100")
    monkeypatch.undo()
    assert (runs / "pruned-s0" / "trainer.log").stat().st_mtime_ns == trained_at, \
        "the arm trained before the stop was trained again"
    result = json.loads((finished / "evaluate" / "evaluate.json").read_text())
    jsonschema.Draft202012Validator(json.loads(
        (REPO / "schemas" / "evaluate.schema.json").read_text())).validate(result)
    kept, usable = ledger_counts(finished)
    arms = {a["name"]: a for a in result["arms"]}
    assert list(arms) == ["pruned", "random", "full"]
    assert arms["pruned"]["subset_size"] == arms["random"]["subset_size"] == kept
    assert arms["full"]["subset_size"] == usable
    assert {r["label"] for r in result["runs"]} == {"pruned-s0", "random-s0", "full-s0"}
    for r in result["runs"]:
        assert r["samples_seen"] == 64 and r["steps"] == 2
        assert r["eval_samples"] == 8 * CONCEPTS
        assert "--samples-seen" not in r["command"] and "--train-num-samples 64" in \
            r["command"] and "--dataset-resampled" in r["command"]
    assert arms["random"]["difference_to_random"] is None
    assert arms["pruned"]["difference_to_random"] == pytest.approx(
        arms["pruned"]["mean"] - arms["random"]["mean"])
    assert arms["pruned"]["spread"] is None and arms["pruned"]["exceeds_spread"] is None

    # the page shows the table, one row per arm with its figures
    page = (finished / "report" / "index.html").read_text()
    table = page[page.index('id="evaluate-arms"'):]
    table = table[:table.index("</table>")]
    for arm in arms.values():
        assert f'<td class="text">{arm["name"]}</td><td>{arm["subset_size"]}</td>' in table
        assert f"{arm['mean']:.4f}" in table
    assert 'id="plot-evaluate"' in page
    report = json.loads((finished / "report" / "report.json").read_text())
    assert report["evaluate"] == result

    # a fresh rerun of the random arm (its shards drawn and copied again, trained, scored)
    # gives the same weights and figures: seeded draws, seeded trainer, seeded shuffle
    before = {r["label"]: r for r in result["runs"]}
    shutil.rmtree(runs / "random-s0")
    shutil.rmtree(finished / "evaluate" / "arms" / "random-s0")
    again = CliRunner().invoke(app, command(finished))
    assert again.exit_code == 0, again.output
    after = {r["label"]: r for r in json.loads(
        (finished / "evaluate" / "evaluate.json").read_text())["runs"]}
    for label in before:
        for field in ("top1", "mean_per_class", "weights_sha256", "subset_size", "command"):
            assert after[label][field] == before[label][field], (label, field)

    # other prompts: scored again, not trained again
    def stamps(name: str) -> dict[str, int]:
        return {p.name: (p / name).stat().st_mtime_ns for p in runs.iterdir()}

    trained, scored = stamps("train.json"), stamps("result.json")
    other = CliRunner().invoke(app, command(finished, "--template", "{}", "--probe-train",
                                            str(finished.parent / "evalset")))
    assert other.exit_code == 0, other.output
    assert stamps("train.json") == trained
    assert all(scored[name] != stamp for name, stamp in stamps("result.json").items())
    rescored = json.loads((finished / "evaluate" / "evaluate.json").read_text())
    assert all(0 <= r["probe_top1"] <= 1 for r in rescored["runs"])
    assert [r["weights_sha256"] for r in rescored["runs"]] == \
        [r["weights_sha256"] for r in result["runs"]]
    page = (finished / "report" / "index.html").read_text()
    assert "<th>linear probe</th>" in page
    assert f"{rescored['arms'][0]['probe_mean']:.4f}</td></tr>" in page
    assert json.loads((finished / "evaluate" / "evaluate.json").read_text())["templates"] == \
        ["{}"]


def test_a_recorded_command_pasted_into_a_shell_trains_the_same_weights(
        finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command evaluate.json keeps for a training run, run by bash as a person would
    (with a PYTHONPATH of their own set), writes the checkpoint the run scored."""
    from pipeline.evaluate.labelled import load_labelled
    from pipeline.evaluate.scoring import score_checkpoint

    evaluation = finished / "evaluate" / "evaluate.json"
    if not evaluation.exists():
        pytest.skip("needs the evaluate test's runs")
    recorded = next(r for r in json.loads(evaluation.read_text())["runs"]
                    if r["label"] == "pruned-s0")
    folder = Path(recorded["checkpoint"]).parents[1]
    kept = folder.with_name("pruned-s0.kept")
    folder.rename(kept)
    try:
        (tmp_path / "mine").mkdir()
        monkeypatch.setenv("PYTHONPATH", str(tmp_path / "mine"))
        proc = subprocess.run(["bash", "-c", recorded["command"]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        again = score_checkpoint(Path(recorded["checkpoint"]), "conceptprune-tiny-vit",
                                 load_labelled(str(finished.parent / "evalset")),
                                 ["a photo of a {}."], 64, 1)
        assert again["weights_sha256"] == recorded["weights_sha256"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        kept.rename(folder)


def test_the_arms_hold_what_they_say(finished: Path) -> None:
    run_ = load_run(finished)
    parts = [pq.read_table(run_.ledger_part(i)) for i in range(len(run_.shard_urls))]
    status = np.concatenate([p["status"].to_numpy(zero_copy_only=False) for p in parts])
    stage = np.concatenate([p["stage"].to_numpy(zero_copy_only=False) for p in parts])
    usable = status != "failed"

    def held(arm: str, seed: int = 0) -> np.ndarray:
        return np.concatenate(members(run_, arm, seed))

    random0, random1 = held("random", 0), held("random", 1)
    assert random0.sum() == random1.sum() == (status == "kept").sum()
    assert not (random0 & ~usable).any() and (random0 != random1).any()
    assert (held("full") == usable).all()
    assert (held("after-semdedup") == (usable & ~(stage == "semdedup"))).all()
    assert (held("after-dbp") == (status == "kept")).all()
    assert check_arms(["semdedup-only", "random", "random"], run_) == \
        ["pruned", "after-semdedup", "random"]
    with pytest.raises(EvaluateError, match="valid arms: pruned, random, full, after-semdedup"):
        check_arms(["dbp-only"], run_)
    with pytest.raises(EvaluateError, match="unknown arm 'best'"):
        check_arms(["best"], run_)

    # the random arm written by the harness: byte copies of exactly its ledger's kept rows
    arm = finished / "evaluate" / "arms" / "random-s0"
    if not arm.exists():
        pytest.skip("needs the evaluate test's arms")
    ledger = pq.read_table(arm / "ledger")
    assert ledger.num_rows == len(status)
    wanted = {k for k, s in zip(ledger["key"].to_pylist(), ledger["status"].to_pylist(),
                                strict=True) if s == "kept"}
    inputs = {s.key: s.members for url in run_.shard_urls for s in iter_samples(url)}
    copied = {s.key: s.members for tar in sorted((arm / "shards").glob("*.tar"))
              for s in iter_samples(str(tar))}
    assert set(copied) == wanted
    assert all(copied[k] == inputs[k] for k in wanted)
    sizes = json.loads((arm / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(wanted)


def test_what_evaluate_refuses_names_the_fix(finished: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    got = runner.invoke(app, command(finished, "--arm", "best"))
    assert got.exit_code == 1 and "unknown arm 'best'" in got.output
    got = runner.invoke(app, command(finished, "--template", "no slot"))
    assert got.exit_code == 2 and "one {} for the class name" in got.output
    got = runner.invoke(app, command(tmp_path))
    assert got.exit_code == 1 and "finished `conceptprune run`" in got.output
    (tmp_path / "new-webdataset").mkdir()  # nothing there: this venv's webdataset 1.x is seen
    got = runner.invoke(app, command(finished, "--trainer-path", str(tmp_path / "new-webdataset")))
    assert got.exit_code == 1 and "webdataset==0.2.86" in got.output, got.output
    # a stranger's file in a trainer folder is left alone and named
    folder = finished / "evaluate" / "runs" / "full-s0"
    if folder.exists():
        (folder / "train.json").unlink()  # as if the training must be done again
        (folder / "notes.txt").write_text("mine")
        got = runner.invoke(app, command(finished))
        assert got.exit_code == 1 and "notes.txt" in got.output
        assert (folder / "notes.txt").read_text() == "mine"
        (folder / "notes.txt").unlink()
    # and one in an arm's folder, which is replaced whole when the arm is written again
    arm = finished / "evaluate" / "arms" / "full"
    if arm.exists():
        (arm / "arm.json").unlink()  # as if the arm must be written again
        (arm / "shards" / "notes.txt").write_text("mine")
        got = runner.invoke(app, command(finished))
        assert got.exit_code == 1 and "shards/notes.txt" in got.output, got.output
        assert (arm / "shards" / "notes.txt").read_text() == "mine"


def test_the_shipped_evaluate_schema_is_current() -> None:
    assert (REPO / "schemas" / "evaluate.schema.json").read_text() == evaluate_json_schema()


def test_synth_eval_draws_the_training_data_concepts_as_classes(finished: Path,
                                                                tmp_path: Path) -> None:
    truth = pq.read_table(finished.parent / "data" / "ground_truth.parquet",
                          columns=["concept_name"])["concept_name"].to_pylist()
    got = CliRunner().invoke(app, ["synth-eval", str(tmp_path / "set"), "--per-class", "2",
                                   "--seed", str(SEED), "--concepts", str(CONCEPTS)])
    assert got.exit_code == 0, got.output
    folders = sorted(p.name for p in (tmp_path / "set").iterdir())
    # "red circle on stripes" in the ground truth is "red circle on a stripes background" here
    assert folders == sorted({n.replace(" on ", " on a ") + " background" for n in truth})
    assert all(len(list((tmp_path / "set" / f).glob("*.jpg"))) == 2 for f in folders)
    # new pictures: none is byte-equal to a training picture
    pictures = {p.read_bytes() for p in (tmp_path / "set").rglob("*.jpg")}
    training = {s.image_bytes for tar in sorted((finished.parent / "data").glob("*.tar"))
                for s in iter_samples(str(tar))}
    assert not pictures & training
    again = CliRunner().invoke(app, ["synth-eval", str(tmp_path / "set")])
    assert again.exit_code == 1 and "not an empty folder" in again.output


def test_a_labelled_set_of_shards_with_cls_members(tmp_path: Path) -> None:
    """Labelled shards: each sample's ``.cls`` is its class index, the names come from
    classnames.txt beside the shards (or --classnames); a missing or out-of-range class is an
    error naming the sample and the fix."""
    import io
    import tarfile

    from PIL import Image

    from pipeline.evaluate.labelled import load_labelled

    def picture(shade: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (8, 8), (shade, 0, 0)).save(out, "PNG")
        return out.getvalue()

    def shard(path: Path, samples: list[tuple[str, bytes | None]]) -> None:
        with tarfile.open(path, "w") as tar:
            for key, cls in samples:
                for name, data in ((f"{key}.png", picture(len(key))), (f"{key}.cls", cls)):
                    if data is None:
                        continue
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

    folder = tmp_path / "labelled"
    folder.mkdir()
    shard(folder / "00000.tar", [("a", b"1"), ("b", b"0\n")])
    shard(folder / "00001.tar", [("c", b"2")])
    with pytest.raises(EvaluateError, match="classnames.txt"):
        load_labelled(str(folder))
    (folder / "classnames.txt").write_text("cat\ndog\nbird\n")
    labelled = load_labelled(str(folder))
    assert labelled.kind == "shards" and labelled.classnames == ["cat", "dog", "bird"]
    assert [label for _, label in labelled.images()] == [1, 0, 2]
    names = tmp_path / "names.txt"
    names.write_text("x\ny\nz\n")
    assert load_labelled(str(folder), str(names)).classnames == ["x", "y", "z"]
    shard(folder / "00002.tar", [("d", b"7")])
    with pytest.raises(EvaluateError, match=r"d.cls in .*00002.tar is class 7, but the class "
                                            r"names list 3 classes \(0 to 2\)"):
        list(load_labelled(str(folder)).images())
    shard(folder / "00002.tar", [("d", None)])
    with pytest.raises(EvaluateError, match="sample d of .*00002.tar has no cls member"):
        list(load_labelled(str(folder)).images())
