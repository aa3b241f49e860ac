"""Run the ``conceptprune`` CLI and SIGKILL it at a chosen point, as a crash would.

    python tests/kill_at.py MODULE:ATTR NTH MATCH -- run CONFIG ...

The process kills itself just before the NTH call of ``MODULE:ATTR`` (``Class.method``
allowed) whose arguments' text contains MATCH ('' matches every call). Nothing is cleaned
up: no finally blocks, no atexit, exactly what a lost machine leaves behind.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def arm(target: str, nth: int, match: str) -> None:
    module_name, attr_path = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    seen = 0

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal seen
        if match in repr(args) + repr(kwargs):
            seen += 1
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(owner, name, wrapper)


def main() -> None:
    target, nth, match, sep, *cli = sys.argv[1:]
    assert sep == "--", "usage: kill_at.py MODULE:ATTR NTH MATCH -- CLI ARGS"
    arm(target, int(nth), match)
    from pipeline.cli import app

    app(cli)


if __name__ == "__main__":
    main()
