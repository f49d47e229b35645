"""Progress lines of a long backtest, on stderr: which series (i of N), origins done, time elapsed.

In process: a line when a series starts, at most one every ``every`` seconds while it runs (after
an origin completes), and one when it ends (with the process' RSS, when given: memory should stay
flat from series to series). On Ray (one task per series): a line when the tasks are submitted, a
line per finished series (with the time it took in its worker, the worker's process id and peak
RSS, when given) and, while none finishes, a line every heartbeat. Each line starts with ``backtest:``.
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

    def note(self, text: str) -> None:
        """A line of its own (what the run is about to do)."""
        self._print(f"{text}, {self._elapsed()}")

    def done(
        self, index: int, name: str, origins: int, errors: int = 0, *, rss_mb: float | None = None
    ) -> None:
        """Series ``index`` finished in this process (``rss_mb``: the process' RSS after it)."""
        self.finished += 1
        took = format_elapsed(self.clock() - self._series_started)
        failed = f", {errors} error(s)" if errors else ""
        rss = f", RSS {rss_mb:.0f} MB" if rss_mb is not None else ""
        self._print(
            f"[{index}/{self.total}] {name} done: {origins} origins in {took}{failed}{rss}, {self._elapsed()}"
        )

    def done_remote(
        self,
        name: str,
        origins: int,
        errors: int = 0,
        *,
        seconds: float | None = None,
        worker: int | None = None,
        peak_rss_mb: float | None = None,
    ) -> None:
        """A series finished on Ray (they finish in any order: counted as they come); ``seconds`` it
        took in worker process ``worker``, whose peak RSS so far is ``peak_rss_mb``."""
        self.finished += 1
        took = f" in {format_elapsed(seconds)}" if seconds is not None else ""
        failed = f", {errors} error(s)" if errors else ""
        where = f", worker {worker}" if worker is not None else ""
        peak = f" peak RSS {peak_rss_mb:.0f} MB" if peak_rss_mb is not None else ""
        self._print(
            f"[{self.finished}/{self.total}] {name} done: {origins} origins{took}{failed}{where}{peak}, "
            f"{self._elapsed()}"
        )

    def waiting(self, pending: int) -> None:
        """Nothing finished for a while: how many series are still running or queued."""
        self._print(
            f"{self.finished}/{self.total} series done, {pending} running or queued, {self._elapsed()}"
        )
