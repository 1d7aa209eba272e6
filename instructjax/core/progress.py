"""Progress a person can read: a bar on a terminal, a plain line every few seconds off one.

tqdm redraws its bar with carriage returns and no newline: in a log file (a launcher's, a CI job's) a run of
thousands of steps is one line of a megabyte. Off a terminal (stderr is not a tty) `bar()` gives `Lines`
instead, which prints one line at most every `INSTRUCTJAX_PROGRESS_SECONDS` (default 30) and one at the end:
what is done of how much, the caller's figures (loss, tokens/s), the rate and the time left. `quiet_libraries()`
turns the libraries' own tqdm bars off there (transformers, lm-eval, datasets; TQDM_DISABLE=0 keeps them); on a
terminal everything is as it was.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def interactive(stream: TextIO | None = None) -> bool:
    """Whether progress goes to a terminal."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def quiet_libraries() -> None:
    """Off a terminal, the libraries' own tqdm bars are off, also where a library asks for one explicitly
    (lm-eval passes `disable=False`); TQDM_DISABLE=0 keeps them."""
    if interactive() or os.environ.setdefault("TQDM_DISABLE", "1").lower() in ("0", "false"):
        return
    from tqdm import std

    if getattr(std.tqdm.__init__, "quiet", False):
        return
    init = std.tqdm.__init__

    def quiet(self, *args, **kwargs):
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    quiet.quiet = True
    std.tqdm.__init__ = quiet


def every_seconds() -> float:
    return float(os.environ.get("INSTRUCTJAX_PROGRESS_SECONDS", "30"))


class Lines:
    """tqdm's `update`, `set_postfix`, `close` as plain lines: `desc: n/total unit (p%), k=v ..., rate, ETA`."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, stream: TextIO | None = None, seconds: float | None = None):
        self.total, self.desc, self.unit, self.n, self.disable = total, desc, unit, initial, disable
        self.stream, self.seconds = stream or sys.stderr, every_seconds() if seconds is None else seconds
        self.postfix: dict[str, Any] = {}
        self._start_n, self._start = initial, time.monotonic()
        self._printed = self._start  # the first line after `seconds`, not at once
        self._printed_n = initial
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._printed >= self.seconds:
            self._print()

    def refresh(self) -> None:
        self.update(0)

    def set_postfix(self, values: dict[str, Any] | None = None, **more: Any) -> None:
        self.postfix = {**(values or {}), **more}

    def close(self) -> None:
        """The last line, unless it was just printed."""
        if not self._closed and self.n != self._printed_n:
            self._print()
        self._closed = True

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        done = f"{self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        parts = [done, *(f"{k} {v}" for k, v in self.postfix.items())]
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.2f} {self.unit}/s" if rate < 100 else f"{rate:,.0f} {self.unit}/s")
            if self.total and self.n < self.total:
                parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        parts.append(f"elapsed {_clock(elapsed)}")
        return f"{self.desc}: " + ", ".join(parts)

    def _print(self) -> None:
        self._printed, self._printed_n = time.monotonic(), self.n
        if not self.disable:
            print(self.line(), file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def bar(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0, disable: bool = False):
    """A tqdm bar on a terminal, `Lines` off one (the module doc)."""
    if interactive():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, mininterval=1.0)
    return Lines(total, desc, unit, initial, disable)
