"""Fleet retraining as a Ray Job: one Ray task per service, failures isolated, summary to S3.

    ray job submit --working-dir . -- python jobs/retrain_fleet.py --dataset NAME --services all

The driver holds service names only; each task reads its own service's data from S3, trains it
with the library's per-service training (the tuned config from the registry when present) and
publishes a new version. A progress line is printed as tasks finish, a summary table at the end,
and the run summary is written to ``s3://{bucket}/runs/{run_id}/summary.json``.

The exit code (and so the Ray Job's status) says whether the run did its work: 0 when every
service succeeded and the summary was stored; 1 when a service failed (with ``--allow-failures``:
only when every service failed); 2 when the run could not start; 3 when the summary could not be
stored, whatever the services did; 4 when the run was interrupted: the driver watches its parent
(the job's ``/bin/sh`` wrapper) and, once it is gone (the job was stopped or the wrapper killed),
starts and collects nothing more, ends its Ray tasks (disconnecting ends a driver's tasks) and
stores a summary marked ``interrupted``, not a success. ``--rerun-failed RUN_ID`` retrains only the services that
failed in that run (all of ``--services`` when its summary is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.fleet_service import RetrainSpec, retrain_service
from mora_platform.orchestration import (
    EXIT_NOT_STARTED,
    EXIT_SUMMARY_NOT_STORED,
    FleetOrchestrator,
    LocalLoopBackend,
    ParentWatch,
    ProgressLine,
    RunInterrupted,
    RunSummary,
    ServiceOutcome,
    new_run_id,
    parse_services,
    plan_rerun,
    summary_key,
    utc_now,
)
from mora_platform.settings import MoraSettings

if TYPE_CHECKING:
    from mora_platform.storage.object_store import ObjectStore


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Retrain every service of a dataset on Ray, one task per service."
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="dataset name under s3://{bucket}/datasets/ (required unless --rerun-failed finds the run's summary)",
    )
    parser.add_argument("--services", default="all", help="'all' or a comma-separated list of services")
    parser.add_argument(
        "--rerun-failed",
        metavar="RUN_ID",
        default=None,
        help="retrain only the services that failed in run RUN_ID (its summary in S3); "
        "all of --services of --dataset when that summary is missing",
    )
    parser.add_argument(
        "--rerun-of", metavar="RUN_ID", default=None, help="record that this run retrains RUN_ID's failures"
    )
    parser.add_argument("--run-id", default=None, help="run id (default: retrain-<utc stamp>-<random>)")
    parser.add_argument(
        "--num-cpus", type=float, default=1.0, help="CPUs per service task (TF threads capped to it)"
    )
    parser.add_argument("--max-retries", type=int, default=2, help="retries of a task whose worker died")
    parser.add_argument(
        "--max-calls",
        type=int,
        default=3,
        help="recycle a worker process after this many services (0 = reuse). A reused TensorFlow worker "
        "grows ~25 MB per service; 3 keeps peak RSS under 1.5 GB (benchmarks/train_fleet.py)",
    )
    parser.add_argument(
        "--memory-mb", type=int, default=None, help="memory reserved per task (scheduling only)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the LSTM epochs")
    parser.add_argument(
        "--config-json",
        default=None,
        help="JSON object merged over the training config (after the tuned config)",
    )
    parser.add_argument("--no-tuned", action="store_true", help="ignore tuned configs in the registry")
    parser.add_argument("--no-publish", action="store_true", help="train only; publish nothing")
    parser.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit 0 when at least one service succeeded (default: any failed service makes the exit code 1)",
    )
    parser.add_argument("--fail-on-any", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.add_argument(
        "--backend", choices=("ray", "local"), default="ray", help="ray tasks (default) or a local loop"
    )
    parser.add_argument("--ray-address", default=None, help="Ray address (default: the job's cluster / auto)")
    parser.add_argument(
        "--no-parent-watch",
        action="store_true",
        help="keep going when the process that started the driver exits (default: stop, recorded as "
        "interrupted, because a Ray job whose shell wrapper died is already marked FAILED)",
    )
    return parser


def config_overrides(args: argparse.Namespace) -> dict:
    """The explicit training-config overrides from ``--config-json`` and ``--epochs``."""
    overrides: dict = {}
    if args.config_json:
        try:
            overrides = json.loads(args.config_json)
        except ValueError as exc:
            raise SystemExit(f"--config-json is not valid JSON: {exc}") from None
        if not isinstance(overrides, dict):
            raise SystemExit("--config-json must be a JSON object")
    if args.epochs is not None:
        overrides.setdefault("lstm", {})["epochs"] = args.epochs
    return overrides


def _say(line: str) -> None:
    # The job's wrapper may be gone (a closed pipe): losing a log line must not stop the driver.
    with contextlib.suppress(OSError, ValueError):
        print(line, flush=True)


#: How often the Ray wait loop checks the parent; a heartbeat line is printed every HEARTBEAT_S.
WATCH_INTERVAL_S = 1.0
HEARTBEAT_S = 20.0


def run_retrain(args: argparse.Namespace, settings: MoraSettings) -> RunSummary:
    """Resolve services, fan the work out, and return the filled run summary (not yet stored)."""
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.object_store import ObjectStore

    store = ObjectStore.from_settings(settings)
    rerun_of = args.rerun_of
    if args.rerun_failed:
        resolve_rerun(args, store)
        rerun_of = args.rerun_failed
        if not args.services:
            raise NothingToDo(f"run {rerun_of}: nothing failed; nothing to re-run")
    if not args.dataset:
        raise ValueError("--dataset is required (or --rerun-failed RUN_ID with a stored summary)")
    services = parse_services(args.services, DatasetStore(store).list_services(args.dataset))
    run_id = args.run_id or new_run_id("retrain")
    spec = RetrainSpec(
        dataset=args.dataset,
        run_id=run_id,
        config_overrides=config_overrides(args),
        use_tuned=not args.no_tuned,
        publish=not args.no_publish,
        num_cpus=max(1, round(args.num_cpus)),
    )
    summary = RunSummary(
        run_id=run_id,
        dataset=args.dataset,
        started_at=utc_now(),
        backend=args.backend,
        options={
            "num_cpus": args.num_cpus,
            "max_retries": args.max_retries,
            "max_calls": args.max_calls,
            "publish": spec.publish,
            "use_tuned": spec.use_tuned,
            "config_overrides": spec.config_overrides,
            "allow_failures": bool(args.allow_failures),
            **({"rerun_of": rerun_of} if rerun_of else {}),
        },
    )
    progress = ProgressLine(len(services))
    _say(f"fleet run {run_id}: dataset {args.dataset!r}, {len(services)} services: {', '.join(services)}")

    def report(outcome: ServiceOutcome) -> None:
        _say(progress.update(outcome))

    callbacks = [report]
    watch = None if getattr(args, "no_parent_watch", False) else ParentWatch()
    ray_backend = None
    if args.backend == "ray":
        import ray

        from jobs.ray_backend import RayFleetMetrics, RayTaskBackend

        if not ray.is_initialized():
            from infra.local.ray_head import use_client_env

            address = args.ray_address or settings.ray_address or None
            use_client_env(settings.home, address)  # outside the head: the local stack's token
            ray.init(address=address, log_to_driver=True)
        ray_backend = RayTaskBackend(
            num_cpus=args.num_cpus,
            max_retries=args.max_retries,
            memory_mb=args.memory_mb,
            max_calls=args.max_calls,
            heartbeat_s=WATCH_INTERVAL_S if watch is not None else HEARTBEAT_S,
            on_wait=_Heartbeat(progress, watch),
        )
        metrics = RayFleetMetrics(args.dataset)
        callbacks.append(metrics.record)
        backend = ray_backend
    else:
        backend = LocalLoopBackend()  # type: ignore[assignment]

    work = functools.partial(retrain_service, spec)
    FleetOrchestrator(backend).run(
        work, services, summary=summary, on_outcome=callbacks, stop=watch.check if watch else None
    )
    if summary.interrupted is not None:
        _say(f"run interrupted: {summary.interrupted}; nothing more is started or published")
        if ray_backend is not None:
            import ray

            # A driver's tasks die with its connection: none of them publishes after this.
            with contextlib.suppress(Exception):
                ray.shutdown()
        return summary
    if ray_backend is not None:
        from jobs.ray_backend import task_attempts

        for service, attempts in task_attempts(ray_backend.task_ids).items():
            for outcome in summary.services:
                if outcome.service == service:
                    outcome.attempts = attempts
    return summary


class _Heartbeat:
    """The Ray wait loop's callback: stops the run once the parent is gone (``RunInterrupted``),
    and prints a progress line every ``HEARTBEAT_S`` while nothing finishes."""

    def __init__(self, progress: ProgressLine, watch: ParentWatch | None) -> None:
        self.progress = progress
        self.watch = watch
        self.last = time.monotonic()

    def __call__(self, running: list[str]) -> None:
        if self.watch is not None:
            reason = self.watch.check()
            if reason is not None:
                raise RunInterrupted(reason)
        if self.watch is None or time.monotonic() - self.last >= HEARTBEAT_S:
            self.last = time.monotonic()
            _say(self.progress.waiting(running))


class NothingToDo(Exception):
    """``--rerun-failed`` found a summary in which no service failed."""


def resolve_rerun(args: argparse.Namespace, store: ObjectStore) -> None:
    """Set ``args.dataset`` / ``args.services`` from the summary of run ``args.rerun_failed``."""
    from mora_platform.storage.errors import ObjectNotFoundError

    key = summary_key(args.rerun_failed)
    try:
        previous: RunSummary | None = RunSummary.model_validate_json(store.get_bytes(key))
    except ObjectNotFoundError:
        previous = None
    plan = plan_rerun(
        args.rerun_failed, previous, dataset=args.dataset, services=args.services, summary_uri=store.uri(key)
    )
    _say(plan.message)
    args.dataset, args.services = plan.dataset, plan.services


def store_summary(summary: RunSummary, settings: MoraSettings) -> str:
    """Write the summary JSON to ``runs/{run_id}/summary.json``; return its s3:// URI."""
    from mora_platform.storage.object_store import ObjectStore

    store = ObjectStore.from_settings(settings)
    key = summary_key(summary.run_id)
    store.put_bytes(key, summary.to_json())
    return store.uri(key)


def finish_run(
    summary: RunSummary,
    settings: MoraSettings,
    *,
    allow_failures: bool = False,
    label: str,
    rerun_hint: bool = False,
) -> int:
    """Print the table and failures, store the summary JSON, print the result line; the exit code.

    Non-zero when a service failed (unless ``allow_failures`` and another succeeded) and, always,
    when the summary could not be stored: a run whose result is not recorded did not do its job.
    """
    _say("")
    _say(summary.table())
    stored = True
    try:
        _say(f"run summary: {store_summary(summary, settings)}")
    except Exception as error:
        stored = False
        _say(f"run summary could not be stored: {type(error).__name__}: {error}")
    for outcome in summary.services:
        if not outcome.ok:
            _say(f"FAILED {outcome.service}: {outcome.error}")
    code = summary.exit_code(allow_failures=allow_failures)
    if not stored:
        code = EXIT_SUMMARY_NOT_STORED
    _say(
        f"{label}: "
        + (f"run INTERRUPTED ({summary.interrupted}): " if summary.interrupted else "")
        + f"{len(summary.succeeded)} succeeded, {len(summary.failed)} failed"
        + (f" ({', '.join(summary.failed)})" if summary.failed else "")
        + ("" if stored else "; run summary NOT stored")
        + f"; exit {code}"
    )
    if rerun_hint and (summary.failed or not stored):
        _say(f"retrain what failed with: mora retrain --rerun-failed {summary.run_id}")
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = MoraSettings()  # type: ignore[call-arg]
    try:
        summary = run_retrain(args, settings)
    except NothingToDo as done:
        _say(f"FLEET RESULT: {done}; exit 0")
        return 0
    except Exception as error:  # no services, unknown dataset, storage unreachable
        _say(f"FLEET RESULT: run could not start: {type(error).__name__}: {error}")
        return EXIT_NOT_STARTED
    return finish_run(
        summary, settings, allow_failures=args.allow_failures, label="FLEET RESULT", rerun_hint=True
    )


if __name__ == "__main__":
    sys.exit(main())
