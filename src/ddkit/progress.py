"""Progress that fits where it goes: a tqdm bar on a terminal, plain lines in a log, nothing when quiet.

A batch job's stderr is a file (a cluster scheduler's log, nohup, CI), where a tqdm bar writes every redraw
with carriage returns: megabytes that bury the one line saying what went wrong. There a bar prints one
complete line at most every `DDKIT_PROGRESS_S` seconds (default 30) and one when it ends, e.g.

    ddkit: teacher convnet3: epoch 4/12 (33%), 0.52 epoch/s, 7.7 s elapsed, ETA 15 s, loss=1.204
    ddkit: teacher convnet3: epoch 12/12 done, 0.52 epoch/s, 23 s elapsed, loss=0.713

The ETA divides what is left by the rate over the last ten lines (the whole run until there are ten), so a
loop that slows midway — a protocol that also tests every 10 epochs in its last fifth — says so within
minutes instead of promising the early pace. The rate printed is the whole run's.

The end line is written by `close()`, which callers reach only when the loop ends normally (also by an
early stop): a loop left by an exception prints nothing more, so the error stays the last line. Under
torchrun only rank 0 reports.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Callable, TextIO

from tqdm import tqdm

from . import dist
from .utils import DDKitError


ETA_LINES = 10


def interval_s() -> float:
    raw = os.environ.get("DDKIT_PROGRESS_S", "30")
    try:
        return float(raw)
    except ValueError:
        raise DDKitError(f"DDKIT_PROGRESS_S must be a number of seconds, got {raw!r}") from None


def steps(start: int, total: int, desc: str, unit: str = "it", enabled: bool = True, stream: TextIO | None = None,
          clock: Callable[[], float] = time.monotonic):
    """range(start, total) with progress: `bar = steps(...)`, `for i in bar: ... bar.set_postfix(...)`, then
    `bar.close()` after the loop.

    `start` > 0 is a resumed loop: positions count from 0, rates from what this process did.
    """
    stream = stream or sys.stderr
    if not enabled or not dist.is_main():
        return _Silent(start, total)
    if _is_terminal(stream):
        return tqdm(range(start, total), desc=desc, unit=unit, initial=start, total=total, leave=False, file=stream)
    return LineProgress(start, total, desc, unit, stream, clock, interval_s())


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Silent:
    def __init__(self, start: int, total: int):
        self.range = range(start, total)

    def __iter__(self):
        return iter(self.range)

    def set_postfix(self, **_):
        pass

    def close(self):
        pass


class LineProgress(_Silent):
    """Complete lines at a bounded rate: position, rate, elapsed time and ETA, plus the last postfix."""

    def __init__(self, start: int, total: int, desc: str, unit: str, stream: TextIO, clock, every_s: float):
        super().__init__(start, total)
        self.start, self.total, self.desc, self.unit = start, total, desc, unit
        self.stream, self.clock, self.every_s = stream, clock, every_s
        self.pos, self.postfix = start, {}
        self.marks = deque(maxlen=ETA_LINES + 1)  # (time, position) at the recent lines: the ETA's window

    def __iter__(self):
        self.began = self.last = self.clock()
        self.marks.append((self.began, self.start))
        for i in self.range:
            self.current = i
            yield i
            self.pos = i + 1  # the step has finished when the caller asks for the next one
            if self.pos < self.total and self.clock() - self.last >= self.every_s:
                self.last = self.clock()
                self._line(done=False)

    def set_postfix(self, **kw):
        self.postfix = kw

    def close(self):
        if hasattr(self, "current"):  # the last step handed out has finished, also after a `break`
            self.pos = self.current + 1
            self._line(done=True)
            del self.current  # one end line, however often close() is called

    def _line(self, done: bool):
        now = self.clock()
        elapsed = now - self.began
        rate = (self.pos - self.start) / elapsed if elapsed > 0 else 0.0
        t0, p0 = self.marks[0]
        self.marks.append((now, self.pos))
        recent = (self.pos - p0) / (now - t0) if now > t0 else 0.0
        parts = [f"{self.unit} {self.pos}/{self.total} " + ("done" if done else f"({100 * self.pos // self.total}%)")]
        if rate > 0:
            parts.append(f"{_rate(rate)} {self.unit}/s")
        parts.append(f"{_duration(elapsed)} elapsed")
        if not done and recent > 0:
            parts.append(f"ETA {_duration((self.total - self.pos) / recent)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        self.stream.write(f"ddkit: {self.desc}: " + ", ".join(parts) + "\n")
        self.stream.flush()


def _rate(r: float) -> str:
    return f"{r:.3g}"


def _duration(s: float) -> str:
    """1.5 s, 42 s, 3 min 20 s, 2 h 05 min: readable at a glance in a log."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"
