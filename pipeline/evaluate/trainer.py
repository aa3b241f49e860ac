"""One arm and seed trained with open_clip's own trainer, in a process of its own: the
command (kept in the results, so each training run can be repeated by hand), the trainer's
environment check, and the checkpoint it leaves."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pipeline
from pipeline.evaluate.settings import EvaluateError, EvaluateSettings

log = logging.getLogger(__name__)

OLD_WEBDATASET = "webdataset-0.2.86"  # make install's copy: .venv/clients/webdataset-0.2.86
_NUMBERED = re.compile(r"(.*?)(\d+)\.tar")


def default_trainer_path() -> str | None:
    """The copy of webdataset 0.2.86 `make install` puts beside this environment, if any."""
    path = Path(sys.prefix) / "clients" / OLD_WEBDATASET
    return str(path) if path.is_dir() else None


def shard_spec(paths: list[Path]) -> str:
    """The shards as open_clip's --train-data takes them: one brace range where the names
    are consecutive numbers of one width, else a '::' list."""
    found = [_NUMBERED.fullmatch(p.name) for p in paths]
    if all(found) and len({p.parent for p in paths}) == 1:
        heads = {m.group(1) for m in found}
        numbers = [m.group(2) for m in found]
        widths = {len(n) for n in numbers}
        values = [int(n) for n in numbers]
        if len(heads) == 1 and len(widths) == 1 and \
                values == list(range(values[0], values[0] + len(values))):
            head = heads.pop()
            if len(paths) == 1:
                return str(paths[0])
            return str(paths[0].parent / f"{head}{{{numbers[0]}..{numbers[-1]}}}.tar")
    return "::".join(str(p) for p in paths)


@dataclass(frozen=True)
class TrainingRun:
    """The command that trains one arm and seed, and where it leaves its checkpoint."""

    argv: list[str]
    env: dict[str, str]  # set on top of the caller's environment
    logs: Path  # open_clip's --logs; the run is logs/name
    name: str
    samples_seen: int  # as the trainer rounds it: whole batches
    steps: int

    @property
    def folder(self) -> Path:
        return self.logs / self.name

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoints" / f"epoch_{self.epochs}.pt"

    @property
    def epochs(self) -> int:
        return int(self.argv[self.argv.index("--epochs") + 1])

    def environment(self) -> dict[str, str]:
        """This process's environment with the run's on top; PYTHONPATH goes before the one
        already set (where a --target install of the packages may be)."""
        env = {**os.environ, **self.env}
        if os.environ.get("PYTHONPATH") and "PYTHONPATH" in self.env:
            env["PYTHONPATH"] = os.pathsep.join([self.env["PYTHONPATH"],
                                                 os.environ["PYTHONPATH"]])
        return env

    def shell(self) -> str:
        """The command as one would paste it into a shell (PYTHONPATH put before yours)."""
        env = " ".join(f"{k}={shlex.quote(v)}" + ("${PYTHONPATH:+:$PYTHONPATH}"
                                                  if k == "PYTHONPATH" else "")
                       for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.argv)}".strip()


def precision(settings: EvaluateSettings) -> str:
    if settings.precision != "auto":
        return settings.precision
    import torch

    return "amp" if torch.cuda.is_available() else "fp32"


def training_run(settings: EvaluateSettings, shards: list[Path], logs: Path, name: str,
                 seed: int) -> TrainingRun:
    """open_clip_train.main's arguments for DataComp's fixed-compute rule: every arm sees
    ``samples_seen`` samples (shards drawn with replacement, --dataset-resampled), split
    among ``epochs`` checkpoints."""
    per_epoch = math.ceil(settings.samples_seen / settings.epochs)
    batches = math.ceil(per_epoch / settings.batch_size)
    steps = batches * settings.epochs
    warmup = settings.warmup if settings.warmup is not None else max(1, steps // 10)
    python = settings.trainer_python or sys.executable
    launcher = shlex.split(settings.launcher) if settings.launcher else [python]
    argv = [*launcher, "-m", "pipeline.evaluate.launch",
            "--train-data", shard_spec(shards), "--dataset-type", "webdataset",
            "--dataset-resampled", "--train-num-samples", str(per_epoch),
            "--epochs", str(settings.epochs), "--batch-size", str(settings.batch_size),
            "--model", settings.model, "--seed", str(seed), "--lr", str(settings.lr),
            "--wd", str(settings.wd), "--warmup", str(warmup),
            "--workers", str(settings.workers), "--precision", precision(settings),
            "--logs", str(logs), "--name", name, "--save-frequency", str(settings.epochs),
            "--report-to", "", "--log-every-n-steps", str(max(1, steps // 20)),
            *settings.trainer_args]
    code = str(Path(pipeline.__file__).resolve().parents[1])
    path = [p for p in (settings.trainer_path or default_trainer_path(), code) if p]
    env = {"PYTHONPATH": os.pathsep.join(path)}
    if settings.threads is not None:
        env["CONCEPTPRUNE_TRAIN_THREADS"] = str(settings.threads)
    return TrainingRun(argv, env, logs, name, batches * settings.batch_size * settings.epochs,
                       steps)


def check_trainer(settings: EvaluateSettings) -> str:
    """The trainer environment's webdataset version, or an EvaluateError with the fix."""
    run = training_run(settings, [Path("x.tar")], Path("."), "check", 0)
    return _probe(settings.trainer_python or sys.executable,
                  run.environment()["PYTHONPATH"])


@functools.cache  # an environment is looked at once in a process
def _probe(python: str, path: str) -> str:
    probe = ("import webdataset, open_clip_train.main, pipeline.evaluate.launch as l; "
             "print(webdataset.__version__); "
             "assert l._version(webdataset.__version__) <= l.MAX_WEBDATASET")
    proc = subprocess.run([python, "-c", probe], env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        version = proc.stdout.strip() or "not importable"
        raise EvaluateError(
            f"open_clip's trainer cannot run in {python} with PYTHONPATH "
            f"{path!r} (webdataset: {version}; "
            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}): it needs "
            "open_clip_torch with its training extra and webdataset <= 0.2.86 — pip install "
            "--target DIR webdataset==0.2.86 and give --trainer-path DIR (make install "
            f"makes .venv/clients/{OLD_WEBDATASET}), or --trainer-python of an environment "
            "that has both")
    return proc.stdout.strip()


PROGRESS_S = 30.0  # how often a training run's progress is logged
_STEP_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\]")


def _wait_saying_progress(proc: subprocess.Popen, name: str, epochs: int, log_file: Path,
                          started: float) -> int:
    """Wait for the trainer; every ``PROGRESS_S`` log how far its own log says it got (the
    samples of its epoch done, elapsed time and the time left at that pace)."""
    while True:
        try:
            return proc.wait(timeout=PROGRESS_S)
        except subprocess.TimeoutExpired:
            pass
        found = _STEP_LINE.findall(log_file.read_text(errors="replace")[-20000:])
        elapsed = time.monotonic() - started
        if not found:
            log.info("%s: trainer starting (%.0f s; its output: %s)", name, elapsed, log_file)
            continue
        epoch, done, total, percent = (int(x) for x in found[-1])
        part = (epoch + percent / 100) / epochs  # of the whole run
        left = elapsed * (1 - part) / part if part else float("nan")
        log.info("%s: epoch %d of %d, %d of %d samples (%d%%) in %.0f s, about %.0f s left",
                 name, epoch + 1, epochs, done, total, percent, elapsed, left)


def train(run: TrainingRun, log_file: Path) -> float:
    """Run the trainer; seconds taken. Its output goes to ``log_file``; a failure is an
    EvaluateError with its last lines. A stop (a signal, Ctrl-C) stops the trainer too."""
    started = time.monotonic()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(run.argv, env=run.environment(), stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            code = _wait_saying_progress(proc, run.name, run.epochs, log_file, started)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if code != 0 or not run.checkpoint.exists():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        raise EvaluateError(f"training {run.name} failed (exit {code}); its output is in "
                            f"{log_file}, the end of it:\n{tail}")
    return time.monotonic() - started
