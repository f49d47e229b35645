"""The rightsizing cycle as one Ray Job: collect the newest window, retrain what changed, summarise.

    ray job submit --working-dir . -- python jobs/rightsize_cycle.py --dataset shop --namespace shop

1. **Collect** the namespace's services from Prometheus into the dataset (``mora collect``'s collector:
   one Parquet part per chunk, a checkpoint per service). Each service resumes from its newest row
   already in the dataset (``--since`` before its first row); chunks the checkpoint covers are skipped,
   the chunk holding the resume point is queried again whole and its part rewritten, so re-running after
   a crash or an outage neither duplicates nor loses rows.
2. **Decide** which services changed (``mora_platform.cycle.decide``): newest row newer than the end of the
   data their ``LATEST`` version was trained on (its manifest's ``data_window.end``), or no version yet, or
   a version trained on another dataset; ``--retrain all`` takes every service with rows.
3. **Retrain** those through the fleet job's machinery (``jobs/retrain_fleet.run_retrain``: one Ray task
   per service, failures isolated, published to the registry).
4. **Summarise** to ``s3://{bucket}/runs/{run_id}/summary.json`` (kind ``cycle``: the retrained services,
   the collection per service, the decisions) and end with one ``CYCLE RESULT:`` line.

Exit code: 0, or 1 when the collection failed (Prometheus unreachable, a service failed) or a retrain
failed, 2 when the run could not start (settings, S3), 3 when the summary could not be stored. Settings come from the environment and
``$MORA_HOME/stack.env`` (``MORA_S3_*``, ``MORA_PROMETHEUS_*``): never pass credentials on the command
line or in a job's runtime_env, which the Jobs API shows to anyone who can read it.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from mora_platform.cycle import (
    EXIT_NOT_STARTED,
    EXIT_SUMMARY_NOT_STORED,
    CollectedService,
    CollectionFigures,
    CycleSummary,
    ServiceState,
    as_utc,
    decide,
    iso,
    resume_point,
    trim_checkpoint,
)
from mora_platform.orchestration import failed_outcome, new_run_id, utc_now
from mora_platform.settings import MoraSettings

if TYPE_CHECKING:
    from mora_platform.collect.checkpoint import CheckpointStore
    from mora_platform.registry import ModelRegistry
    from mora_platform.storage.object_store import ObjectStore

#: Parts the collector writes: ``part-{chunk start}-{chunk end}`` (compact UTC stamps).
_COLLECTED_PART = re.compile(r"^part-(\d{8}T\d{6}Z)-(\d{8}T\d{6}Z)$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Collect the newest metrics from Prometheus, retrain the services that changed, summarise."
    )
    parser.add_argument("--dataset", required=True, help="dataset name under s3://{bucket}/datasets/")
    parser.add_argument("--namespace", default=None, help="Kubernetes namespace (needed unless --no-collect)")
    parser.add_argument(
        "--services", default="all", help="'all' (the namespace's deployments) or a comma-separated list"
    )
    parser.add_argument(
        "--since",
        default="7d",
        help="start of a service's first collection: duration before now, ISO, unix s",
    )
    parser.add_argument("--until", default="now", help="end of the window: 'now', duration before now, ISO")
    parser.add_argument("--prometheus", default=None, help="Prometheus URL (default MORA_PROMETHEUS_URL)")
    parser.add_argument("--step", default=None, help="query step (default MORA_PROMETHEUS_STEP, 30s)")
    parser.add_argument(
        "--settings", type=Path, default=None, help="YAML/JSON Prometheus settings file (PromQL overrides)"
    )
    parser.add_argument(
        "--no-collect", action="store_true", help="decide and retrain on the dataset as it is"
    )
    parser.add_argument(
        "--retrain",
        choices=("changed", "all", "none"),
        default="changed",
        help="which services to retrain: changed (default), all with rows, or none (collect only)",
    )
    parser.add_argument(
        "--min-new-data",
        default="0",
        help="retrain a changed service only once its newest row is this much newer than its model's "
        "data (e.g. 24h; default 0: any newer row)",
    )
    parser.add_argument("--run-id", default=None, help="run id (default: cycle-<utc stamp>-<random>)")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per service task")
    parser.add_argument("--max-retries", type=int, default=2, help="retries of a task whose worker died")
    parser.add_argument("--max-calls", type=int, default=3, help="recycle a worker after N services")
    parser.add_argument("--epochs", type=int, default=None, help="override the LSTM epochs")
    parser.add_argument("--config-json", default=None, help="JSON object merged over the training config")
    parser.add_argument("--no-tuned", action="store_true", help="ignore tuned configs in the registry")
    parser.add_argument(
        "--backend", choices=("ray", "local"), default="ray", help="ray tasks (default) or a local loop"
    )
    parser.add_argument("--ray-address", default=None, help="Ray address (default: the job's cluster / auto)")
    return parser


def _say(line: str = "") -> None:
    print(line, flush=True)


def min_new_data(text: str) -> timedelta:
    """``--min-new-data``: a duration, or 0."""
    from mora_platform.collect.timeparse import parse_duration

    if text.strip() in ("0", "0s", ""):
        return timedelta(0)
    return timedelta(seconds=parse_duration(text))


# -- reading the dataset and the registry ---------------------------------------------------------


def newest_rows(
    store: ObjectStore, dataset: str, services: Sequence[str] | None = None
) -> dict[str, pd.Timestamp]:
    """The newest row's timestamp per service of ``dataset`` (services without rows are absent).

    Reads only the timestamp column, and of the collector's parts (``part-START-END``) only the newest
    ones: a part cannot hold a row after its chunk's end, so older parts are skipped once a row at or
    after their end was seen. Parts of other names (imports) are always read.
    """
    from mora_platform.data.schema import TIMESTAMP
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.errors import DatasetNotFoundError

    datasets = DatasetStore(store)
    try:
        names = datasets.list_services(dataset)
    except DatasetNotFoundError:
        return {}
    if services is not None:
        names = [name for name in names if name in set(services)]
    result: dict[str, pd.Timestamp] = {}
    for service in names:
        parts = datasets.list_parts(dataset, service)
        collected = sorted(
            (
                (pd.Timestamp(m.group(2), tz="UTC"), part)
                for part in parts
                if (m := _COLLECTED_PART.match(part))
            ),
            reverse=True,
        )
        others = [part for part in parts if not _COLLECTED_PART.match(part)]
        newest: pd.Timestamp | None = None
        for part in others:
            newest = _later(newest, _part_newest(store, datasets.part_key(dataset, service, part), TIMESTAMP))
        for chunk_end, part in collected:
            if newest is not None and newest >= chunk_end:
                break
            newest = _later(newest, _part_newest(store, datasets.part_key(dataset, service, part), TIMESTAMP))
        if newest is not None:
            result[service] = newest
    return result


def _part_newest(store: ObjectStore, key: str, column: str) -> pd.Timestamp | None:
    stamps = pd.read_parquet(io.BytesIO(store.get_bytes(key)), columns=[column], engine="pyarrow")[column]
    if stamps.empty:
        return None
    return as_utc(pd.to_datetime(stamps, utc=True, errors="coerce").max())


def _later(a: pd.Timestamp | None, b: pd.Timestamp | None) -> pd.Timestamp | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def model_states(
    registry: ModelRegistry, services: Sequence[str], newest: dict[str, pd.Timestamp]
) -> list[ServiceState]:
    """What the registry says about each service's published version."""
    states = []
    for service in services:
        row = newest.get(service)
        try:
            version = registry.latest_version(service)
        except Exception as error:  # an invalid name, an unreadable pointer
            states.append(ServiceState(service, row, error=f"{type(error).__name__}: {error}"))
            continue
        if version is None:
            states.append(ServiceState(service, row))
            continue
        try:
            manifest = registry.read_manifest(service, version)
        except Exception as error:
            states.append(ServiceState(service, row, version, error=f"{type(error).__name__}: {error}"))
            continue
        dataset = manifest.extra.get("dataset")
        states.append(
            ServiceState(
                service,
                row,
                version,
                trained_through=as_utc(manifest.data_window.get("end")),
                model_dataset=str(dataset) if dataset else None,
            )
        )
    return states


# -- collecting --------------------------------------------------------------------------------


def collect_newest(
    args: argparse.Namespace, store: ObjectStore, figures: CollectionFigures, now: datetime
) -> list[str]:
    """Collect every service from its resume point to ``--until``; fill ``figures``; the services seen.

    Raises nothing for Prometheus or settings problems: they go to ``figures.error``.
    """
    from mora_platform.collect.checkpoint import CheckpointStore
    from mora_platform.collect.client import PrometheusClient, PrometheusError
    from mora_platform.collect.collector import ChunkEvent, Collector
    from mora_platform.collect.settings import PrometheusSettings, SettingsFileError
    from mora_platform.collect.timeparse import parse_time
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.workloads import write_workload

    started = time.monotonic()
    figures.status = "ok"
    figures.namespace = args.namespace
    try:
        if not args.namespace:
            raise ValueError("--namespace is needed to collect (or pass --no-collect)")
        settings = PrometheusSettings.load(args.settings, url=args.prometheus, step=args.step)
        client = PrometheusClient(settings)
        figures.prometheus = client.display_url
        figures.step_seconds = settings.step_seconds
        since, end = parse_time(args.since, now), parse_time(args.until, now)
        client.check()
    except (SettingsFileError, ValueError, PrometheusError) as error:
        figures.error = str(error)
        figures.settle()
        figures.seconds = round(time.monotonic() - started, 3)
        return []

    newest = newest_rows(store, args.dataset)
    checkpoints = CheckpointStore(store)
    collector = Collector(
        client,
        DatasetStore(store),
        checkpoints,
        settings,
        workloads=lambda name, state: write_workload(store, name, state),
    )
    if args.services.strip().lower() == "all":
        try:  # no service resumes before --since: the deployments seen since then
            names = collector.discover_services(args.namespace, min(since, end), end)
        except PrometheusError as error:
            figures.error = f"cannot list the deployments of namespace {args.namespace!r}: {error}"
            figures.settle()
            figures.seconds = round(time.monotonic() - started, 3)
            return []
        if not names:  # a wrong namespace (or PromQL labels) must not pass for "nothing changed"
            figures.error = (
                f"no deployment in namespace {args.namespace!r} between {iso(since)} and {iso(end)} "
                "(no kube_deployment_status_replicas series)"
            )
            figures.settle()
            figures.seconds = round(time.monotonic() - started, 3)
            return []
    else:
        names = list(dict.fromkeys(n.strip() for n in args.services.split(",") if n.strip()))

    groups: dict[datetime, list[str]] = defaultdict(list)
    resumed: dict[str, datetime] = {}
    for service in names:
        start, resumes = resume_point(newest.get(service), since)
        if resumes:
            resumed[service] = start
            _trim(checkpoints, args.dataset, service, start)
        if start > end:
            figures.services.append(
                CollectedService(
                    service=service,
                    status="ok",
                    start=iso(start),
                    end=iso(end),
                    resumed=resumes,
                    message="it resumes after --until: nothing to collect",
                )
            )
            continue
        groups[start].append(service)
    figures.start, figures.end = iso(min(groups) if groups else since), iso(end)
    _say(
        f"collect: {len(names)} services of namespace {args.namespace!r} from {figures.prometheus} "
        f"into dataset {args.dataset!r}, up to {iso(end)} (step {settings.step_seconds}s)"
    )
    for service in names:
        if service not in resumed:
            _say(f"  {service}: first collection, from {iso(since)} (--since {args.since})")
        elif service in newest and resumed[service] > newest[service]:
            _say(f"  {service}: newest row {iso(newest[service])} is before --since: from {iso(since)}")
        else:
            _say(f"  {service}: resuming from its newest row {iso(resumed[service])}")

    def on_chunk(event: ChunkEvent) -> None:
        if event.outcome != "skipped":
            _say(f"  {event.service} {event.part}: {event.outcome}, {event.rows} rows")

    unreachable: str | None = None
    for start, services in sorted(groups.items()):
        if unreachable is not None:
            figures.services += [
                CollectedService(
                    service=s, status="not attempted", start=iso(start), end=iso(end), message=unreachable
                )
                for s in services
            ]
            continue
        report = collector.collect(args.dataset, args.namespace, services, start, end, progress=on_chunk)
        for result in report.services:
            figures.services.append(
                CollectedService(
                    service=result.service,
                    status=result.status,
                    start=iso(start),
                    end=iso(end),
                    resumed=result.service in resumed,
                    new_rows=result.new_rows,
                    rows=result.rows,
                    chunks_written=result.chunks_written,
                    chunks_skipped=result.chunks_skipped,
                    missing_points=result.missing_points,
                    message=result.message,
                )
            )
        if report.failed:
            try:
                client.check()
            except PrometheusError as error:
                unreachable = f"not attempted: {error}"
    figures.settle()
    figures.seconds = round(time.monotonic() - started, 3)
    return names


def _trim(checkpoints: CheckpointStore, dataset: str, service: str, start: datetime) -> None:
    """Trim the service's checkpoint to its resume point (see ``mora_platform.cycle.trim_checkpoint``)."""
    from mora_platform.collect.checkpoint import CheckpointMismatchError

    try:
        checkpoint = checkpoints.load(dataset, service)
    except CheckpointMismatchError:
        return  # damaged: the collector reports it for this service
    if checkpoint is not None and trim_checkpoint(checkpoint, int(start.timestamp())):
        checkpoints.save(checkpoint)


# -- the cycle ---------------------------------------------------------------------------------


def retrain_argv(args: argparse.Namespace, services: Sequence[str], run_id: str) -> list[str]:
    """The arguments of ``jobs/retrain_fleet.py`` that retrain ``services`` for this cycle."""
    argv = [
        "--dataset",
        args.dataset,
        "--services",
        ",".join(services),
        "--run-id",
        run_id,
        "--num-cpus",
        f"{args.num_cpus:g}",
        "--max-retries",
        str(args.max_retries),
        "--max-calls",
        str(args.max_calls),
        "--backend",
        args.backend,
    ]
    if args.ray_address:
        argv += ["--ray-address", args.ray_address]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.config_json:
        argv += ["--config-json", args.config_json]
    if args.no_tuned:
        argv.append("--no-tuned")
    return argv


def run_cycle(args: argparse.Namespace, settings: MoraSettings) -> CycleSummary:
    """Collect, decide, retrain; return the filled summary (not yet stored).

    Raises only when the run cannot start (S3 unreachable, bad arguments).
    """
    from jobs.retrain_fleet import build_parser as retrain_parser
    from jobs.retrain_fleet import run_retrain
    from mora_platform.registry import ModelRegistry
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.errors import DatasetNotFoundError
    from mora_platform.storage.object_store import ObjectStore

    threshold = min_new_data(args.min_new_data)
    if args.config_json:
        try:
            json.loads(args.config_json)
        except ValueError as exc:
            raise ValueError(f"--config-json is not valid JSON: {exc}") from None
    store = ObjectStore.from_settings(settings)
    store.check()
    store.ensure_bucket()
    now = datetime.now(tz=UTC)
    run_id = args.run_id or new_run_id("cycle")
    summary = CycleSummary(
        run_id=run_id,
        dataset=args.dataset,
        namespace=args.namespace,
        started_at=utc_now(),
        backend=args.backend,
        options={
            "services": args.services,
            "since": args.since,
            "until": args.until,
            "retrain": args.retrain,
            "min_new_data": args.min_new_data,
            "num_cpus": args.num_cpus,
            "max_retries": args.max_retries,
            "max_calls": args.max_calls,
        },
    )
    started = time.monotonic()
    _say(f"cycle {run_id}: dataset {args.dataset!r}, bucket {settings.s3_bucket!r}")

    collected: list[str] = []
    if not args.no_collect:
        collected = collect_newest(args, store, summary.collection, now)
        if summary.collection.services:
            _say("")
            _say(summary.collection_table())
        if summary.collection.error:
            _say(f"collection FAILED: {summary.collection.error}")
        _say(
            f"collect: {summary.collection.new_rows} new rows in {summary.collection.seconds:.1f}s"
            + (f"; FAILED: {', '.join(summary.collection.failed)}" if summary.collection.failed else "")
        )

    if args.services.strip().lower() == "all":
        try:
            in_dataset = DatasetStore(store).list_services(args.dataset)
        except DatasetNotFoundError:
            in_dataset = []
        services = sorted(set(in_dataset) | set(collected))
    else:
        services = sorted({n.strip() for n in args.services.split(",") if n.strip()})
    registry = ModelRegistry(store)
    newest = newest_rows(store, args.dataset, services)
    summary.decisions = decide(
        model_states(registry, services, newest),
        args.dataset,
        retrain_all=args.retrain == "all",
        min_new_data=threshold,
    )
    if args.retrain == "none":
        for decision in summary.decisions:
            if decision.retrain:
                decision.retrain, decision.reason = False, f"--retrain none ({decision.reason})"
    _say("")
    _say(summary.decision_table() if summary.decisions else "decide: no service has rows in the dataset")

    to_retrain = summary.to_retrain
    if to_retrain:
        _say("")
        _say(f"retrain: {len(to_retrain)} of {len(summary.decisions)} services: {', '.join(to_retrain)}")
        try:
            fleet = run_retrain(retrain_parser().parse_args(retrain_argv(args, to_retrain, run_id)), settings)
        except Exception as error:  # Ray unreachable, dataset vanished: every service to retrain fails
            _say(f"retrain could not run: {type(error).__name__}: {error}")
            summary.services = [failed_outcome(service, error) for service in to_retrain]
        else:
            summary.services = fleet.services
            summary.options["publish"] = fleet.options.get("publish")
            summary.options["config_overrides"] = fleet.options.get("config_overrides")
    else:
        _say("retrain: nothing changed, nothing to retrain")
    summary.wall_seconds = round(time.monotonic() - started, 3)
    summary.finished_at = utc_now()
    return summary


def finish_cycle(summary: CycleSummary, settings: MoraSettings) -> int:
    """Print the tables and failures, store the summary, print the result line; the exit code."""
    from jobs.retrain_fleet import store_summary

    if summary.services:
        _say("")
        _say(summary.table())
    code = summary.exit_code()
    try:
        _say(f"run summary: {store_summary(summary, settings)}")
    except Exception as error:  # a cycle whose result is not recorded did not do its job
        _say(f"run summary could not be stored: {type(error).__name__}: {error}")
        code = EXIT_SUMMARY_NOT_STORED
    for outcome in summary.services:
        if not outcome.ok:
            _say(f"FAILED {outcome.service}: {outcome.error}")
    for collected in summary.collection.services:
        if collected.failed:
            _say(f"COLLECTION FAILED {collected.service}: {collected.status}: {collected.message}")
    _say(summary.result_line(code))
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = MoraSettings()  # type: ignore[call-arg]
        summary = run_cycle(args, settings)
    except Exception as error:  # S3 unreachable, bad arguments
        _say(f"CYCLE RESULT: run could not start: {type(error).__name__}: {error}; exit {EXIT_NOT_STARTED}")
        return EXIT_NOT_STARTED
    return finish_cycle(summary, settings)


if __name__ == "__main__":
    sys.exit(main())
