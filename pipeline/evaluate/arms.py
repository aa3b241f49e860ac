"""The arms of an evaluation: which of a finished run's input samples each one trains on,
and the shards it reads.

- ``pruned``: the run's own output shards, as the run wrote them;
- ``random``: a seeded random draw of as many samples as the run kept, from the samples the
  run could use (not failed), one draw per seed;
- ``full``: every usable sample;
- ``after-<step>``: the samples no step up to and including ``<step>`` removed (``<step>-only``
  names the first pruning step's).

Every arm but ``pruned`` is written by the project as the run writes its shards: byte copies
of the input samples (``write_shards.write_kept``), with ``sizes.json`` and a ledger of its
own (one row per input sample: ``kept`` when the arm holds it, else ``removed`` or ``failed``
with the reason).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.evaluate.settings import AFTER, FULL, ONLY, PRUNED, RANDOM, EvaluateError
from pipeline.workdir import fingerprint, staged_dir, write_json, write_parquet

log = logging.getLogger(__name__)

ARM_FILE = "arm.json"
# what an arm's folder holds: arm.json, ledger/part-NNNNN.parquet, and the shards with their
# sidecars and indexes as the write step names them
_ARM_FILES = re.compile(r"arm\.json|part-\d{5}\.parquet|\d{5}(\.tar|\.parquet|_stats\.json)"
                        r"|sizes\.json|index\.wids\.json")


@dataclass(frozen=True)
class FinishedRun:
    """What evaluate reads of a finished ``conceptprune run``."""

    folder: Path
    report: dict[str, Any]
    shard_urls: list[str]  # the input shards, in ledger part order
    steps: list[str]  # the pruning steps, in run order
    identity: str  # changes whenever the run's decisions may have changed

    @property
    def seed(self) -> int:
        return int(self.report["parameters"]["seed"])

    def ledger_part(self, index: int) -> Path:
        return self.folder / "ledger" / f"part-{index:05d}.parquet"

    def metadata_part(self, index: int) -> Path:
        work = self.report["parameters"].get("work") or str(self.folder / "_work")
        return Path(work) / "embed" / "metadata" / f"metadata_{index}.parquet"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_run(folder: Path) -> FinishedRun:
    """The finished run in ``folder``, or an EvaluateError saying what is missing."""
    report_path = folder / "report" / "report.json"
    if not report_path.exists():
        raise EvaluateError(f"{folder} holds no report/report.json: give the output folder of "
                            "a finished `conceptprune run` (run it to the end first)")
    report = json.loads(report_path.read_text())
    inputs = report.get("inputs") or []
    if not inputs or "shard" not in inputs[0]:
        raise EvaluateError(f"{folder} is a run on embeddings (input.embeddings): evaluate "
                            "trains on images, so it needs a run on webdataset shards "
                            "(input.shards)")
    if not report.get("output_shards"):
        raise EvaluateError(f"{folder} wrote no shards (write.enabled: false): run it again "
                            "with write.enabled: true, so the pruned arm has shards to train on")
    for name in ("subset.npy", "ledger", "shards/sizes.json"):
        if not (folder / name).exists():
            raise EvaluateError(f"{folder / name} is missing: run the same `conceptprune run` "
                                "again to write it")
    steps = [s["name"] for s in report["stages"] if s["name"] != "read"]
    identity = fingerprint(_sha256(folder / "subset.npy"), report["stages"], inputs)
    return FinishedRun(folder, report, [i["file"][0] for i in inputs], steps, identity)


def check_arms(names: list[str], run: FinishedRun) -> list[str]:
    """The arms in order, ``pruned`` first and each once; ``<step>-only`` read as
    ``after-<step>``; an unknown name is an EvaluateError listing the valid ones."""
    valid = [PRUNED, RANDOM, FULL, *(AFTER + step for step in run.steps)]
    out = [PRUNED]
    for name in names:
        if name.endswith(ONLY) and run.steps and name[: -len(ONLY)] == run.steps[0]:
            name = AFTER + run.steps[0]
        elif name.endswith(ONLY):
            first = run.steps[0] if run.steps else "none"
            raise EvaluateError(
                f"arm {name!r}: only the first pruning step ({first}) has an '-only' arm; the "
                f"survivors of a later step are after-<step> (valid arms: {', '.join(valid)})")
        if name not in valid:
            raise EvaluateError(f"unknown arm {name!r}: use one of {', '.join(valid)} "
                                f"(this run's steps: {', '.join(run.steps) or 'none'})")
        if name not in out:
            out.append(name)
    return out


def arm_label(arm: str, seed: int) -> str:
    """The arm's folder name: a random arm draws anew for every seed."""
    return f"{arm}-s{seed}" if arm == RANDOM else arm


def _column(run: FinishedRun, index: int, name: str) -> np.ndarray:
    return pq.read_table(run.ledger_part(index), columns=[name])[name].to_numpy(
        zero_copy_only=False)


class Membership:
    """Which rows of each ledger part an arm holds, part by part: only one part's columns
    are in memory at a time (a random arm keeps one byte per usable sample besides)."""

    def __init__(self, run: FinishedRun, arm: str, seed: int) -> None:
        self.run, self.arm, self.seed = run, arm, seed
        self.reason = ""  # why a usable row is left out
        self._drawn: np.ndarray | None = None
        self._starts: list[int] = []
        self._removed_by: list[str] = []
        if arm == RANDOM:
            usable, kept = [], 0
            for i in range(len(run.shard_urls)):
                status = _column(run, i, "status")
                usable.append(int((status != "failed").sum()))
                kept += int((status == "kept").sum())
            self._starts = np.concatenate([[0], np.cumsum(usable)]).tolist()
            rng = np.random.default_rng([run.seed, seed, 0x7A2D])
            self._drawn = np.zeros(self._starts[-1], bool)
            self._drawn[rng.choice(self._starts[-1], size=kept, replace=False)] = True
            self.reason = f"not drawn for the random arm (seed {seed})"
        elif arm.startswith(AFTER):
            step = arm[len(AFTER):]
            self._removed_by = run.steps[: run.steps.index(step) + 1]
            self.reason = f"removed by a step up to {step}"

    def part(self, index: int, status: np.ndarray, stage: np.ndarray) -> np.ndarray:
        """The rows of ledger part ``index`` (its status and stage columns) the arm holds."""
        usable = status != "failed"
        if self.arm == FULL:
            return usable
        if self.arm == RANDOM:
            assert self._drawn is not None
            mask = np.zeros(len(status), bool)
            mask[np.flatnonzero(usable)] = self._drawn[self._starts[index]:
                                                       self._starts[index + 1]]
            return mask
        return usable & ~((status == "removed") & np.isin(stage, self._removed_by))


def members(run: FinishedRun, arm: str, seed: int) -> list[np.ndarray]:
    """Per ledger part, which rows the arm holds (all parts: for tests and small runs)."""
    held = Membership(run, arm, seed)
    return [held.part(i, _column(run, i, "status"), _column(run, i, "stage"))
            for i in range(len(run.shard_urls))]


def arm_fingerprint(run: FinishedRun, arm: str, seed: int) -> str:
    return fingerprint(run.identity, arm, seed if arm == RANDOM else None)


def pruned_shards(run: FinishedRun) -> tuple[list[Path], int]:
    """The run's own output shards and the samples they hold."""
    sizes = json.loads((run.folder / "shards" / "sizes.json").read_text())
    return [run.folder / "shards" / name for name in sizes], sum(sizes.values())


def arm_shards(run: FinishedRun, arm: str, seed: int, folder: Path, max_count: int
               ) -> tuple[list[Path], int]:
    """The arm's shards and sample count; written into ``folder/<label>`` unless a finished
    copy for this run is there already."""
    if arm == PRUNED:
        return pruned_shards(run)
    target = folder / arm_label(arm, seed)
    want = arm_fingerprint(run, arm, seed)
    done = target / ARM_FILE
    if done.exists():
        made = json.loads(done.read_text())
        if made.get("fingerprint") == want:
            return [target / "shards" / n for n in made["shards"]], made["samples"]
    strangers = sorted(str(f.relative_to(target)) for f in target.rglob("*")
                       if f.is_file() and not _ARM_FILES.fullmatch(f.name))
    if strangers:  # the folder is replaced whole: never with a file evaluate did not write
        raise EvaluateError(f"{target} holds files evaluate did not write "
                            f"({', '.join(strangers[:5])}): move them away, then run the "
                            "same command again")
    from pipeline.stages import write_shards as ws

    held = Membership(run, arm, seed)
    with staged_dir(target) as staging:
        (staging / "ledger").mkdir()
        (staging / "shards").mkdir()
        ledgers = []
        for i in range(len(run.shard_urls)):
            part = pq.read_table(run.ledger_part(i), columns=["key", "uid", "shard", "status",
                                                              "stage", "reason"])
            status = part["status"].to_numpy(zero_copy_only=False)
            mask = held.part(i, status, part["stage"].to_numpy(zero_copy_only=False))
            new_status = np.where(mask, "kept", np.where(status == "failed", "failed",
                                                         "removed"))
            reason = np.where(mask, None, np.where(
                status == "failed", part["reason"].to_numpy(zero_copy_only=False),
                held.reason))
            table = pa.table({"key": part["key"], "uid": part["uid"], "shard": part["shard"],
                              "status": pa.array(new_status, pa.string()),
                              "reason": pa.array(reason, pa.string())})
            path = staging / "ledger" / f"part-{i:05d}.parquet"
            write_parquet(path, table)
            ledgers.append(path)
        metadata = [run.metadata_part(i) for i in range(len(run.shard_urls))]
        raw = staging / "shards" / ".range-00000"  # number_shards' name for one range
        raw.mkdir()
        written, counts = ws.write_kept(run.shard_urls, ledgers, raw, max_count, 1 << 62,
                                        metadata_parts=metadata)
        named = ws.number_shards(staging / "shards", [{"shards": [
            [w.name, w.count, w.bytes] for w in written]}])
        ws.write_indexes(staging / "shards", named)
        samples = sum(n[1] for n in named)
        if counts.not_copied:
            raise EvaluateError(
                f"{counts.not_copied} samples of arm {arm_label(arm, seed)} are no longer in "
                "their input shards as the run read them (changed or moved since?): restore "
                "the inputs, or run the same `conceptprune run` again")
        write_json(staging / ARM_FILE, {"fingerprint": want, "arm": arm, "seed": seed,
                                        "shards": [f"{n[0]}.tar" for n in named],
                                        "samples": samples})
    log.info("arm %s: %d samples copied into %d shards (%s)", arm_label(arm, seed), samples,
             len(named), target / "shards")
    return [target / "shards" / f"{n[0]}.tar" for n in named], samples
