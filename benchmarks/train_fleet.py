"""Benchmark: fleet retraining as the fleet grows (10, 30, 100 synthetic services) on a local Ray.

Each fleet is ``generate_fleet(n, days=14, step_seconds=300, seed=SEED)`` written as dataset
``synthetic-{n}``; the run goes through the same code as the Ray Job (``RayTaskBackend`` +
``retrain_service``, one task per service, data read from S3, versions published to S3) with the
default ``TrainingConfig``, against a throw-away ``weed`` S3 server on free 127.0.0.1 ports. The
Online Boutique fleet (the 7 shared services) can be added with ``--fleets synthetic,online-boutique``.

Every (fleet, CPUs) run is its own driver process (a fresh ``ray.init(num_cpus=CPUS)``), so the
driver's peak RSS is that run's alone. Per run it reports: wall time, services per minute per
CPU, the peak RSS of each Ray worker process (lifetime peak of the worker, returned by each task;
a worker is recycled after ``--max-calls`` services, 3 as ``mora retrain`` does by default; with
``--max-calls 0`` workers are reused for good, and the drift from a worker's first to its last
service says whether memory accumulates), the driver's peak RSS (sampled during the run), and the ratio of
wall time to the smallest synthetic fleet with the services ratio beside it: cost should grow
linearly with services, and ``linearity`` (time ratio / services ratio) says where it does not.

Writes ``benchmarks/results/train_fleet-<UTC time>.json`` and prints a table.

    .venv/bin/python benchmarks/train_fleet.py --sizes 10,30,100 --cpus 2         # the full run
    .venv/bin/python benchmarks/train_fleet.py --quick                            # 2 and 4 services, tiny
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import statistics
import subprocess
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
from mora_platform.orchestration import (  # noqa: E402
    FleetOrchestrator,
    PeakRssSampler,
    RunSummary,
    new_run_id,
    utc_now,
)
from mora_platform.settings import MoraSettings  # noqa: E402

#: The issue's aim: 100 services on 2 cores in under 15 minutes.
AIM_SERVICES, AIM_CPUS, AIM_SECONDS = 100, 2, 15 * 60
#: A run whose time ratio is this far from its services ratio is called out as not linear.
LINEARITY_TOLERANCE = 0.15
#: ``--quick``: small fleets, few days, one LSTM epoch (a smoke test of the benchmark itself).
QUICK = {"sizes": "2,4", "days": 3.0, "cpus": "2", "overrides": {"lstm": {"epochs": 1}}}


def shared_data_dir() -> Path:
    env = os.environ.get("MORA_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "online-boutique"
    if not path.is_dir():
        raise SystemExit(f"shared Online Boutique data not found at {path} (set MORA_SHARED_DATA)")
    return path


def write_datasets(
    store: Any, fleets: list[str], sizes: list[int], days: float, seed: int
) -> dict[str, list[str]]:
    """Write each requested fleet as a dataset; returns dataset name -> services."""
    from mora_platform.data.loaders import load_path
    from mora_platform.data.schema import SERVICE
    from mora_platform.data.synthetic import generate_fleet
    from mora_platform.storage.datasets import DatasetStore

    datasets = DatasetStore(store)
    written: dict[str, list[str]] = {}
    if "synthetic" in fleets:
        for size in sizes:
            frame = generate_fleet(size, days=days, step_seconds=300, seed=seed)
            datasets.write(f"synthetic-{size}", frame)
            written[f"synthetic-{size}"] = sorted(frame[SERVICE].unique())
            del frame
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
        done = [0]

        def progress(outcome: Any) -> None:
            done[0] += 1
            print(
                f"  [{dataset} {cpus} cpu] {done[0]}/{len(services)} {outcome.service}: {outcome.status} "
                f"{outcome.seconds:.1f}s pid {outcome.worker_pid} rss {outcome.worker_peak_rss_mb} MB",
                flush=True,
            )

        FleetOrchestrator(backend).run(
            functools.partial(retrain_service, spec), services, summary=summary, on_outcome=[progress]
        )
        return summary
    finally:
        ray.shutdown()


def per_worker(summary: RunSummary) -> list[dict[str, Any]]:
    """One row per Ray worker process: services run, lifetime peak RSS, drift first -> last service."""
    workers: dict[int, list[Any]] = {}
    for outcome in summary.services:
        if outcome.worker_pid is not None:
            workers.setdefault(outcome.worker_pid, []).append(outcome)
    rows = []
    for pid, outcomes in sorted(workers.items()):
        peaks = [o.worker_peak_rss_mb for o in outcomes if o.worker_peak_rss_mb is not None]
        during = [o.peak_rss_mb for o in outcomes if o.peak_rss_mb is not None]  # in completion order
        rows.append(
            {
                "pid": pid,
                "services": len(outcomes),
                "peak_rss_mb": max(peaks) if peaks else None,
                "first_service_peak_mb": during[0] if during else None,
                "last_service_peak_mb": during[-1] if during else None,
                "drift_mb": round(during[-1] - during[0], 1) if len(during) > 1 else 0.0,
            }
        )
    return rows


def measure(summary: RunSummary, cpus: int) -> dict[str, Any]:
    ok = [o for o in summary.services if o.ok]
    seconds = [o.seconds for o in ok]
    sizes = [o.artifact_bytes for o in ok if o.artifact_bytes is not None]
    cpu = [o.cpu_seconds for o in ok if o.cpu_seconds is not None]
    wall = summary.wall_seconds or 0.0
    workers = per_worker(summary)
    worker_peaks = [w["peak_rss_mb"] for w in workers if w["peak_rss_mb"] is not None]
    return {
        "wall_seconds": wall,
        "cpus": cpus,
        "services": len(summary.services),
        "succeeded": len(ok),
        "failed": {o.service: o.error for o in summary.services if not o.ok},
        "services_per_minute_per_cpu": round(len(ok) / (wall / 60) / cpus, 3) if wall else None,
        "seconds_per_service_mean": round(statistics.mean(seconds), 2) if seconds else None,
        "seconds_per_service_max": round(max(seconds), 2) if seconds else None,
        "cpu_seconds_per_service_mean": round(statistics.mean(cpu), 2) if cpu else None,
        "workers": workers,
        "worker_peak_rss_mb_max": max(worker_peaks) if worker_peaks else None,
        "worker_rss_drift_mb_max": max((w["drift_mb"] for w in workers), default=None),
        "artifact_kib_mean": round(statistics.mean(sizes) / 1024, 1) if sizes else None,
        "per_service": [o.model_dump(mode="json", exclude={"metrics"}) for o in summary.services],
    }


def add_ratios(results: dict[str, dict[str, Any]]) -> list[str]:
    """Ratio of each synthetic run's wall time to the smallest fleet's (same CPUs); returns remarks
    on what does not scale linearly (time, driver memory) and on the issue's aims."""
    remarks: list[str] = []
    by_cpus: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for dataset, runs in results.items():
        if dataset.startswith("synthetic-"):
            for row in runs.values():
                by_cpus.setdefault(row["cpus"], []).append((row["services"], row))
    for cpus, rows in sorted(by_cpus.items()):
        rows.sort(key=lambda item: item[0])
        base_n, base = rows[0]
        for n, row in rows:
            if not base["wall_seconds"] or not row["wall_seconds"]:
                continue
            ratio = row["wall_seconds"] / base["wall_seconds"]
            linearity = ratio / (n / base_n)
            row["base_services"] = base_n
            row["time_ratio_to_base"] = round(ratio, 3)
            row["services_ratio_to_base"] = round(n / base_n, 3)
            row["linearity"] = round(linearity, 3)
            if n != base_n and abs(linearity - 1) > LINEARITY_TOLERANCE:
                kind = "super-linear (per-service cost grows)" if linearity > 1 else "sub-linear"
                remarks.append(
                    f"{n} services on {cpus} CPU(s): time x{ratio:.2f} for services x{n / base_n:.2f} "
                    f"-> {kind}, linearity {linearity:.2f}"
                    + (
                        " (fixed start-up: Ray workers, TensorFlow import, amortised over more services)"
                        if linearity < 1
                        else ""
                    )
                )
        first, last = rows[0][1], rows[-1][1]
        if len(rows) > 1 and first.get("driver_peak_rss_mb") and last.get("driver_peak_rss_mb"):
            growth = last["driver_peak_rss_mb"] - first["driver_peak_rss_mb"]
            flat = "flat" if abs(growth) <= 0.1 * first["driver_peak_rss_mb"] else "NOT flat"
            remarks.append(
                f"driver peak RSS on {cpus} CPU(s): {first['driver_peak_rss_mb']:.0f} MB at {rows[0][0]} services, "
                f"{last['driver_peak_rss_mb']:.0f} MB at {rows[-1][0]} ({growth:+.0f} MB: {flat})"
            )
        for n, row in rows:
            if n == AIM_SERVICES and cpus == AIM_CPUS:
                met = "met" if row["wall_seconds"] < AIM_SECONDS else "NOT met"
                remarks.append(
                    f"aim {AIM_SERVICES} services on {AIM_CPUS} CPUs < {AIM_SECONDS // 60} min: "
                    f"{row['wall_seconds'] / 60:.1f} min, {met}"
                )
    return remarks


def table(results: dict[str, dict[str, Any]]) -> str:
    header = (
        f"{'fleet':<16} {'cpus':>4} {'ok':>7} {'wall s':>8} {'svc/min/cpu':>11} {'s/svc':>7} "
        f"{'workers':>7} {'worker RSS MB (each)':>24} {'drift MB':>8} {'driver MB':>9} "
        f"{'x time':>7} {'x svc':>6} {'linear':>6}"
    )
    lines = [header, "-" * len(header)]
    for fleet, runs in results.items():
        for _, row in sorted(runs.items(), key=lambda item: int(item[0])):
            each = ",".join(f"{w['peak_rss_mb']:.0f}" for w in row["workers"] if w["peak_rss_mb"] is not None)
            ratio = row.get("time_ratio_to_base")
            lines.append(
                f"{fleet:<16} {row['cpus']:>4} {row['succeeded']:>3}/{row['services']:<3} {row['wall_seconds']:>8.1f} "
                f"{row['services_per_minute_per_cpu'] or 0:>11.2f} {row['seconds_per_service_mean'] or 0:>7.1f} "
                f"{len(row['workers']):>7} {each[:24]:>24} {row['worker_rss_drift_mb_max'] or 0:>8.0f} "
                f"{row.get('driver_peak_rss_mb') or 0:>9.0f} "
                f"{f'{ratio:.2f}' if ratio is not None else '-':>7} "
                f"{row.get('services_ratio_to_base', '-'):>6} {row.get('linearity', '-'):>6}"
            )
    return "\n".join(lines)


def run_one(args: argparse.Namespace) -> int:
    """Child process: one fleet run with this process as the Ray driver; writes the row to ``--out``."""
    import psutil

    services = json.loads(Path(args.services_file).read_text())
    overrides = json.loads(args.config_json) if args.config_json else {}
    env_vars = {name: os.environ[name] for name in os.environ if name.startswith("MORA_S3_")}
    env_vars["TF_CPP_MIN_LOG_LEVEL"] = "2"
    rss_before = psutil.Process().memory_info().rss / 2**20
    load_before = os.getloadavg()[0]
    with PeakRssSampler(interval_s=0.5) as driver:
        summary = run_fleet(args.run_one, services, args.cpus_one, env_vars, overrides, args.max_calls)
    row = measure(summary, args.cpus_one)
    row["driver_rss_before_mb"] = round(rss_before, 1)
    row["driver_peak_rss_mb"] = driver.peak_mb
    # The machine may be shared: the 1-minute load average says how contended a run was.
    row["load_average_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    Path(args.out_one).write_text(json.dumps(row))
    return 0


def start_weed(work: Path) -> tuple[WeedServer, MoraSettings, str, str]:
    from mora_platform.storage.object_store import ObjectStore

    key, secret = secrets.token_hex(8), secrets.token_hex(16)
    (work / "weed-data").mkdir(parents=True)
    weed = WeedServer(work / "weed-data", WeedPorts.free(), key, secret, log_path=work / "weed.log")
    weed.start(timeout=90)
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
                weed.stop()
                raise
            time.sleep(0.5)
    return weed, settings, key, secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,30,100", help="synthetic fleet sizes (services)")
    parser.add_argument("--cpus", default="2", help="CPU counts (Ray num_cpus) to run each fleet on")
    parser.add_argument("--fleets", default="synthetic", help="synthetic and/or online-boutique")
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the LSTM epochs (default: config's)"
    )
    parser.add_argument("--config-json", default=None, help="JSON object merged over the training config")
    parser.add_argument(
        "--max-calls",
        type=int,
        default=3,
        help="recycle workers after N services, as `mora retrain` does by default (0 = reuse forever)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: sizes {QUICK['sizes']}, {QUICK['days']} days, overrides {QUICK['overrides']}",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    # internal: one run in this process
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--cpus-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--services-file", help=argparse.SUPPRESS)
    parser.add_argument("--out-one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        return run_one(args)

    overrides: dict[str, Any] = json.loads(args.config_json) if args.config_json else {}
    if args.quick:
        args.sizes, args.days, args.cpus = QUICK["sizes"], QUICK["days"], QUICK["cpus"]
        overrides = {**QUICK["overrides"], **overrides}  # type: ignore[dict-item]
    if args.epochs is not None:
        overrides.setdefault("lstm", {})["epochs"] = args.epochs
    cpu_counts = [int(c) for c in args.cpus.split(",")]
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    fleets = [f.strip() for f in args.fleets.split(",") if f.strip()]

    from mora_platform.storage.object_store import ObjectStore

    work = Path(tempfile.mkdtemp(prefix="mora-bench-"))
    weed, settings, key, secret = start_weed(work)
    results: dict[str, dict[str, Any]] = {}
    try:
        started = time.perf_counter()
        store = ObjectStore.from_settings(settings)
        datasets = write_datasets(store, fleets, sizes, args.days, args.seed)
        print(f"datasets written in {time.perf_counter() - started:.1f} s", flush=True)
        env = {
            **os.environ,
            "MORA_S3_ENDPOINT_URL": settings.s3_endpoint_url,
            "MORA_S3_BUCKET": settings.s3_bucket,
            "MORA_S3_ACCESS_KEY": key,
            "MORA_S3_SECRET_KEY": secret,
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        env.pop("RAY_ADDRESS", None)
        for dataset, services in datasets.items():
            for cpus in cpu_counts:
                print(f"{dataset}: {len(services)} services on {cpus} CPU(s)", flush=True)
                services_file = work / f"{dataset}.services.json"
                services_file.write_text(json.dumps(services))
                part = work / f"{dataset}-{cpus}.json"
                command = [sys.executable, __file__, "--run-one", dataset, "--cpus-one", str(cpus)]
                command += ["--services-file", str(services_file), "--out-one", str(part)]
                command += ["--max-calls", str(args.max_calls)]
                if overrides:
                    command += ["--config-json", json.dumps(overrides)]
                done = subprocess.run(command, env=env, check=False)
                if done.returncode != 0 or not part.is_file():
                    print(f"  run failed (exit code {done.returncode})", flush=True)
                    continue
                results.setdefault(dataset, {})[str(cpus)] = json.loads(part.read_text())
    finally:
        weed.stop()
    remarks = add_ratios(results)
    report = {
        "benchmark": "train_fleet",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "quick": args.quick,
        "config_overrides": overrides,
        "max_calls": args.max_calls,
        "synthetic": {"sizes": sizes, "days": args.days, "step_seconds": 300, "seed": args.seed},
        "results": results,
        "remarks": remarks,
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
    for remark in remarks:
        print(f"- {remark}")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
