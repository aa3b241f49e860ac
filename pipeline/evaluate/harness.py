"""``conceptprune evaluate``: every arm trained for the same samples seen, seed by seed, and
scored; ``evaluate/evaluate.json`` and a section of the run's report page.

Folders, all under the run's output folder:

- ``evaluate/arms/<arm>/``: an arm's shards and ledger (not for ``pruned``: the run's own);
- ``evaluate/runs/<arm>-s<seed>/``: the trainer's folder (open_clip's ``out.log``,
  ``params.txt``, ``checkpoints/``), with ``trainer.log``, ``train.json`` once trained and
  ``result.json`` once scored;
- ``evaluate/evaluate.json`` and ``evaluate/evaluate.log``.

Resumable as a run is: an arm and seed whose ``train.json`` and ``result.json`` were made with
the same settings (and the same run decisions and labelled set) is neither trained nor scored
again; one that changed is done again. A trainer folder holding a file the trainer does not
write is refused, untouched.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from pipeline.evaluate.arms import (
    FinishedRun,
    arm_fingerprint,
    arm_label,
    arm_shards,
    check_arms,
    load_run,
)
from pipeline.evaluate.labelled import LabelledSet, load_labelled
from pipeline.evaluate.model import SPREAD_RULE, Evaluation
from pipeline.evaluate.scoring import score_checkpoint
from pipeline.evaluate.settings import RANDOM, EvaluateError, EvaluateSettings
from pipeline.evaluate.trainer import check_trainer, train, training_run
from pipeline.workdir import fingerprint, read_json, write_json

log = logging.getLogger(__name__)

FOLDER = "evaluate"
RESULT = "evaluate.json"
# what a trainer's folder may hold: the trainer's own files and ours
_TRAINER_FILES = {"out.log", "params.txt", "checkpoints", "tensorboard", "trainer.log",
                  "train.json", "result.json"}


def _fresh(folder: Path) -> None:
    """Empty a trainer folder for a new training run; refuse one holding a stranger's file."""
    if not folder.exists():
        return
    strangers = sorted(p.name for p in folder.iterdir() if p.name not in _TRAINER_FILES)
    if strangers:
        raise EvaluateError(f"{folder} holds files evaluate did not write ({', '.join(strangers)}"
                            "): move them away, then run the same command again")
    shutil.rmtree(folder)


def _one(run: FinishedRun, settings: EvaluateSettings, labelled: LabelledSet,
         probe: LabelledSet | None, arm: str, seed: int, root: Path, max_count: int
         ) -> dict[str, Any]:
    """Train and score one arm and seed, or take what an earlier call finished."""
    label = f"{arm}-s{seed}"
    shards, size = arm_shards(run, arm, seed, root / "arms", max_count)
    if not size:
        raise EvaluateError(f"arm {arm_label(arm, seed)} holds no samples (the run kept none?): "
                            "there is nothing to train on; run with settings that keep some")
    training = training_run(settings, shards, root / "runs", label, seed)
    folder = training.folder
    trained = fingerprint(arm_fingerprint(run, arm, seed), settings.training(), seed, size)
    scored = fingerprint(trained, settings.scoring(), labelled.identity,
                         probe.identity if probe else None)
    held = read_json(folder / "train.json")
    if held is None or held.get("fingerprint") != trained or not training.checkpoint.exists():
        _fresh(folder)
        folder.mkdir(parents=True)
        log.info("%s: training on %d samples, %d samples seen (%d steps of %d)", label, size,
                 training.samples_seen, training.steps, settings.batch_size)
        seconds = train(training, folder / "trainer.log")
        held = {"fingerprint": trained, "train_s": round(seconds, 3),
                "command": training.shell()}
        write_json(folder / "train.json", held)
    result = read_json(folder / "result.json")
    if result is None or result.get("fingerprint") != scored:
        started = time.monotonic()
        score = score_checkpoint(training.checkpoint, settings.model, labelled,
                                 settings.templates, settings.eval_batch_size, settings.threads,
                                 probe)
        result = {"fingerprint": scored, "arm": arm, "seed": seed, "label": label,
                  "subset_size": size, "samples_seen": training.samples_seen,
                  "steps": training.steps, "top1": score["top1"],
                  "mean_per_class": score["mean_per_class"], "eval_samples": score["samples"],
                  "weights_sha256": score["weights_sha256"],
                  "probe_top1": score.get("probe_top1"),
                  "train_s": held["train_s"],
                  "score_s": round(time.monotonic() - started, 3), "command": held["command"],
                  "checkpoint": str(training.checkpoint)}
        write_json(folder / "result.json", result)
    log.info("%s: zero-shot top-1 %.4f (mean per class %.4f)%s", label, result["top1"],
             result["mean_per_class"], "" if result["probe_top1"] is None else
             f"; linear probe top-1 {result['probe_top1']:.4f}")
    return {k: v for k, v in result.items() if k != "fingerprint"}


def _summaries(run: FinishedRun, arms: list[str], results: list[dict[str, Any]], root: Path
               ) -> list[dict[str, Any]]:
    def spread(values: list[float]) -> float | None:
        return statistics.stdev(values) if len(values) > 1 else None

    by_arm = {arm: [r for r in results if r["arm"] == arm] for arm in arms}
    random = [r["top1"] for r in by_arm.get(RANDOM, [])]
    out = []
    for arm, rows in by_arm.items():
        top1 = [r["top1"] for r in rows]
        mean = statistics.fmean(top1)
        probes = [r["probe_top1"] for r in rows if r["probe_top1"] is not None]
        difference = exceeds = None
        if random and arm != RANDOM:
            difference = mean - statistics.fmean(random)
            mine, theirs = spread(top1), spread(random)
            if mine is not None and theirs is not None:
                exceeds = abs(difference) > mine + theirs
        if arm == "pruned":
            shards, ledger = str(run.folder / "shards"), None
        else:  # a random arm draws anew for each seed: random-s0, random-s1, ...
            folder = root / "arms" / (f"{RANDOM}-s*" if arm == RANDOM else arm)
            shards, ledger = str(folder / "shards"), str(folder / "ledger")
        out.append({"name": arm, "subset_size": rows[0]["subset_size"], "shards": shards,
                    "ledger": ledger, "top1": top1, "mean": mean, "spread": spread(top1),
                    "probe_mean": statistics.fmean(probes) if probes else None,
                    "difference_to_random": difference, "exceeds_spread": exceeds})
    return out


def evaluate(run_dir: Path, settings: EvaluateSettings) -> dict[str, Any]:
    """Train and score every arm and seed (skipping what is done); evaluate.json's content."""
    from pipeline.interrupts import stop_on_signals
    from pipeline.logs import run_log
    from pipeline.report.publish import add_to_report
    from pipeline.run_lock import run_lock

    run = load_run(run_dir)
    arms = check_arms(settings.arms, run)
    labelled = load_labelled(settings.eval, settings.classnames)
    probe = None
    if settings.probe_train is not None:
        probe = load_labelled(settings.probe_train, settings.classnames)
        if probe.classnames != labelled.classnames:
            raise EvaluateError(f"the probe's training set {settings.probe_train} has other "
                                f"classes than {settings.eval}: give both the same classes "
                                "(the same folder names, or one --classnames)")
    version = check_trainer(settings)
    root = run_dir / FOLDER
    parameters = run.report["parameters"]
    with stop_on_signals(), run_lock(run_dir, "output folder",
                                     parameters.get("lock_stale_after_s", 300.0)), \
            run_log(root / "evaluate.log"):
        log.info("evaluate %s: arms %s, %d seeds, %d samples seen each, model %s; labelled "
                 "set %s (%d classes); trainer's webdataset %s", run_dir, ", ".join(arms),
                 settings.seeds, settings.samples_seen, settings.model, labelled.path,
                 len(labelled.classnames), version)
        results = [_one(run, settings, labelled, probe, arm, seed, root,
                        parameters["write"]["max_count"])
                   for seed in range(settings.seeds) for arm in arms]
        evaluation = {
            "run": str(run_dir), "model": settings.model, "samples_seen": settings.samples_seen,
            "seeds": list(range(settings.seeds)),
            "eval_set": {"path": str(labelled.path), "kind": labelled.kind,
                         "classes": len(labelled.classnames),
                         "samples": results[0]["eval_samples"],
                         "classnames": labelled.classnames},
            "templates": settings.templates, "rule": SPREAD_RULE,
            "arms": _summaries(run, arms, results, root), "runs": results,
            "settings": settings.model_dump(mode="json")}
        Evaluation.model_validate(evaluation)
        write_json(root / RESULT, evaluation)
        add_to_report(run_dir / "report", "evaluate", evaluation)
    return evaluation

