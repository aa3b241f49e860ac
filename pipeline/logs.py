"""How conceptprune logs: the line format, the console set-up of the command line, and the
log file a run keeps in its output folder. Apart from ``cli.py`` and ``runner.py`` so that
neither imports the other."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _not_library_chatter(record: logging.LogRecord) -> bool:
    """Drop INFO lines that libraries (open_clip) log through the root logger."""
    return record.name != "root" or record.levelno >= logging.WARNING


def setup_logging(verbose: bool) -> None:
    """Log to stderr; a run adds its own log file once it owns its output folder."""
    console = logging.StreamHandler(sys.stderr)
    if not verbose:
        console.addFilter(_not_library_chatter)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT,
                        handlers=[console], force=True)


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Everything logged while the run holds its output also goes to its log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
