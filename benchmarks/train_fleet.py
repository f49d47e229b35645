"""Benchmark: fleet retraining on a local Ray with 1 CPU and with 2 CPUs.

Fleets: 10 synthetic services (14 days at 5-minute steps) and the 7 shared Online Boutique
services. Each run goes through the same code as the Ray Job (``RayTaskBackend`` + ``retrain_service``,
one task per service, data read from S3, versions published to S3), against a throw-away ``weed``
S3 server on free 127.0.0.1 ports. Writes JSON under ``benchmarks/results/`` and prints a table:
wall time, seconds per service, peak RSS per worker, artifact size, speedup 2 vs 1 CPU.

    .venv/bin/python benchmarks/train_fleet.py [--epochs N] [--cpus 1,2] [--fleets synthetic,online-boutique]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from infra.local.weed import WeedPorts, WeedServer  # noqa: E402
from jobs.fleet_service import RetrainSpec, retrain_service  # noqa: E402
from mora_platform.orchestration import FleetOrchestrator, RunSummary, new_run_id, utc_now  # noqa: E402
from mora_platform.settings import MoraSettings  # noqa: E402


def shared_data_dir() -> Path:
    env = os.environ.get("MORA_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "online-boutique"
    if not path.is_dir():
        raise SystemExit(f"shared Online Boutique data not found at {path} (set MORA_SHARED_DATA)")
    return path


def write_datasets(
    store: Any, fleets: list[str], synthetic_services: int, days: float
) -> dict[str, list[str]]:
    """Write each requested fleet as a dataset; returns dataset name -> services."""
    from mora_platform.data.loaders import load_path
    from mora_platform.data.schema import SERVICE
    from mora_platform.data.synthetic import generate_fleet
    from mora_platform.storage.datasets import DatasetStore

    datasets = DatasetStore(store)
    written: dict[str, list[str]] = {}
    if "synthetic" in fleets:
        frame = generate_fleet(synthetic_services, days=days, step_seconds=300, seed=0)
        datasets.write("synthetic", frame)
        written["synthetic"] = sorted(frame[SERVICE].unique())
    if "online-boutique" in fleets:
        result = load_path(shared_data_dir(), usage_scope="pod")  # the seed's figures are per pod
        datasets.write("online-boutique", result.frame)
        written["online-boutique"] = sorted(result.frame[SERVICE].unique())
    return written


def run_fleet(
    dataset: str,
    services: list[str],
    cpus: int,
    env_vars: dict[str, str],
    overrides: dict[str, Any],
    max_calls: int = 0,
) -> RunSummary:
    """One fleet retraining on a fresh local Ray with ``cpus`` CPUs (one CPU per task)."""
    import ray

    from jobs.ray_backend import RayTaskBackend

    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        runtime_env={"env_vars": env_vars},
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        run_id = new_run_id(f"bench-{cpus}cpu")
        spec = RetrainSpec(dataset=dataset, run_id=run_id, config_overrides=overrides, use_tuned=False)
        summary = RunSummary(run_id=run_id, dataset=dataset, started_at=utc_now(), backend=f"ray-{cpus}cpu")
        backend = RayTaskBackend(num_cpus=1, max_retries=1, max_calls=max_calls)

        def progress(outcome: Any) -> None:
            print(f"  [{cpus} cpu] {outcome.service}: {outcome.status} {outcome.seconds:.1f}s", flush=True)

        FleetOrchestrator(backend).run(
            functools.partial(retrain_service, spec), services, summary=summary, on_outcome=[progress]
        )
        return summary
    finally:
        ray.shutdown()


def measure(summary: RunSummary) -> dict[str, Any]:
    ok = [o for o in summary.services if o.ok]
    seconds = [o.seconds for o in ok]
    rss = [o.peak_rss_mb for o in ok if o.peak_rss_mb is not None]
    sizes = [o.artifact_bytes for o in ok if o.artifact_bytes is not None]
    cpu = [o.cpu_seconds for o in ok if o.cpu_seconds is not None]
    return {
        "wall_seconds": summary.wall_seconds,
        "services": len(summary.services),
        "succeeded": len(ok),
        "failed": {o.service: o.error for o in summary.services if not o.ok},
        "seconds_per_service_mean": round(statistics.mean(seconds), 2) if seconds else None,
        "seconds_per_service_max": round(max(seconds), 2) if seconds else None,
        "cpu_seconds_per_service_mean": round(statistics.mean(cpu), 2) if cpu else None,
        "peak_rss_mb_max": round(max(rss), 1) if rss else None,
        "peak_rss_mb_mean": round(statistics.mean(rss), 1) if rss else None,
        "artifact_kib_mean": round(statistics.mean(sizes) / 1024, 1) if sizes else None,
        "per_service": [o.model_dump(mode="json", exclude={"metrics"}) for o in summary.services],
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    header = f"{'fleet':<16} {'cpus':>4} {'ok':>5} {'wall s':>8} {'s/service':>10} {'cpu s/svc':>10} {'peak RSS MB':>12} {'artifact KiB':>13} {'speedup':>8}"
    lines = [header, "-" * len(header)]
    for fleet, runs in results.items():
        base = runs.get("1", {}).get("wall_seconds")
        for cpus, row in sorted(runs.items()):
            speedup = f"{base / row['wall_seconds']:.2f}x" if base and row["wall_seconds"] else "-"
            lines.append(
                f"{fleet:<16} {cpus:>4} {row['succeeded']:>2}/{row['services']:<2} {row['wall_seconds']:>8.1f} "
                f"{row['seconds_per_service_mean'] or 0:>10.1f} {row['cpu_seconds_per_service_mean'] or 0:>10.1f} "
                f"{row['peak_rss_mb_max'] or 0:>12.0f} "
                f"{row['artifact_kib_mean'] or 0:>13.1f} {speedup:>8}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpus", default="1,2", help="CPU counts to compare")
    parser.add_argument("--fleets", default="synthetic,online-boutique")
    parser.add_argument("--synthetic-services", type=int, default=10)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the LSTM epochs (default: config's)"
    )
    parser.add_argument("--config-json", default=None, help="JSON object merged over the training config")
    parser.add_argument(
        "--max-calls", type=int, default=0, help="recycle workers after N services (0 = reuse)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    cpu_counts = [int(c) for c in args.cpus.split(",")]
    fleets = [f.strip() for f in args.fleets.split(",") if f.strip()]
    overrides: dict[str, Any] = json.loads(args.config_json) if args.config_json else {}
    if args.epochs is not None:
        overrides.setdefault("lstm", {})["epochs"] = args.epochs

    from mora_platform.storage.object_store import ObjectStore

    work = Path(tempfile.mkdtemp(prefix="mora-bench-"))
    key, secret = secrets.token_hex(8), secrets.token_hex(16)
    weed = WeedServer(work / "weed-data", WeedPorts.free(), key, secret, log_path=work / "weed.log")
    (work / "weed-data").mkdir(parents=True)
    weed.start(timeout=90)
    try:
        settings = MoraSettings(
            s3_endpoint_url=weed.endpoint_url,
            s3_bucket="bench",
            s3_access_key=key,  # type: ignore[arg-type]
            s3_secret_key=secret,  # type: ignore[arg-type]
        )  # type: ignore[call-arg]
        store = ObjectStore.from_settings(settings)
        deadline = time.monotonic() + 60
        while True:
            try:
                store.ensure_bucket()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        env_vars = {
            "MORA_S3_ENDPOINT_URL": settings.s3_endpoint_url,
            "MORA_S3_BUCKET": settings.s3_bucket,
            "MORA_S3_ACCESS_KEY": key,
            "MORA_S3_SECRET_KEY": secret,
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        datasets = write_datasets(store, fleets, args.synthetic_services, args.days)
        results: dict[str, dict[str, Any]] = {}
        for dataset, services in datasets.items():
            for cpus in cpu_counts:
                print(f"{dataset}: {len(services)} services on {cpus} CPU(s)", flush=True)
                load_before = os.getloadavg()[0]
                summary = run_fleet(dataset, services, cpus, env_vars, overrides, args.max_calls)
                row = measure(summary)
                # The machine is shared: the 1-minute load average says how contended a run was.
                row["load_average_1m"] = {
                    "before": round(load_before, 2),
                    "after": round(os.getloadavg()[0], 2),
                }
                results.setdefault(dataset, {})[str(cpus)] = row
    finally:
        weed.stop()
    report = {
        "benchmark": "train_fleet",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "config_overrides": overrides,
        "max_calls": args.max_calls,
        "synthetic": {"services": args.synthetic_services, "days": args.days, "step_seconds": 300},
        "results": results,
        "speedup_2_vs_1": {
            fleet: round(runs["1"]["wall_seconds"] / runs["2"]["wall_seconds"], 3)
            for fleet, runs in results.items()
            if "1" in runs and "2" in runs and runs["2"]["wall_seconds"]
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train_fleet-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2))
    print()
    print(table(results))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
