"""Fleet tuning as a Ray Job: a Tune search per service, one service after another.

    ray job submit --working-dir . -- python jobs/tune_fleet.py --dataset NAME --services all --samples 12

Each service's search uses the whole cluster for its trials (one CPU each); a service whose data or
search fails is reported and the others go on. The best config per service is stored in the model
registry (``models/{service}/tuned_config.json``) and used by the next retraining; Tune's
experiments are under ``s3://{bucket}/tune/{run_id}/``, the run summary at ``runs/{run_id}/summary.json``.
Exit codes as ``retrain_fleet.py``: non-zero when a service failed (unless ``--allow-failures``) or
the summary could not be stored.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.retrain_fleet import finish_run
from mora_platform.orchestration import (
    FleetOrchestrator,
    LocalLoopBackend,
    ProgressLine,
    RunSummary,
    ServiceOutcome,
    new_run_id,
    parse_services,
    utc_now,
)
from mora_platform.settings import MoraSettings
from tune.run import TuneRequest, connect, experiment_prefix, tune_outcome
from tune.search_space import SearchBounds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tune the LSTM and fusion weight of every service of a dataset."
    )
    parser.add_argument("--dataset", required=True, help="dataset name under s3://{bucket}/datasets/")
    parser.add_argument("--services", default="all", help="'all' or a comma-separated list of services")
    parser.add_argument("--samples", type=int, default=8, help="trials per service")
    parser.add_argument("--time-budget-s", type=float, default=900.0, help="wall-time budget per service")
    parser.add_argument("--max-epochs", type=int, default=None, help="epochs of the longest trial")
    parser.add_argument("--tiny", action="store_true", help="a tiny search space (tests, demos)")
    parser.add_argument("--bounds-json", default=None, help="JSON object of SearchBounds fields")
    parser.add_argument(
        "--config-json", default=None, help="JSON object: base training config under each trial"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--run-id", default=None)
    parser.add_argument(
        "--no-save", action="store_true", help="do not store the best configs in the registry"
    )
    parser.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit 0 when at least one service was tuned (default: any failed service makes the exit code 1)",
    )
    parser.add_argument("--fail-on-any", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--ray-address", default=None)
    return parser


def bounds_from_args(args: argparse.Namespace) -> SearchBounds:
    """The search bounds: defaults or ``--tiny``, then ``--bounds-json`` and ``--max-epochs`` over them."""
    data = SearchBounds.tiny().model_dump() if args.tiny else SearchBounds().model_dump()
    if args.bounds_json:
        extra = _json_object(args.bounds_json, "--bounds-json")
        data.update(extra)
    if args.max_epochs is not None:
        data["max_epochs"] = args.max_epochs
    return SearchBounds.model_validate(data)


def _json_object(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{flag} must be a JSON object")
    return value


def _tune_one(
    args: argparse.Namespace,
    run_id: str,
    bounds: SearchBounds,
    base: dict,
    settings: MoraSettings,
    service: str,
) -> ServiceOutcome:
    request = TuneRequest(
        dataset=args.dataset,
        service=service,
        run_id=run_id,
        num_samples=args.samples,
        time_budget_s=args.time_budget_s,
        bounds=bounds,
        base_config=base,
        seed=args.seed,
        cpus_per_trial=args.cpus_per_trial,
        save=not args.no_save,
    )
    return tune_outcome(request, settings)


def run_tune(args: argparse.Namespace, settings: MoraSettings) -> RunSummary:
    """Tune every selected service; return the run summary (not yet stored)."""
    import ray

    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.object_store import ObjectStore

    store = ObjectStore.from_settings(settings)
    services = parse_services(args.services, DatasetStore(store).list_services(args.dataset))
    run_id = args.run_id or new_run_id("tune")
    bounds = bounds_from_args(args)
    base = _json_object(args.config_json, "--config-json") if args.config_json else {}
    summary = RunSummary(
        run_id=run_id,
        kind="tune",
        dataset=args.dataset,
        started_at=utc_now(),
        backend="ray-tune",
        options={
            "samples": args.samples,
            "time_budget_s": args.time_budget_s,
            "seed": args.seed,
            "bounds": bounds.model_dump(mode="json"),
            "experiments": store.uri(experiment_prefix(run_id)),
        },
    )
    if not ray.is_initialized():
        from infra.local.ray_head import use_client_env

        address = args.ray_address or settings.ray_address
        use_client_env(settings.home, address)  # outside the head: the local stack's token
        connect(address)
    progress = ProgressLine(len(services))
    print(f"tune run {run_id}: dataset {args.dataset!r}, services: {', '.join(services)}", flush=True)
    work = functools.partial(_tune_one, args, run_id, bounds, base, settings)
    FleetOrchestrator(LocalLoopBackend()).run(
        work, services, summary=summary, on_outcome=[lambda o: print(progress.update(o), flush=True)]
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = MoraSettings()  # type: ignore[call-arg]
    try:
        summary = run_tune(args, settings)
    except Exception as error:
        print(f"TUNE RESULT: run could not start: {type(error).__name__}: {error}", flush=True)
        return 2
    return finish_run(summary, settings, allow_failures=args.allow_failures, label="TUNE RESULT")


if __name__ == "__main__":
    sys.exit(main())
