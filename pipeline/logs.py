"""How conceptprune logs: the line format, the console set-up of the command line, the
log file a run keeps in its output folder, and how a run's error or stop is told. Apart from
``cli.py`` and ``runner.py`` so that neither imports the other."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import BUG_MESSAGE, ConceptpruneError
from pipeline.interrupts import Interrupted

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RUN_STARTED = "run started"  # the first line of every run in logs/run.log
STATUS_CONFIG = "config.json"  # OUTPUT/logs/: the settings of the latest run, for `status`
# a record's attribute: a progress line that a bar on the terminal shows already, so the
# console leaves it out (the run's log file keeps it)
SHOWN_ON_BAR = "shown_on_bar"


def _not_library_chatter(record: logging.LogRecord) -> bool:
    """Drop INFO lines that libraries (open_clip) log through the root logger."""
    return record.name != "root" or record.levelno >= logging.WARNING


def _not_on_a_bar(record: logging.LogRecord) -> bool:
    return not getattr(record, SHOWN_ON_BAR, False)


def setup_logging(verbose: bool) -> None:
    """Log to stderr; a run adds its own log file once it owns its output folder."""
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_not_on_a_bar)
    if not verbose:
        console.addFilter(_not_library_chatter)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT,
                        handlers=[console], force=True)


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Everything logged while the run holds its output also goes to its log file, after a
    line saying that a run started (whatever the log level: ``status`` reads the latest
    run's lines from it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.emit(logging.makeLogRecord({
        "name": "conceptprune", "levelno": logging.INFO, "levelname": "INFO",
        "msg": "%s: pid %d on %s", "args": (RUN_STARTED, os.getpid(), socket.gethostname())}))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


# the loggers a worker's long task shows when nobody configured its logging
WORKER_LOGGERS = ("pipeline.progress", "pipeline.algorithms.kmeans")


@contextmanager
def worker_lines() -> Iterator[None]:
    """In a process whose logging nobody set up (a Ray or Spark worker), the progress and
    k-means lines logged in the block go to its stderr (Ray shows a worker's on the driver's
    console, Spark keeps it in the executor's log); without this they were dropped, below
    Python's default WARNING. In the command line's own process nothing changes."""
    if logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    loggers = [logging.getLogger(name) for name in WORKER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def stop_name(err: BaseException) -> str:
    """How a stop is told: 'stopped by SIGTERM'."""
    return str(err) if isinstance(err, Interrupted) else "stopped by SIGINT (Ctrl-C)"


def log_error(err: BaseException, output: Path | None = None, work: Path | None = None
              ) -> None:
    """An error a person can fix as its one-line message; anything else (a bug) with its
    traceback, saying so."""
    if getattr(err, "_logged", False):
        return
    logger = logging.getLogger("conceptprune")
    if isinstance(err, OSError) and err.filename is None and \
            err.errno in (errno.ENOSPC, errno.EDQUOT) and output is not None:
        logger.error("%s: the disk of the work folder %s or of the output %s is full; free "
                     "space there, or set work (and output) to a larger disk, then run the "
                     "same command to resume", err, work, output)
    elif isinstance(err, ConceptpruneError | OSError):
        logger.error("%s", err)
    else:
        logger.critical(BUG_MESSAGE.replace("above", "below"), exc_info=err)
    err._logged = True  # type: ignore[attr-defined]


