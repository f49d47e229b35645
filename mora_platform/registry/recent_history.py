"""Each service's recent rows, fetched by the server, so a plain question gets the measured answer.

The backtest measured the *auto* head-room, which is calibrated on the rows just before the answer.
A client asking ``{"service": "x"}`` sends no rows, so the Serve deployment and ``mora recommend``
fetch them: the newest ``rows`` rows of the dataset the published version was trained on (its
manifest records it), from the object store. Each service's window is cached for ``max_age_s`` so a
busy endpoint reads S3 once per service per interval, not once per request; a failed read is cached
for the same time (as a failure) so an S3 outage does not turn every request into a slow one.

This module does I/O (object store); the answering itself stays in ``training.bundle``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from mora_platform.recommend.types import HistoryUsed
    from mora_platform.recommend.workload import WorkloadState
    from mora_platform.storage.object_store import ObjectStore

logger = logging.getLogger(__name__)

#: As many rows as a client may send (the endpoint's limit): enough for the recent head-room's
#: 1,440 calibration rows plus the hour the recent peak looks back on, at 15 s spacing or coarser.
DEFAULT_HISTORY_ROWS = 2_000
#: How long a fetched window answers before it is read again.
DEFAULT_MAX_AGE_S = 60.0


@dataclass(frozen=True)
class HistoryWindow:
    """A service's newest rows (or why there are none), and when they were read."""

    service: str
    dataset: str | None
    frame: pd.DataFrame | None
    fetched_at: float  # the cache clock's reading when read
    error: str | None = None

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)

    def newest(self) -> pd.Timestamp | None:
        """Timestamp of the newest row, if any."""
        if self.frame is None or self.frame.empty or "timestamp" not in self.frame.columns:
            return None
        import pandas as pd

        value = pd.Timestamp(self.frame["timestamp"].max())
        return value if value.tzinfo is not None else value.tz_localize("UTC")


class RecentHistory:
    """Newest rows per (dataset, service) from the object store, cached for ``max_age_s``."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        rows: int = DEFAULT_HISTORY_ROWS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        self.store = store
        self.rows = rows
        self.max_age_s = max_age_s
        self._clock = clock
        self._cache: dict[tuple[str, str], HistoryWindow] = {}
        self._workloads: dict[tuple[str, str], tuple[float, WorkloadState | None]] = {}
        self._lock = threading.Lock()
        self.reads = 0  # object-store reads done (for tests and benchmarks)

    def get(self, service: str, dataset: str | None) -> HistoryWindow:
        """The newest rows of ``service`` in ``dataset`` (cached); ``frame`` is None with ``error`` set
        when there is no dataset to read or the read failed."""
        now = self._clock()
        if not dataset:
            return HistoryWindow(
                service, None, None, now, error="the model's manifest names no dataset to read history from"
            )
        key = (dataset, service)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached.fetched_at <= self.max_age_s:
                return cached
        window = self._read(service, dataset, now)
        with self._lock:
            self._cache[key] = window
        return window

    def workload(self, service: str, dataset: str | None) -> WorkloadState | None:
        """What ``mora collect`` recorded of the service's Deployment in ``dataset`` (cached like the rows):
        its containers, current requests and limits, OOM kills and HPA; None when nothing was recorded or
        it cannot be read (the answer then assumes one container and says so; a read error is logged)."""
        if not dataset:
            return None
        now = self._clock()
        key = (dataset, service)
        with self._lock:
            cached = self._workloads.get(key)
            if cached is not None and now - cached[0] <= self.max_age_s:
                return cached[1]
        from mora_platform.storage.errors import StorageError
        from mora_platform.storage.workloads import read_workload

        self.reads += 1
        try:
            state = read_workload(self.store, dataset, service)
        except (StorageError, ValueError, OSError) as exc:
            logger.warning("workload state of %s in dataset %s unreadable: %s", service, dataset, exc)
            state = None
        with self._lock:
            self._workloads[key] = (now, state)
        return state

    def invalidate(self, service: str | None = None) -> None:
        """Forget cached windows (of one service, or all)."""
        with self._lock:
            for key in [k for k in self._cache if service is None or k[1] == service]:
                del self._cache[key]
            for key in [k for k in self._workloads if service is None or k[1] == service]:
                del self._workloads[key]

    def _read(self, service: str, dataset: str, now: float) -> HistoryWindow:
        from mora_platform.storage.datasets import DatasetStore
        from mora_platform.storage.errors import StorageError

        self.reads += 1
        try:
            frame = DatasetStore(self.store).read(dataset, service)
        except (StorageError, ValueError, OSError) as exc:
            return HistoryWindow(service, dataset, None, now, error=f"{type(exc).__name__}: {exc}")
        if frame.empty:
            return HistoryWindow(service, dataset, None, now, error=f"dataset {dataset!r} has no rows")
        return HistoryWindow(service, dataset, frame.tail(self.rows).reset_index(drop=True), now)

    def peek(self, service: str, dataset: str | None) -> HistoryWindow | None:
        """The cached window if it is still fresh, without reading anything (None otherwise)."""
        if not dataset:
            return None
        with self._lock:
            cached = self._cache.get((dataset, service))
        if cached is not None and self._clock() - cached.fetched_at <= self.max_age_s:
            return cached
        return None


WHAT_IF_NOTE = (
    "what-if context without history: answered from the model and the training-time head-room "
    "(recent rows would calibrate on usage, not on the context asked)"
)


def pick_history(
    sent: pd.DataFrame | None, window: HistoryWindow | None, *, what_if: bool = False
) -> tuple[pd.DataFrame | None, str, list[str]]:
    """(history to answer on, its source for ``history_used``, notes for the answer's reasons).

    The rows a request sent win; else the server's recent ``window`` of the model's dataset (None when
    none was read: recent rows are off, or the question is a what-if, ``what_if`` saying which); else
    the model's stored tail (``None``), with a note saying why when recent rows were wanted.
    """
    if sent is not None:
        return sent, "request", []
    if window is not None and window.frame is not None:
        return window.frame, f"dataset:{window.dataset}", []
    if window is not None:
        note = f"no recent rows ({window.error}): training-time head-room, answered from the stored tail"
        return None, "model", [note]
    return None, "model", [WHAT_IF_NOTE] if what_if else []


def history_used(source: str, frame: pd.DataFrame | None, now: pd.Timestamp | None = None) -> HistoryUsed:
    """What an answer says about the rows it saw: their source, count, newest timestamp and age."""
    import pandas as pd

    from mora_platform.recommend.types import HistoryUsed

    rows = 0 if frame is None else len(frame)
    newest: pd.Timestamp | None = None
    if frame is not None and rows and "timestamp" in frame.columns:
        newest = pd.Timestamp(frame["timestamp"].max())
        newest = newest if newest.tzinfo is not None else newest.tz_localize("UTC")
    age = None
    if newest is not None:
        now = now if now is not None else pd.Timestamp.now(tz="UTC")
        age = round(max((now - newest).total_seconds(), 0.0), 1)
    return HistoryUsed(
        source=source, rows=rows, newest=newest.isoformat() if newest is not None else None, age_seconds=age
    )
