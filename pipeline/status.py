"""``conceptprune status OUTPUT``: where a running, stopped or finished run stands.

Read from the folders alone, from any machine that sees them: the settings the latest run
wrote into ``OUTPUT/logs/config.json`` when it began, its lock (held, and by whom, or
not), each step's state and units in the work folder (``describe``), and the last error or
stop its log recorded.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.config import validate_config
from pipeline.describe import DONE, Description, describe
from pipeline.errors import ConceptpruneError
from pipeline.logs import RUN_STARTED, STATUS_CONFIG
from pipeline.run_lock import LOCK_NAME

_LAST = re.compile(r" (ERROR|CRITICAL) | WARNING conceptprune: stopped by ")


class StatusError(ConceptpruneError, ValueError):
    """No run's status can be read from the folder."""


@dataclass
class Status:
    state: str  # running, finished, stopped or failed, or not started
    holder: dict[str, Any] | None  # the running run's lock: run, host, pid, started
    heartbeat_age_s: float | None
    last_problem: str | None  # the log's last error or stop line
    plan: Description

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def lines(self) -> list[str]:
        head = [f"state:  {self.state}"]
        if self.holder is not None:
            head.append(f"held by run {self.holder.get('run')} on {self.holder.get('host')} "
                        f"(pid {self.holder.get('pid')}, started {self.holder.get('started')}, "
                        f"heartbeat {self.heartbeat_age_s:.0f} s ago)")
        if self.last_problem:
            head.append(f"last:   {self.last_problem}")
        return head + self.plan.lines()


def _last_problem(log: Path) -> str | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    begun = max((i for i, line in enumerate(lines) if f"conceptprune: {RUN_STARTED}: " in line),
                default=0)
    found = [line for line in lines[begun:] if _LAST.search(line)]
    return found[-1] if found else None


def status(output: Path) -> Status:
    """The status of the latest run into ``output``."""
    settings = output / "logs" / STATUS_CONFIG
    try:
        cfg = validate_config(json.loads(settings.read_text()))
    except FileNotFoundError:
        raise StatusError(f"{output} holds no run of conceptprune ({settings} is missing): "
                          "give the output folder of a run") from None
    except ValueError as err:
        raise StatusError(f"{settings} cannot be read ({err}); run the same command again "
                          "to rewrite it") from None
    plan = describe(cfg)
    lock = output / LOCK_NAME
    holder = age = None
    if lock.exists():
        try:
            holder = json.loads(lock.read_text())
            age = time.time() - lock.stat().st_mtime
        except (OSError, ValueError):
            holder = None
    problem = _last_problem(output / "logs" / "run.log")
    if holder is not None and age is not None and age <= cfg.lock_stale_after_s:
        state = "running"
    elif plan.steps and plan.steps[-1].state == DONE:
        state = "finished"
    elif problem and "stopped by " in problem:
        state = "stopped"
    elif problem:
        state = "failed"
    else:
        state = "stopped"  # killed outright (SIGKILL, a lost node): nothing was logged
    return Status(state, holder if state == "running" else None,
                  age if state == "running" else None, problem, plan)
