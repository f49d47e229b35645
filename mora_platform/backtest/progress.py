"""Progress lines of a long backtest, on stderr: which series (i of N), origins done, time elapsed.

In process: a line when a series starts, at most one every ``every`` seconds while it runs (after
an origin completes), and one when it ends. On Ray (one task per series) a line per finished
series. Each line starts with ``backtest:``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from mora_platform.backtest.engine import Progress

PREFIX = "backtest:"


def format_elapsed(seconds: float) -> str:
    """``75.2`` -> ``1m15s``; ``3725`` -> ``1h02m05s``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressReporter:
    """Prints the progress of a replay of ``total`` series to ``stream`` (default: stderr)."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream
        self.every = every
        self.clock = clock
        self.started = clock()
        self.finished = 0
        self._last_line = self.started
        self._series_started = self.started

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stderr
        print(f"{PREFIX} {text}", file=stream, flush=True)
        self._last_line = self.clock()

    def _elapsed(self) -> str:
        return f"elapsed {format_elapsed(self.clock() - self.started)}"

    def start(self, index: int, name: str, origins: int) -> Progress:
        """Series ``index`` (1-based) starts; returns the callback for ``replay_series``."""
        self._series_started = self.clock()
        self._print(f"[{index}/{self.total}] {name}: replaying {origins} origins, {self._elapsed()}")

        def progress(done: int, total: int) -> None:
            if done < total and self.clock() - self._last_line >= self.every:
                self._print(f"[{index}/{self.total}] {name}: {done}/{total} origins, {self._elapsed()}")

        return progress

    def done(self, index: int, name: str, origins: int, errors: int = 0) -> None:
        """Series ``index`` finished in this process."""
        self.finished += 1
        took = format_elapsed(self.clock() - self._series_started)
        failed = f", {errors} error(s)" if errors else ""
        self._print(
            f"[{index}/{self.total}] {name} done: {origins} origins in {took}{failed}, {self._elapsed()}"
        )

    def done_remote(self, name: str, origins: int, errors: int = 0) -> None:
        """A series finished on Ray (they finish in any order: counted as they come)."""
        self.finished += 1
        failed = f", {errors} error(s)" if errors else ""
        self._print(
            f"[{self.finished}/{self.total}] {name} done: {origins} origins{failed}, {self._elapsed()}"
        )
