"""Each service's recent rows, fetched by the server, so a plain question gets the measured answer.

The backtest measured the *auto* head-room, which is calibrated on the rows just before the answer.
A client asking ``{"service": "x"}`` sends no rows, so the Serve deployment and ``mora recommend``
fetch them: the newest ``rows`` rows of the dataset the published version was trained on (its
manifest records it), from the object store. Each service's window is cached for ``max_age_s`` so a
busy endpoint reads S3 once per service per interval, not once per request; a failed read is cached
for the same time (as a failure) so an S3 outage does not turn every request into a slow one.

With a ``live`` source (``collect.live.LiveHistory``: a Prometheus is configured, see
``history_from_settings``) the rows are read live from Prometheus instead, in the namespace and at the
step the dataset was collected with (its collect checkpoint records both; ``namespace`` overrides),
and the answer says ``prometheus:<namespace>``. When Prometheus fails or has no rows, the dataset's
newest rows answer and a note says why; that outcome is cached like any other window.

This module does I/O (object store, Prometheus); the answering itself stays in ``training.bundle``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from mora_platform.collect.live import LiveHistory
    from mora_platform.collect.settings import PrometheusSettings
    from mora_platform.recommend.types import HistoryUsed
    from mora_platform.recommend.workload import WorkloadState
    from mora_platform.settings import MoraSettings
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
    source: str | None = None  # what answers say the rows came from (default: dataset:<name>)
    notes: tuple[str, ...] = ()  # e.g. why the live rows were not used

    @property
    def label(self) -> str:
        """``history.source`` of an answer on these rows: ``prometheus:<ns>`` or ``dataset:<name>``."""
        return self.source or f"dataset:{self.dataset}"

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
    """Newest rows per (dataset, service) from the object store (or live from Prometheus, falling back
    to the object store), cached for ``max_age_s``."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        rows: int = DEFAULT_HISTORY_ROWS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
        live: LiveHistory | None = None,
        namespace: str | None = None,
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
        self.live = live
        self.namespace = namespace  # the Prometheus namespace, else the dataset's collect checkpoint's
        self.live_reads = 0  # Prometheus windows read
        self._places: dict[tuple[str, str], tuple[str, int | None]] = {}  # (dataset, service) -> (ns, step)

    def get(self, service: str, dataset: str | None, *, step_seconds: int | None = None) -> HistoryWindow:
        """The newest rows of ``service`` (cached): live from Prometheus when a ``live`` source is set,
        else (or when that fails) from ``dataset``; ``frame`` is None with ``error`` set when there is
        nothing to read or every read failed. ``step_seconds`` is the model's spacing, used for live
        rows when the dataset's checkpoint does not record its step."""
        now = self._clock()
        if not dataset and (self.live is None or not self.namespace):
            return HistoryWindow(
                service, None, None, now, error="the model's manifest names no dataset to read history from"
            )
        key = (dataset or "", service)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and now - cached.fetched_at <= self.max_age_s:
                return cached
        if self.live is not None:
            window = self._read_live(service, dataset, now, step_seconds)
        else:
            assert dataset
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
            for key in [k for k in self._places if service is None or k[1] == service]:
                del self._places[key]

    def _read_live(
        self, service: str, dataset: str | None, now: float, step_seconds: int | None
    ) -> HistoryWindow:
        """Live rows, else the dataset's with a note saying why the live ones are missing."""
        from mora_platform.collect.client import PrometheusError

        assert self.live is not None
        place = self._place(service, dataset)
        if isinstance(place, str):
            problem = place
        else:
            namespace, recorded_step = place
            step = recorded_step or step_seconds or self.live.settings.step_seconds
            self.live_reads += 1
            try:
                frame = self.live.read(service, namespace, rows=self.rows, step_seconds=step)
            except (PrometheusError, ValueError, OSError) as exc:
                problem = f"Prometheus failed: {exc}"
                logger.warning("live rows of %s from %s: %s", service, self.live.display_url, problem)
            except Exception as exc:  # a bug here must not cost the answer: the dataset still has rows
                problem = f"live rows failed: {type(exc).__name__}: {exc}"
                logger.exception("live rows of %s from %s failed", service, self.live.display_url)
            else:
                if not frame.empty:
                    return HistoryWindow(
                        service, dataset, frame.reset_index(drop=True), now, source=f"prometheus:{namespace}"
                    )
                problem = f"Prometheus has no rows of {service} in namespace {namespace!r} in the last {self.rows} steps"
        if not dataset:
            return HistoryWindow(service, None, None, now, error=f"no live rows ({problem}) and no dataset")
        fallback = self._read(service, dataset, now)
        note = f"live rows unavailable ({problem}): answered on the newest rows of dataset {dataset!r}"
        return HistoryWindow(
            service,
            dataset,
            fallback.frame,
            now,
            error=f"{problem}; dataset: {fallback.error}" if fallback.error else None,
            notes=(note,) if fallback.frame is not None else (),
        )

    def _place(self, service: str, dataset: str | None) -> tuple[str, int | None] | str:
        """(namespace, step the dataset was collected at, if recorded) of the service's live rows, or why
        there is none. Read once from the dataset's collect checkpoint (then its workload state)."""
        if self.namespace and not dataset:
            return self.namespace, None
        assert dataset
        key = (dataset, service)
        with self._lock:
            known = self._places.get(key)
        if known is not None:
            return known
        from mora_platform.collect.checkpoint import CheckpointStore
        from mora_platform.storage.errors import StorageError

        namespace, step = self.namespace, None
        self.reads += 1
        try:
            checkpoint = CheckpointStore(self.store).load(dataset, service)
        except (StorageError, ValueError, OSError) as exc:
            logger.warning("collect checkpoint of %s in dataset %s unreadable: %s", service, dataset, exc)
            checkpoint = None
        if checkpoint is not None:
            namespace, step = namespace or checkpoint.namespace, checkpoint.step_seconds
        if not namespace:
            state = self.workload(service, dataset)
            namespace = state.namespace if state is not None else None
        if not namespace:
            return (
                f"no namespace known for {service}: dataset {dataset!r} was not collected from "
                "Prometheus (set MORA_SERVE_HISTORY_NAMESPACE)"
            )
        with self._lock:
            self._places[key] = (namespace, step)
        return namespace, step

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
        if not dataset and (self.live is None or not self.namespace):
            return None
        with self._lock:
            cached = self._cache.get((dataset or "", service))
        if cached is not None and self._clock() - cached.fetched_at <= self.max_age_s:
            return cached
        return None


def prometheus_for_history(
    settings: MoraSettings, env_files: Sequence[str | Path] | None = None
) -> PrometheusSettings | None:
    """The Prometheus to read recent rows from live, per ``settings.serve_history_source``: None for
    ``dataset``, or for ``auto`` without a Prometheus URL (``MORA_PROMETHEUS_URL``); the connection
    (token, TLS, step, queries) from the environment and ``env_files`` (default: the usual env files).
    ``ValueError`` when ``prometheus`` is asked for and no URL is configured, or the settings are invalid.
    """
    from mora_platform.collect.settings import PrometheusSettings

    if settings.serve_history_rows == 0 or settings.serve_history_source == "dataset":
        return None
    values: dict[str, object] = {} if env_files is None else {"_env_file": tuple(env_files) or None}
    if settings.prometheus_url:
        values["url"] = settings.prometheus_url
    prometheus = PrometheusSettings(**values)
    if not prometheus.url:
        if settings.serve_history_source == "prometheus":
            raise ValueError("MORA_SERVE_HISTORY_SOURCE=prometheus needs MORA_PROMETHEUS_URL")
        return None
    return prometheus


def history_from_settings(
    settings: MoraSettings, store: ObjectStore, prometheus: PrometheusSettings | None = None
) -> RecentHistory | None:
    """The recent-rows reader ``settings`` ask for (None with ``serve_history_rows`` 0): live from
    ``prometheus`` when given (see ``prometheus_for_history``), with the dataset as fallback, else
    the dataset alone."""
    if settings.serve_history_rows == 0:
        return None
    live = None
    if prometheus is not None:
        from mora_platform.collect.live import LiveHistory

        live = LiveHistory(prometheus, timeout_s=settings.serve_history_timeout_s)
    return RecentHistory(
        store,
        rows=settings.serve_history_rows,
        max_age_s=settings.serve_history_max_age_s,
        live=live,
        namespace=settings.serve_history_namespace,
    )


WHAT_IF_NOTE = (
    "what-if context without history: answered from the model and the training-time head-room "
    "(recent rows would calibrate on usage, not on the context asked)"
)


def pick_history(
    sent: pd.DataFrame | None, window: HistoryWindow | None, *, what_if: bool = False
) -> tuple[pd.DataFrame | None, str, list[str]]:
    """(history to answer on, its source for ``history_used``, notes for the answer's reasons).

    The rows a request sent win; else the server's recent ``window`` (live or the model's dataset; None when
    none was read: recent rows are off, or the question is a what-if, ``what_if`` saying which); else
    the model's stored tail (``None``), with a note saying why when recent rows were wanted.
    """
    if sent is not None:
        return sent, "request", []
    if window is not None and window.frame is not None:
        return window.frame, window.label, list(window.notes)
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
