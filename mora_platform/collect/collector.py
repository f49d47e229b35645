"""Collect services' metrics chunk by chunk into a dataset, resumably, one failure at a time.

For each service and each chunk window not yet covered by its checkpoint: run the table's
queries (in a bounded thread pool), build the unified rows, write them as the chunk's own
dataset part (idempotent), then record the chunk. A failing service is reported and the
next one proceeds; an unreachable server stops the run with one clear message.

With a ``workloads`` sink, each service whose rows were collected also gets its ``WorkloadState``
at the end of the window (containers, requests/limits, OOM kills, HPA; see ``collect.workload``),
handed to the sink (``storage.workloads.write_workload`` in ``mora collect``). Facts it lacks are
listed in the state, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import pandas as pd

from mora_platform.collect.checkpoint import Checkpoint, CheckpointMismatchError, CheckpointStore, ChunkRecord
from mora_platform.collect.chunks import ChunkWindow, format_iso, plan_chunks
from mora_platform.collect.client import (
    PrometheusClient,
    PrometheusError,
    PrometheusQueryError,
    PrometheusUnavailableError,
    Series,
)
from mora_platform.collect.frame import Derive, build_chunk_frame, default_derive
from mora_platform.collect.queries import DISCOVERY_LABEL, checkpoint_queries, discovery_selector
from mora_platform.collect.settings import PrometheusSettings
from mora_platform.collect.workload import collect_workload, short_missing
from mora_platform.recommend.workload import WorkloadState

#: Where a collected ``WorkloadState`` goes: called with (dataset, state).
WorkloadSink = Callable[[str, WorkloadState], object]


class DatasetWriter(Protocol):
    """The dataset call the collector needs (``DatasetStore`` satisfies it)."""

    def write(self, name: str, frame: pd.DataFrame, *, part: str = "part-00000") -> object: ...


class CollectionInterrupted(Exception):
    """Raised inside the run when ``max_chunks`` is reached (a planned stop)."""


@dataclass
class ServiceResult:
    """How collecting one service went; ``message`` says why when something is missing."""

    service: str
    status: str = "pending"  # ok | partial | no data | failed | interrupted | not attempted
    rows: int = 0
    new_rows: int = 0
    chunks_written: int = 0
    chunks_skipped: int = 0
    missing_points: int = 0
    gaps: int = 0
    empty_metrics: list[str] = field(default_factory=list)
    message: str = ""
    workload: WorkloadState | None = None  # with a workloads sink, once the rows are collected

    @property
    def containers(self) -> list[str]:
        """The containers found on the Deployment (empty without a workload)."""
        return [c.name for c in self.workload.containers] if self.workload else []

    @property
    def workload_missing(self) -> list[str]:
        """What the workload lacks, one readable entry per fact."""
        return list(self.workload.missing) if self.workload else []

    @property
    def workload_missing_short(self) -> list[str]:
        """The facts the workload lacks, without the reasons."""
        return list(dict.fromkeys(short_missing(self.workload_missing)))


@dataclass
class CollectionReport:
    """The outcome of one `mora collect` run."""

    dataset: str
    namespace: str
    start: datetime
    end: datetime
    services: list[ServiceResult]
    interrupted: bool = False

    @property
    def failed(self) -> list[ServiceResult]:
        """Services that could not be (fully) collected because of an error."""
        return [s for s in self.services if s.status in ("failed", "not attempted")]


@dataclass(frozen=True)
class ChunkEvent:
    """Progress: one chunk of one service was handled (written, skipped or failed)."""

    service: str
    part: str
    outcome: str  # written | skipped | failed
    rows: int


class Collector:
    """Collects a namespace's services from one Prometheus into one dataset."""

    def __init__(
        self,
        client: PrometheusClient,
        datasets: DatasetWriter,
        checkpoints: CheckpointStore,
        settings: PrometheusSettings,
        *,
        derive: Derive = default_derive,
        progress: Callable[[ChunkEvent], None] | None = None,
        max_chunks: int | None = None,
        workloads: WorkloadSink | None = None,
    ) -> None:
        self._client = client
        self._datasets = datasets
        self._checkpoints = checkpoints
        self._settings = settings
        self._table = settings.query_table()
        self._derive = derive
        self._progress = progress or (lambda event: None)
        self._max_chunks = max_chunks
        self._workloads = workloads
        self._written = 0

    def plan(self, start: datetime, end: datetime) -> list[ChunkWindow]:
        """The chunk windows of ``[start, end]`` for the configured step and chunk size."""
        return plan_chunks(start, end, self._settings.step_seconds, self._settings.points_per_chunk)

    def discover_services(self, namespace: str, start: datetime, end: datetime) -> list[str]:
        """Deployments with ``kube_deployment_status_replicas`` series in the namespace and range."""
        return self._client.label_values(
            DISCOVERY_LABEL, discovery_selector(namespace), int(start.timestamp()), int(end.timestamp())
        )

    def collect(
        self,
        dataset: str,
        namespace: str,
        services: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        progress: Callable[[ChunkEvent], None] | None = None,
    ) -> CollectionReport:
        """Collect every service; never raises for one service's failure."""
        if progress is not None:
            self._progress = progress
        windows = self.plan(start, end)
        report = CollectionReport(dataset, namespace, start, end, [ServiceResult(s) for s in services])
        with ThreadPoolExecutor(
            max_workers=self._settings.max_concurrency, thread_name_prefix="promql"
        ) as pool:
            for index, result in enumerate(report.services):
                try:
                    self._collect_service(pool, dataset, namespace, result, windows)
                    if self._workloads is not None and result.status in ("ok", "partial"):
                        self._collect_workload(pool, dataset, namespace, result, start, end)
                except CollectionInterrupted:
                    result.status = "interrupted"
                    result.message = (
                        f"stopped after {self._max_chunks} chunk(s) (--max-chunks); run again to continue"
                    )
                    report.interrupted = True
                    _mark_rest(
                        report.services[index + 1 :], "interrupted", "not reached; run again to continue"
                    )
                    break
                except PrometheusUnavailableError as exc:
                    result.status, result.message = "failed", str(exc)
                    _mark_rest(report.services[index + 1 :], "not attempted", f"not attempted: {exc}")
                    break
                except (PrometheusError, CheckpointMismatchError) as exc:
                    result.status, result.message = "failed", _with_progress_note(str(exc), result)
        return report

    def _collect_service(
        self,
        pool: ThreadPoolExecutor,
        dataset: str,
        namespace: str,
        result: ServiceResult,
        windows: list[ChunkWindow],
    ) -> None:
        service = result.service
        queries = self._table.render_all(namespace, service)
        checkpoint = self._checkpoint(dataset, namespace, service, queries)
        self._tally(result, checkpoint, windows)
        step = self._settings.step_seconds
        for window in windows:
            part = window.chunk.part
            if checkpoint.covers(part, window.first, window.last):
                result.chunks_skipped += 1
                self._progress(ChunkEvent(service, part, "skipped", 0))
                continue
            if self._max_chunks is not None and self._written >= self._max_chunks:
                raise CollectionInterrupted
            previous = checkpoint.chunks.get(part)
            first = min(window.first, previous.first) if previous else window.first
            last = max(window.last, previous.last) if previous else window.last
            try:
                samples = self._query_chunk(pool, queries, first - self._settings.context_steps * step, last)
            except PrometheusError:
                self._progress(ChunkEvent(service, part, "failed", 0))
                raise
            chunk = build_chunk_frame(
                samples,
                service=service,
                namespace=namespace,
                scenario=self._settings.scenario,
                first=first,
                last=last,
                step=step,
                derive=self._derive,
            )
            if len(chunk.frame):
                self._datasets.write(dataset, chunk.frame, part=part)
            checkpoint.chunks[part] = ChunkRecord(
                first, last, len(chunk.frame), chunk.missing_points, chunk.gaps
            )
            self._checkpoints.save(checkpoint)
            self._written += 1
            self._tally(result, checkpoint, windows)
            result.chunks_written += 1
            result.new_rows += len(chunk.frame) - (previous.rows if previous else 0)
            result.empty_metrics = sorted(set(result.empty_metrics) | set(chunk.empty_metrics))
            self._progress(ChunkEvent(service, part, "written", len(chunk.frame)))
        self._finish(result, checkpoint, windows)

    def _collect_workload(
        self,
        pool: ThreadPoolExecutor,
        dataset: str,
        namespace: str,
        result: ServiceResult,
        start: datetime,
        end: datetime,
    ) -> None:
        """The service's workload at ``end`` (usage shares and OOM kills over ``start``..``end``), stored."""
        assert self._workloads is not None
        first, last = int(start.timestamp()), int(end.timestamp())
        state = collect_workload(
            self._client,
            self._table,
            namespace,
            result.service,
            first,
            last,
            self._settings.step_seconds,
            submit=pool,
        )
        self._workloads(dataset, state)
        result.workload = state

    @staticmethod
    def _tally(result: ServiceResult, checkpoint: Checkpoint, windows: list[ChunkWindow]) -> None:
        """Rows, missing points and gaps stored so far for the requested chunks."""
        parts = {w.chunk.part for w in windows}
        records = [r for name, r in checkpoint.chunks.items() if name in parts]
        result.rows = sum(r.rows for r in records)
        result.missing_points = sum(r.missing_points for r in records)
        result.gaps = sum(r.gaps for r in records)

    def _finish(self, result: ServiceResult, checkpoint: Checkpoint, windows: list[ChunkWindow]) -> None:
        self._tally(result, checkpoint, windows)
        if result.rows == 0:
            result.status = "no data"
            result.message = self._explain_no_data(checkpoint.namespace, result.service, windows)
        elif result.empty_metrics and result.chunks_written:
            result.status = "partial"
            result.message = "no series for: " + ", ".join(result.empty_metrics)
        else:
            result.status = "ok"

    def _query_chunk(
        self, pool: ThreadPoolExecutor, queries: dict[str, str], start: int, end: int
    ) -> dict[str, list[tuple[float, float]]]:
        step = self._settings.step_seconds
        failed = threading.Event()

        def run(metric: str, query: str) -> list[Series] | None:
            # Once one query of the chunk failed, the chunk fails anyway: queued queries are skipped.
            if failed.is_set():
                return None
            try:
                return self._client.query_range(query, start, end, step, what=f"query {metric}")
            except PrometheusError:
                failed.set()
                raise

        futures = {metric: pool.submit(run, metric, query) for metric, query in queries.items()}
        wait(futures.values())
        samples: dict[str, list[tuple[float, float]]] = {}
        errors: list[PrometheusError] = []
        for metric, future in futures.items():
            try:
                series = future.result()
            except PrometheusError as exc:
                errors.append(exc)
                continue
            if series is None:
                continue
            if len(series) > 1:
                errors.append(
                    PrometheusQueryError(
                        f"query {metric} returned {len(series)} series; its template must aggregate "
                        "to one series per service (wrap it in sum(...) or avg(...))"
                    )
                )
                continue
            samples[metric] = series[0].samples if series else []
        if errors:
            raise _most_telling(errors)
        return samples

    def _checkpoint(self, dataset: str, namespace: str, service: str, queries: dict[str, str]) -> Checkpoint:
        bound = checkpoint_queries(queries)
        fingerprint = hashlib.sha256(json.dumps(bound, sort_keys=True).encode()).hexdigest()[:16]
        step, points = self._settings.step_seconds, self._settings.points_per_chunk
        stored = self._checkpoints.load(dataset, service)
        if stored is None:
            return Checkpoint(dataset, service, namespace, step, points, fingerprint)
        stored.ensure_compatible(
            namespace=namespace, step_seconds=step, points_per_chunk=points, fingerprint=fingerprint
        )
        return stored

    def _explain_no_data(self, namespace: str, service: str, windows: list[ChunkWindow]) -> str:
        if not windows:
            return "the time range holds no evaluation step"
        span = f"{format_iso(windows[0].first)}..{format_iso(windows[-1].last)}"
        pod_regex = self._table.render_pod_regex(namespace, service)
        try:
            pods = self._client.label_values(
                "pod", f'{{namespace="{namespace}"}}', windows[0].first, windows[-1].last
            )
        except PrometheusError:
            pods = None
        base = f"no series for any query in {span}"
        if pods is None:
            return f"{base} (namespace {namespace!r}, pods matching {pod_regex!r})"
        if not pods:
            return f"{base}: namespace {namespace!r} has no pod series at all in that range"
        sample = ", ".join(pods[:3]) + (", ..." if len(pods) > 3 else "")
        return f"{base}: no pod in namespace {namespace!r} matches {pod_regex!r} ({len(pods)} pods there: {sample})"


def _mark_rest(results: Sequence[ServiceResult], status: str, message: str) -> None:
    for result in results:
        result.status, result.message = status, message


def _with_progress_note(message: str, result: ServiceResult) -> str:
    if result.chunks_written:
        return f"{message} ({result.chunks_written} chunk(s) written before; run again to continue)"
    return message


def _most_telling(errors: list[PrometheusError]) -> PrometheusError:
    """Of several failures of one chunk, the one that explains most (unreachable > auth > timeout > query)."""
    from mora_platform.collect.client import PrometheusAuthError, PrometheusTimeoutError

    for kind in (PrometheusUnavailableError, PrometheusAuthError, PrometheusTimeoutError):
        for error in errors:
            if isinstance(error, kind):
                return error
    return errors[0]
