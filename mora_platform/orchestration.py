"""One orchestrator that maps a per-service function over a fleet, with failures isolated.

The per-service function returns a :class:`ServiceOutcome`; the orchestrator turns any exception
it raises into a failed outcome, so one bad service never stops the others. Where the work runs is
a :class:`FleetBackend`: :class:`LocalLoopBackend` here (a plain loop, for tests and laptops), the Ray
backend in ``jobs/ray_backend.py``. This module imports no Ray, S3 or TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

ServiceStatus = Literal["published", "trained", "failed"]

#: Exit codes of a fleet run (the Ray Job fails on any non-zero code).
EXIT_OK = 0
EXIT_SERVICES_FAILED = 1  # a service failed (without --allow-failures), or every service failed
EXIT_NOT_STARTED = 2  # no services, unknown dataset, storage unreachable at the start
EXIT_SUMMARY_NOT_STORED = 3  # the run's result could not be recorded (runs/RUN_ID/summary.json)
EXIT_INTERRUPTED = 4  # the driver stopped early: its supervisor (the job's shell wrapper) went away
ServiceFunction = Callable[[str], "ServiceOutcome"]
OutcomeCallback = Callable[["ServiceOutcome"], None]


class ServiceOutcome(BaseModel):
    """What happened to one service in a fleet run (one row of the run summary)."""

    service: str
    status: ServiceStatus
    version: str | None = None
    seconds: float = 0.0
    peak_rss_mb: float | None = None
    cpu_seconds: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    attempts: int = 1
    tuned_config: bool = False
    artifact_bytes: int | None = None
    node_id: str | None = None  # the Ray node that ran the service (None in a local loop)
    worker_pid: int | None = None  # the process that ran it (a Ray worker is reused across services)
    worker_peak_rss_mb: float | None = None  # that process's lifetime peak RSS when it finished

    @property
    def ok(self) -> bool:
        """True when the service trained (and published, when asked to)."""
        return self.status != "failed"


def failed_outcome(service: str, error: BaseException, seconds: float = 0.0) -> ServiceOutcome:
    """A failed outcome carrying the error's type and message (no traceback, no secrets)."""
    message = str(error).strip() or repr(error)
    return ServiceOutcome(
        service=service,
        status="failed",
        seconds=round(seconds, 3),
        error=f"{type(error).__name__}: {message}",
        error_type=type(error).__name__,
    )


def run_isolated(fn: ServiceFunction, service: str) -> ServiceOutcome:
    """Call ``fn(service)``, converting any exception into a failed outcome."""
    started = time.perf_counter()
    try:
        return fn(service)
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        return failed_outcome(service, error, time.perf_counter() - started)


class RunInterrupted(Exception):
    """The run must stop now (raised from a backend's wait loop, e.g. by its ``on_wait`` callback)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: Returns why the run must stop (its supervisor is gone, ...), or None to go on.
StopCheck = Callable[[], "str | None"]


class ParentWatch:
    """Notices that the process which started this one (the Ray job's ``/bin/sh`` wrapper, a
    supervisor) has exited: a stopped job's driver must not go on publishing.

    When the parent dies the process is re-parented, so ``os.getppid()`` changes; ``check`` is a
    cheap syscall, polled by the orchestrator after every outcome and by the wait loop between them.
    """

    def __init__(self, getppid: Callable[[], int] = os.getppid) -> None:
        self._getppid = getppid
        self.parent = getppid()
        self.reason: str | None = None

    def check(self) -> str | None:
        """Why the run must stop (the parent exited), None while the parent lives."""
        if self.reason is None:
            now = self._getppid()
            if now != self.parent:
                self.reason = (
                    f"the driver's parent process {self.parent} (the job's shell wrapper or supervisor) "
                    f"exited; the driver was re-parented to {now}"
                )
        return self.reason

    def raise_if_lost(self, *_: object) -> None:
        """``RunInterrupted`` when the parent is gone (usable as a wait-loop callback)."""
        reason = self.check()
        if reason is not None:
            raise RunInterrupted(reason)


class FleetBackend(Protocol):
    """Runs a per-service function over services, yielding outcomes as they complete."""

    def map_services(self, fn: ServiceFunction, services: Sequence[str]) -> Iterator[ServiceOutcome]: ...


class LocalLoopBackend:
    """Runs services one after another in this process."""

    def map_services(self, fn: ServiceFunction, services: Sequence[str]) -> Iterator[ServiceOutcome]:
        for service in services:
            yield run_isolated(fn, service)


class ProgressLine:
    """Formats one progress line per finished service: done/total, failures, rate, ETA."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._clock = clock
        self._started = clock()

    def update(self, outcome: ServiceOutcome) -> str:
        """Account for ``outcome`` and return the line to print."""
        self.done += 1
        if not outcome.ok:
            self.failed += 1
        elapsed = self._clock() - self._started
        remaining = self.total - self.done
        eta = elapsed / self.done * remaining if self.done else 0.0
        width = 20
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        detail = f"{outcome.status} in {outcome.seconds:.1f}s"
        if outcome.error:
            detail = f"failed: {_shorten(outcome.error, 80)}"
        return (
            f"[{bar}] {self.done}/{self.total} done, {self.failed} failed | "
            f"{outcome.service} {detail} | elapsed {elapsed:.0f}s, eta {eta:.0f}s"
        )

    def waiting(self, running: Iterable[str]) -> str:
        """A heartbeat line while nothing finished for a while."""
        names = sorted(running)
        shown = ", ".join(names[:5]) + (f" (+{len(names) - 5})" if len(names) > 5 else "")
        elapsed = self._clock() - self._started
        return f"... {self.done}/{self.total} done after {elapsed:.0f}s; running: {shown}"


class RunSummary(BaseModel):
    """The run summary written to ``runs/{run_id}/summary.json``."""

    run_id: str
    kind: str = "retrain"
    dataset: str
    started_at: str
    finished_at: str | None = None
    wall_seconds: float | None = None
    backend: str = "local"
    services: list[ServiceOutcome] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    interrupted: str | None = None  # why the run stopped before every service finished

    @property
    def succeeded(self) -> list[str]:
        return [o.service for o in self.services if o.ok]

    @property
    def failed(self) -> list[str]:
        return [o.service for o in self.services if not o.ok]

    def exit_code(self, allow_failures: bool = False) -> int:
        """0 when every service succeeded; 1 when any failed (``allow_failures``: only when all did);
        ``EXIT_INTERRUPTED`` when the run stopped early, whatever the finished services did."""
        if self.interrupted is not None:
            return EXIT_INTERRUPTED
        if not self.services or not self.succeeded:
            return EXIT_SERVICES_FAILED
        if self.failed and not allow_failures:
            return EXIT_SERVICES_FAILED
        return EXIT_OK

    def to_json(self) -> bytes:
        """The summary as indented UTF-8 JSON."""
        payload = self.model_dump(mode="json")
        payload["counts"] = {
            "total": len(self.services),
            "succeeded": len(self.succeeded),
            "failed": len(self.failed),
        }
        return json.dumps(payload, indent=2, sort_keys=False).encode("utf-8")

    def table(self) -> str:
        """A plain-text table (fits a log viewer) of every service's outcome."""
        header = ("service", "status", "version", "seconds", "peak_rss_mb", "error")
        rows = [header]
        for o in sorted(self.services, key=lambda item: item.service):
            rows.append(
                (
                    o.service,
                    o.status,
                    o.version or "-",
                    f"{o.seconds:.1f}",
                    f"{o.peak_rss_mb:.0f}" if o.peak_rss_mb is not None else "-",
                    _shorten(o.error, 90) if o.error else "",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = []
        for index, row in enumerate(rows):
            cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths) + "  -----")
        footer = (
            f"{len(self.succeeded)} succeeded, {len(self.failed)} failed"
            + (f", wall {self.wall_seconds:.1f}s" if self.wall_seconds is not None else "")
            + f" (run {self.run_id})"
            + (f"; INTERRUPTED: {self.interrupted}" if self.interrupted else "")
        )
        return "\n".join([*lines, footer])


class FleetOrchestrator:
    """Maps a per-service function over services through a backend and collects a summary."""

    def __init__(self, backend: FleetBackend | None = None) -> None:
        self.backend: FleetBackend = backend or LocalLoopBackend()

    def run(
        self,
        fn: ServiceFunction,
        services: Sequence[str],
        *,
        summary: RunSummary,
        on_outcome: Sequence[OutcomeCallback] = (),
        stop: StopCheck | None = None,
    ) -> RunSummary:
        """Run ``fn`` for every service; callbacks see each outcome as it completes.

        ``stop`` is asked before the first service and after every outcome (a backend's wait loop
        may also raise ``RunInterrupted``): when it gives a reason, no further service is started
        or collected, the summary records ``interrupted`` and every unfinished service as failed.
        """
        if len(set(services)) != len(services):
            raise ValueError(f"duplicate service names in {list(services)}")
        started = time.monotonic()
        reason = stop() if stop is not None else None
        if reason is None:
            outcomes = self.backend.map_services(fn, services)
            try:
                for outcome in outcomes:
                    summary.services.append(outcome)
                    for callback in on_outcome:
                        # A broken callback (a metrics exporter, a log sink) must not stop the fleet.
                        with contextlib.suppress(Exception):
                            callback(outcome)
                    reason = stop() if stop is not None else None
                    if reason is not None:
                        break
            except RunInterrupted as interrupted:
                reason = interrupted.reason
            finally:
                close = getattr(outcomes, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()  # a generator backend starts nothing more
        if reason is not None:
            summary.interrupted = reason
            finished = {outcome.service for outcome in summary.services}
            for service in services:
                if service not in finished:
                    summary.services.append(
                        ServiceOutcome(
                            service=service,
                            status="failed",
                            error=f"not finished: the run was interrupted ({reason}); "
                            "a task already running may have published a version",
                            error_type="RunInterrupted",
                        )
                    )
        summary.wall_seconds = round(time.monotonic() - started, 3)
        summary.finished_at = utc_now()
        return summary


def summary_key(run_id: str) -> str:
    """Where a run's summary lives in the bucket: ``runs/{run_id}/summary.json``."""
    return f"runs/{run_id}/summary.json"


class RerunPlan(BaseModel):
    """What ``--rerun-failed RUN_ID`` retrains: ``services`` is 'all', a comma-separated list or ''."""

    dataset: str
    services: str
    message: str


def plan_rerun(
    run_id: str,
    previous: RunSummary | None,
    *,
    dataset: str | None,
    services: str = "all",
    summary_uri: str = "",
) -> RerunPlan:
    """The services to retrain again after run ``run_id`` (``previous``: its summary, None when missing).

    With a summary: only the services that failed in it, on its dataset ('' when none failed).
    Without one (the run crashed, or could not store it): every service of that run, which the
    caller knows as ``dataset`` / ``services`` (from the Jobs API or the command line).
    Raises ``ValueError`` with what to do when the request cannot be met.
    """
    where = summary_uri or summary_key(run_id)
    if previous is not None:
        if dataset is not None and dataset != previous.dataset:
            raise ValueError(
                f"run {run_id} retrained dataset {previous.dataset!r}, not {dataset!r} (leave --dataset out)"
            )
        if services.strip().lower() != "all":
            raise ValueError(
                f"--services and --rerun-failed {run_id}: the services come from the run's summary ({where})"
            )
        failed = sorted(previous.failed)
        if not failed:
            return RerunPlan(
                dataset=previous.dataset,
                services="",
                message=f"run {run_id}: all {len(previous.services)} service(s) succeeded; nothing to re-run",
            )
        return RerunPlan(
            dataset=previous.dataset,
            services=",".join(failed),
            message=f"re-running the {len(failed)} service(s) that failed in run {run_id}: {', '.join(failed)}",
        )
    if dataset is None:
        raise ValueError(
            f"no run summary for run {run_id} at {where}, and the run's dataset is not known: "
            "pass --dataset (and --services) to retrain that run's services again"
        )
    which = "all services" if services.strip().lower() == "all" else f"services {services}"
    return RerunPlan(
        dataset=dataset,
        services=services,
        message=(
            f"no run summary for run {run_id} at {where} (the run did not finish, or could not store it): "
            f"re-running every service of that run ({which} of dataset {dataset!r})"
        ),
    )


def new_run_id(prefix: str = "retrain") -> str:
    """A sortable, unique run id such as ``retrain-20261128T010203Z-1a2b3c4d5e6f``.

    48 random bits after the second: runs started in the same second never share a summary path.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{secrets.token_hex(6)}"


def utc_now() -> str:
    """Current UTC time as ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def parse_services(spec: str, available: Sequence[str]) -> list[str]:
    """Resolve ``all`` or a comma-separated list against the dataset's services."""
    if spec.strip().lower() == "all":
        return sorted(available)
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    if not wanted:
        raise ValueError("--services is empty: give 'all' or a comma-separated list of service names")
    missing = [name for name in wanted if name not in set(available)]
    if missing:
        raise ValueError(
            f"services not in the dataset: {', '.join(missing)} (available: {', '.join(sorted(available))})"
        )
    return list(dict.fromkeys(wanted))


class PeakRssSampler:
    """Samples this process's RSS in a background thread; the peak seen while active, in MiB.

    ``ru_maxrss`` alone is the lifetime peak of a (possibly reused) worker process, so the
    sampler gives the peak during one service's work; both are available.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            with contextlib.suppress(Exception):
                self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakRssSampler:
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._sample_once()

    def _sample_once(self) -> None:
        import psutil

        with contextlib.suppress(Exception):
            self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)


def cpu_seconds_used() -> float:
    """User + system CPU seconds of this process and its waited-for children (e.g. Stan)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def lifetime_peak_rss_mb() -> float:
    """This process's lifetime peak RSS from ``getrusage`` (Linux reports KiB), in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _shorten(text: str | None, limit: int) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
