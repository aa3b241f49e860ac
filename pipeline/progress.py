"""Progress of a run's long steps, for a person to follow.

A ``Progress`` counts the units of a step's map (shards, parts, buckets) and, where the step
knows them, the samples inside them (images): done of the total, rate and ETA. On a terminal
it draws a bar whose final state stays on screen; every ``interval_s`` it logs a progress
line (shown on the console off a terminal; always in the run's log file); when the step ends,
one summary line: ``embed: 2,020 images from 11 shards in 8m12s, 4.1 img/s``.

A task running in this process (the local engine) may advance the meter it was handed. A
copy sent to a worker process (Ray, Spark) is a ``NoProgress``: the task returns what it
counted (``TaskCounts``) and the driver adds what no one showed yet.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tqdm.auto import tqdm

from pipeline.logs import SHOWN_ON_BAR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Samples:
    """What a step counts inside its units (images inside shards), and their total when
    known up front."""

    total: int | None
    noun: str = "samples"  # in counts: "1,318/2,020 images"
    short: str = "samples"  # in rates: "4.1 img/s"


@dataclass(frozen=True)
class TaskCounts:
    """What one task counted, and whether it advanced the driver's meter itself."""

    units: int
    samples: int
    shown: bool


class Meter(Protocol):
    live: bool  # advancing it shows: it is the driver's own

    def advance(self, units: int = 0, samples: int = 0) -> None: ...

    def add(self, counts: TaskCounts) -> None: ...


class NoProgress:
    """A meter that shows nothing: progress off, or a copy in another process."""

    live = False

    def advance(self, units: int = 0, samples: int = 0) -> None:
        return None

    def add(self, counts: TaskCounts) -> None:
        return None

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NO_PROGRESS = NoProgress()


def _no_progress() -> NoProgress:
    return NO_PROGRESS


class Tally:
    """Passes counts on to ``meter`` and sums them: what a task returns (``counts``)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.live = meter.live
        self.units = 0
        self.samples = 0

    def advance(self, units: int = 0, samples: int = 0) -> None:
        self.units += units
        self.samples += samples
        self.meter.advance(units, samples)

    def add(self, counts: TaskCounts) -> None:
        if not counts.shown:
            self.advance(counts.units, counts.samples)

    def counts(self) -> TaskCounts:
        return TaskCounts(self.units, self.samples, self.meter.live)


def plural(unit: str, n: int = 2) -> str:
    return unit if n == 1 or unit.endswith("s") else f"{unit}s"


def duration(seconds: float) -> str:
    """3.2s, 8m12s, 2h05m."""
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def rate(done: int, seconds: float, unit: str) -> str:
    """4.1 img/s; from 100 a second without a decimal (237,790 samples/s); below one a
    second, the time per unit: 25.0s/shard."""
    if done <= 0 or seconds <= 0:
        return f"0 {unit}/s"
    per_s = done / seconds
    if per_s >= 100:
        return f"{per_s:,.0f} {unit}/s"
    if per_s >= 1:
        return f"{per_s:,.1f} {unit}/s"
    return f"{duration(seconds / done)}/{unit}"


def eta(done: int, total: int | None, seconds: float) -> str | None:
    """The time left at the rate so far; None while nothing is done or without a total."""
    if not total or done <= 0 or done >= total:
        return None
    return duration(seconds * (total - done) / done)


def counted(done: int, total: int | None, noun: str, share: bool = True) -> str:
    """``1,318/2,020 images (65%)``, or ``1,318 images`` without a total."""
    if total is None:
        return f"{done:,} {noun}"
    share_text = f" ({done / total:.0%})" if total and share else ""
    return f"{done:,}/{total:,} {noun}{share_text}"


class Progress:
    """The meter of one map: a bar (``bar``), a line every ``interval_s`` (None: none) and a
    summary line at the end (``summary``). Use it as a context manager; it is safe to
    advance from several threads."""

    live = True

    def __init__(self, desc: str, total: int | None, unit: str = "unit", *,
                 samples: Samples | None = None, bar: bool = False,
                 interval_s: float | None = None, summary: bool = True,
                 clock: Callable[[], float] = time.monotonic, ticker: bool = True) -> None:
        """``ticker``: a thread logs the line when due even while nothing advances (a task
        that takes long); without it a line is only ever due when the meter advances."""
        self.desc, self.total, self.unit, self.samples = desc, total, unit, samples
        self.units_done = 0
        self.samples_done = 0
        self.interval_s = interval_s
        self.summary = summary
        self._clock = clock
        self._started = self._last = clock()
        self._lock = threading.Lock()
        self._want_bar = bar
        self._bar: tqdm | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticker = ticker and interval_s is not None

    def __reduce__(self) -> tuple[Callable[[], NoProgress], tuple[()]]:
        """A copy in another process shows nothing (see the module's docstring)."""
        return _no_progress, ()

    def __enter__(self) -> Progress:
        self._started = self._last = self._clock()
        if self._want_bar:
            self._bar = self._make_bar()
        if self._ticker:
            self._thread = threading.Thread(target=self._tick_loop, daemon=True,
                                            name=f"progress {self.desc}")
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()  # its final state stays on screen
        if kind is None and self.summary:
            log.info("%s", self.summary_line())

    def _make_bar(self) -> tqdm:
        """A bar over the samples when their total is known, else over the units; the
        other count beside it."""
        s = self.samples
        if s is not None and s.total is not None:
            bar = tqdm(desc=self.desc, total=s.total, unit=s.short, leave=True,
                       unit_scale=s.total >= 100_000, dynamic_ncols=True, disable=False)
        else:
            bar = tqdm(desc=self.desc, total=self.total, unit=self.unit, leave=True,
                       dynamic_ncols=True, disable=False)
        if s is not None:
            bar.set_postfix_str(self._beside_bar(), refresh=False)
        return bar

    def _on_bar(self) -> int:
        """The count the bar shows."""
        s = self.samples
        return self.samples_done if s is not None and s.total is not None else self.units_done

    def _beside_bar(self) -> str:
        s = self.samples
        if s is None:
            return ""
        return self._units_text() if s.total is not None else \
            counted(self.samples_done, None, s.noun)

    def _units_text(self) -> str:
        """``3/11 shards``; with their share only when no samples are counted."""
        return counted(self.units_done, self.total, plural(self.unit, self.total or 2),
                       self.samples is None)

    def advance(self, units: int = 0, samples: int = 0) -> None:
        with self._lock:
            self.units_done += units
            self.samples_done += samples
            if self._bar is not None:
                if self.samples is not None:
                    self._bar.set_postfix_str(self._beside_bar(), refresh=False)
                self._bar.update(self._on_bar() - self._bar.n)
        self.tick()

    def add(self, counts: TaskCounts) -> None:
        """A task's counts, unless it showed them itself."""
        if not counts.shown:
            self.advance(counts.units, counts.samples)

    def tick(self) -> None:
        """Log the progress line when one is due."""
        with self._lock:
            now = self._clock()
            if self.interval_s is None or now - self._last < self.interval_s:
                return
            self._last = now
            line = self.line(now)
            log.info("%s", line, extra={SHOWN_ON_BAR: self._bar is not None})

    def _tick_loop(self) -> None:
        period = max(0.05, (self.interval_s or 0.0) / 2)
        while not self._stop.wait(period):
            self.tick()

    def line(self, now: float | None = None) -> str:
        """``embed: 1,318/2,020 images (65%), 3/11 shards, 3.7 img/s, ETA 3m09s``."""
        seconds = (self._clock() if now is None else now) - self._started
        parts = [self._units_text()]
        if self.samples is None:
            parts.append(rate(self.units_done, seconds, self.unit))
            left = eta(self.units_done, self.total, seconds)
        else:
            s = self.samples
            parts.insert(0, counted(self.samples_done, s.total, s.noun))
            parts.append(rate(self.samples_done, seconds, s.short))
            # without a sample total, the units done tell the time left
            left = eta(self.samples_done, s.total, seconds) if s.total is not None else \
                eta(self.units_done, self.total, seconds)
        if left is not None:
            parts.append(f"ETA {left}")
        return f"{self.desc}: {', '.join(parts)}"

    def summary_line(self) -> str:
        """``embed: 2,020 images from 11 shards in 8m12s, 4.1 img/s``."""
        seconds = self._clock() - self._started
        units = f"{self.units_done:,} {plural(self.unit, self.units_done)}"
        if self.samples is None:
            return f"{self.desc}: {units} in {duration(seconds)}, " \
                   f"{rate(self.units_done, seconds, self.unit)}"
        return f"{self.desc}: {self.samples_done:,} {self.samples.noun} from {units} in " \
               f"{duration(seconds)}, {rate(self.samples_done, seconds, self.samples.short)}"


class ProgressSettings(Protocol):
    """The run settings a meter follows (``RunConfig``'s)."""

    progress: bool
    progress_interval_s: float


def step_progress(cfg: ProgressSettings, desc: str, total: int, unit: str,
                  samples: Samples | None = None, summary: bool = True
                  ) -> Progress | NoProgress:
    """The meter of a step's map of ``total`` units: with ``cfg.progress``, a bar on a
    terminal and a line every ``cfg.progress_interval_s``; the summary line unless told
    not. Nothing at all for a map with nothing to do."""
    if total == 0:
        return NO_PROGRESS
    shown = cfg.progress
    return Progress(desc, total, unit, samples=samples, bar=shown and _terminal(),
                    interval_s=cfg.progress_interval_s if shown else None, summary=summary)


def _terminal() -> bool:
    return sys.stderr.isatty()

