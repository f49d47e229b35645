"""`mora collect`: pull a namespace's services from Prometheus into a dataset on S3, resumably.

Connection, auth/TLS and query settings come from ``MORA_PROMETHEUS_*`` (or ``--settings``
FILE, YAML/JSON); the flags below override them. Errors a user can fix print one ``error:``
line and exit 2; a run where a service failed exits 1 after collecting the others.

Besides the rows, each collected service's ``WorkloadState`` (containers, requests/limits, OOM
kills, HPA at the end of the window) is stored beside the dataset (``storage.workloads``); the
summary names the containers found and the facts that could not be.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from mora_platform.collect.collector import CollectionReport, Collector, DatasetWriter, ServiceResult
    from mora_platform.storage.object_store import ObjectStore

USAGE_ERROR = 2
SERVICE_FAILED = 1


def _described(field: str) -> str:
    """A flag's help from the settings field it overrides (one description, one place)."""
    from mora_platform.collect.settings import PrometheusSettings

    info = PrometheusSettings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    suffix = "" if default is None else f", default {default}"
    return f"{info.description} (env MORA_PROMETHEUS_{field.upper()}{suffix})"


def register(app: typer.Typer) -> None:
    """Add ``mora collect`` to ``app``."""
    app.command(
        "collect",
        help=(
            "Collect the 12 metrics (and the busiest pod's usage) of a namespace's services from Prometheus "
            "into a dataset, with each Deployment's containers, requests/limits, OOM kills and HPA."
        ),
    )(collect)


def collect(
    namespace: str = typer.Option(..., "--namespace", "-n", help="Kubernetes namespace of the services"),
    dataset: str = typer.Option(..., "--dataset", help="Dataset name on S3 (datasets/{name}/...)"),
    prometheus: str | None = typer.Option(None, "--prometheus", help=_described("url")),
    services: str | None = typer.Option(
        None, "--services", help="Comma-separated service (deployment) names"
    ),
    all_services: bool = typer.Option(False, "--all", help="Every deployment in the namespace"),
    since: str = typer.Option(
        "7d", "--since", help="Start: duration before now (7d), ISO time or unix seconds"
    ),
    until: str = typer.Option(
        "now", "--until", help="End: 'now', duration before now, ISO time or unix seconds"
    ),
    step: str | None = typer.Option(None, "--step", help=_described("step")),
    settings_file: Path | None = typer.Option(
        None,
        "--settings",
        help="YAML/JSON file with Prometheus settings and PromQL overrides (key 'queries')",
    ),
    timeout: float | None = typer.Option(None, "--timeout", help=_described("timeout_seconds")),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency", help=_described("max_concurrency")),
    points_per_chunk: int | None = typer.Option(
        None, "--points-per-chunk", help=_described("points_per_chunk")
    ),
    max_chunks: int | None = typer.Option(
        None, "--max-chunks", min=0, help="Stop after writing this many chunks (resume by running again)"
    ),
) -> None:
    """Collect, then print a summary table; exit 1 if a service failed or nothing was collected."""
    from rich.console import Console

    from mora_platform.collect.checkpoint import CheckpointStore
    from mora_platform.collect.client import PrometheusClient, PrometheusError
    from mora_platform.collect.collector import Collector
    from mora_platform.collect.settings import PrometheusSettings, SettingsFileError
    from mora_platform.collect.timeparse import parse_time
    from mora_platform.recommend.workload import WorkloadState
    from mora_platform.storage.workloads import write_workload

    console = Console(stderr=False)
    if bool(services) == all_services:
        _fail("pass either --services a,b or --all")
    try:
        settings = PrometheusSettings.load(
            settings_file,
            url=prometheus,
            step=step,
            timeout_seconds=timeout,
            max_concurrency=max_concurrency,
            points_per_chunk=points_per_chunk,
        )
        now = datetime.now(tz=UTC)
        start, end = parse_time(since, now), parse_time(until, now)
        client = PrometheusClient(settings)
    except (SettingsFileError, ValueError, PrometheusError) as exc:
        _fail(str(exc))

    try:
        client.check()
    except PrometheusError as exc:
        _fail(str(exc))

    datasets, blobs = _dataset_store()

    def store_workload(name: str, state: WorkloadState) -> None:
        write_workload(blobs, name, state)

    collector = Collector(
        client, datasets, CheckpointStore(blobs), settings, max_chunks=max_chunks, workloads=store_workload
    )
    try:
        windows = collector.plan(start, end)
    except ValueError as exc:
        _fail(str(exc))
    if all_services:
        try:
            names = collector.discover_services(namespace, start, end)
        except PrometheusError as exc:
            _fail(f"cannot list the deployments of namespace {namespace!r}: {exc}")
        if not names:
            _fail(
                f"--all found no deployment in namespace {namespace!r} between {start:%Y-%m-%dT%H:%M:%SZ} and "
                f"{end:%Y-%m-%dT%H:%M:%SZ} (no kube_deployment_status_replicas series)"
            )
    else:
        names = _split_services(services or "")

    report = _run_with_progress(console, collector, dataset, namespace, names, start, end, len(windows))
    _print_summary(console, report)
    if report.failed or not any(s.rows for s in report.services):
        raise typer.Exit(SERVICE_FAILED)


def _run_with_progress(
    console: Console,
    collector: Collector,
    dataset: str,
    namespace: str,
    names: list[str],
    start: datetime,
    end: datetime,
    chunks_per_service: int,
) -> CollectionReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mora_platform.collect.collector import ChunkEvent

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"collecting {len(names)} service(s)", total=len(names) * chunks_per_service)

        def on_chunk(event: ChunkEvent) -> None:
            progress.update(task, advance=1, description=f"{event.service} {event.part}")

        return collector.collect(dataset, namespace, names, start, end, progress=on_chunk)


def _print_summary(console: Console, report: CollectionReport) -> None:
    from rich.table import Table

    table = Table(
        title=f"dataset {report.dataset!r}: {report.start:%Y-%m-%d %H:%M}..{report.end:%Y-%m-%d %H:%M} UTC"
    )
    for column in (
        "service",
        "status",
        "rows",
        "new rows",
        "chunks written",
        "chunks skipped",
        "missing points",
        "gaps",
    ):
        table.add_column(column, justify="left" if column in ("service", "status") else "right")
    for s in report.services:
        table.add_row(
            s.service,
            s.status,
            str(s.rows),
            str(s.new_rows),
            str(s.chunks_written),
            str(s.chunks_skipped),
            str(s.missing_points),
            str(s.gaps),
        )
    console.print(table)
    # Reasons on their own unwrapped lines, so they stay readable (and greppable) at any width.
    for s in report.services:
        if s.message:
            console.print(
                f"{s.service}: {s.status}: {s.message}", soft_wrap=True, markup=False, highlight=False
            )
    for s in report.services:
        for line in workload_lines(s):
            console.print(line, soft_wrap=True, markup=False, highlight=False)
    if report.interrupted:
        console.print("collection interrupted; run the same command again to continue", soft_wrap=True)


def workload_lines(result: ServiceResult) -> list[str]:
    """What ``mora collect`` says about a service's workload: containers and HPA, then what is missing."""
    state = result.workload
    if state is None:
        return []
    facts = [f"containers {', '.join(result.containers)}" if result.containers else "no containers"]
    if state.pods is not None or state.replicas is not None:
        facts.append(f"pods {_or_dash(state.pods)}, replicas {_or_dash(state.replicas)}")
    kills = sum(c.oom_kills for c in state.containers)
    if kills:
        facts.append(f"{kills} OOM kill(s)")
    if state.hpa is not None:
        hpa = state.hpa
        target = f", cpu target {hpa.target_cpu_utilization:.0%}" if hpa.target_cpu_utilization else ""
        facts.append(f"HPA {hpa.name} {_or_dash(hpa.min_replicas)}..{_or_dash(hpa.max_replicas)}{target}")
    lines = [f"{result.service}: workload: {'; '.join(facts)}"]
    if result.workload_missing:
        lines.append(f"{result.service}: workload missing: {', '.join(result.workload_missing_short)}")
    return lines


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _dataset_store() -> tuple[DatasetWriter, ObjectStore]:
    from mora_platform.settings import MoraSettings
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.errors import StorageError
    from mora_platform.storage.object_store import ObjectStore

    try:
        store = ObjectStore.from_settings(MoraSettings())  # type: ignore[call-arg]
        store.check()
        store.ensure_bucket()
    except StorageError as exc:
        _fail(str(exc))
    return DatasetStore(store), store


def _split_services(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        _fail("--services: give at least one service name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        _fail(f"--services: listed twice: {', '.join(duplicates)}")
    return names


def _fail(message: str) -> NoReturn:
    """One ``error:`` line on stderr, exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USAGE_ERROR)
