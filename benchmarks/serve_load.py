"""Benchmark: the recommendation endpoint under load, three proxy set-ups, plus the in-process floor.

Set-up: a throw-away ``weed`` S3 server on free 127.0.0.1 ports; tiny models trained from the
shared Online Boutique data and published under 10 service names (``bench-00`` .. ``bench-09``;
the trained bundles are reused across names, which changes nothing for serving); then, for each
proxy mode, a fresh single-node Ray head (2 CPUs) with that mode's environment, the app deployed
with one ingress and one model replica, and an aiohttp load generator on the same machine
(keep-alive, closed loop) at concurrency 1, 8 and 32, for single requests and batches of 10.
Kinds: ``single`` repeats one question per service (answered from the per-version memo after the
first time), ``fresh`` sends a new context every time (the model runs for each request), ``batch``
sends 10 services per call. The floor is ``ServiceModel.recommend`` called in-process.

Modes: ``default``; ``throughput`` (RAY_SERVE_THROUGHPUT_OPTIMIZED=1); ``haproxy``
(RAY_SERVE_THROUGHPUT_OPTIMIZED=1 + RAY_SERVE_ENABLE_HA_PROXY=1). Each mode runs in its own
subprocess because Ray Serve reads these variables at import time.

    .venv/bin/python benchmarks/serve_load.py [--duration 8] [--modes default,throughput,haproxy]

Writes ``benchmarks/results/serve_load-<UTC time>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
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

MODES: dict[str, dict[str, str]] = {
    "default": {},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}
N_SERVICES = 10
BATCH_SIZE = 10
FRESH_CONTEXTS = 3000  # per service, above serve.model_slots.ANSWER_CACHE_SIZE
CONCURRENCY = (1, 8, 32)
TINY_CONFIG: dict[str, Any] = {
    "seq_len": 8,
    "lstm": {"units": [8], "dense_units": 4, "epochs": 2, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 16},
    "seed": 0,
}
CONTEXT = {"load_users": 50, "replica_count": 2}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(latencies: list[float], elapsed: float, errors: int, per_request: int) -> dict[str, Any]:
    ms = [value * 1000 for value in latencies]
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "recommendations_per_s": round(len(latencies) * per_request / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


# ---- set-up: S3, models ----------------------------------------------------------------------


def shared_data_dir() -> Path:
    env = os.environ.get("MORA_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "online-boutique"
    if not path.is_dir():
        raise SystemExit(f"shared Online Boutique data not found at {path} (set MORA_SHARED_DATA)")
    return path


def train_bundles(root: Path, sources: list[str]) -> dict[str, Path]:
    """source service -> trained bundle directory (tiny config, 6 browsing experiments each)."""
    from mora_platform.data.loaders import load_path
    from mora_platform.training.config import TrainingConfig
    from mora_platform.training.service_trainer import train_service

    config = TrainingConfig.model_validate(TINY_CONFIG)
    bundles = {}
    for source in sources:
        csv_dir = root / f"csv-{source}"
        csv_dir.mkdir()
        for path in sorted(shared_data_dir().glob(f"{source}_browsing_*.csv"))[:6]:
            shutil.copy(path, csv_dir / path.name)
        out = root / f"bundle-{source}"
        out.mkdir()
        started = time.perf_counter()
        train_service(load_path(csv_dir).frame, source, config, out)
        print(f"trained {source} in {time.perf_counter() - started:.1f} s", flush=True)
        bundles[source] = out
    return bundles


def measure_floor(bundle: Path, calls: int) -> dict[str, Any]:
    """``ServiceModel.recommend`` in-process, sequential: the cost of the model alone."""
    from mora_platform.training.bundle import ServiceModel

    model = ServiceModel.load(bundle)
    for _ in range(20):
        model.recommend(None, CONTEXT, model_version="floor")
    latencies = []
    started = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        model.recommend(None, CONTEXT, model_version="floor")
        latencies.append(time.perf_counter() - t0)
    return summarize(latencies, time.perf_counter() - started, 0, 1)


# ---- one proxy mode (runs in a subprocess) ---------------------------------------------------


async def run_load(
    url: str, bodies: list[bytes], concurrency: int, duration: float, per_request: int
) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` clients posting ``bodies`` in turn for ``duration`` s."""
    import aiohttp

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = loop.time() + duration

        async def client(offset: int) -> None:
            nonlocal errors
            turn = offset
            while loop.time() < stop_at:
                body = bodies[turn % len(bodies)]
                turn += concurrency
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, elapsed, errors, per_request)


def start_ray_head(temp_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    ports = {
        "port": free_port(),
        "node-manager-port": free_port(),
        "object-manager-port": free_port(),
        "ray-client-server-port": free_port(),
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "runtime-env-agent-port": free_port(),
        "metrics-export-port": free_port(),
    }
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
    ]
    command += [f"--{name}={port}" for name, port in ports.items()]
    command += ["--min-worker-port=0", "--max-worker-port=0", "--num-cpus=2", "--include-dashboard=false"]
    command += ["--disable-usage-stats", f"--temp-dir={temp_dir}"]
    log_path = temp_dir / "ray-start.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while b"Ray runtime started" not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"Ray head did not start; log {log_path}")
        time.sleep(0.5)
    return process, f"127.0.0.1:{ports['port']}"


def stop_ray_head(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def run_mode(registry_prefix: str, duration: float, out: Path) -> None:
    """Deploy on a fresh cluster (this process's env selects the mode) and measure."""
    import httpx
    import ray
    from ray import serve

    from mora_platform.settings import MoraSettings
    from serve.app import ServeAppArgs, compose_app

    settings = MoraSettings(serve_token=None)  # type: ignore[call-arg]
    services = [f"bench-{i:02d}" for i in range(N_SERVICES)]
    temp_dir = Path(tempfile.mkdtemp(prefix="mora-bench-ray-", dir="/tmp"))
    process, address = start_ray_head(temp_dir)
    results: dict[str, Any] = {}
    try:
        ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = ServeAppArgs(registry_prefix=registry_prefix, reload_interval_s=10.0, request_timeout_s=30.0)
        started = time.perf_counter()
        serve.run(compose_app(args, settings), name="mora", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("endpoint never became healthy")
            time.sleep(0.5)
        results["deploy_seconds"] = round(time.perf_counter() - started, 1)
        cold = []
        for service in services:  # first request per service loads its model (S3 fetch + verify + load)
            t0 = time.perf_counter()
            response = httpx.post(
                f"{base}/v1/recommendations", json={"service": service, "context": CONTEXT}, timeout=60
            )
            response.raise_for_status()
            cold.append(time.perf_counter() - t0)
        results["cold_load_ms"] = {
            "p50": round(statistics.median(cold) * 1000, 1),
            "max": round(max(cold) * 1000, 1),
        }
        single = [json.dumps({"service": s, "context": CONTEXT}).encode() for s in services]
        batch = [
            json.dumps(
                {"requests": [{"service": s, "context": CONTEXT} for s in services[:BATCH_SIZE]]}
            ).encode()
        ]
        asyncio.run(run_load(f"{base}/v1/recommendations", single, 8, 2.0, 1))  # warm-up
        # Distinct contexts, more than the per-version memo holds: every request runs the model.
        fresh = [
            json.dumps({"service": s, "context": {"load_users": 1 + n * 0.25, "replica_count": 2}}).encode()
            for n in range(FRESH_CONTEXTS)
            for s in services
        ]
        runs = []
        for kind, path, bodies, per_request in (
            ("single", "/v1/recommendations", single, 1),
            ("fresh", "/v1/recommendations", fresh, 1),
            ("batch", "/v1/recommendations:batch", batch, BATCH_SIZE),
        ):
            for concurrency in CONCURRENCY:
                load_before = round(os.getloadavg()[0], 2)
                summary = asyncio.run(run_load(f"{base}{path}", bodies, concurrency, duration, per_request))
                runs.append(
                    {"kind": kind, "concurrency": concurrency, **summary, "load_avg_1m_before": load_before}
                )
                print(
                    f"  {kind:6} c={concurrency:<3} {summary['rps']:>8.1f} rps  p50 {summary['p50_ms']:.1f} ms  "
                    f"p99 {summary['p99_ms']:.1f} ms  errors {summary['errors']}",
                    flush=True,
                )
        results["runs"] = runs
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            stop_ray_head(process)
            shutil.rmtree(temp_dir, ignore_errors=True)
    out.write_text(json.dumps(results, indent=2))


# ---- orchestration ---------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    floor = report["floor"]
    print(
        f"\nin-process floor (ServiceModel.recommend): p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms, "
        f"{floor['rps']} calls/s on one thread"
    )
    header = f"{'mode':11} {'kind':6} {'conc':>4} {'req/s':>8} {'recs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(header)
    print("-" * len(header))
    for mode, result in report["modes"].items():
        if "error" in result:
            print(f"{mode:11} failed: {result['error']}")
            continue
        for run in result["runs"]:
            print(
                f"{mode:11} {run['kind']:6} {run['concurrency']:>4} {run['rps']:>8.1f} {run['recommendations_per_s']:>8.1f} "
                f"{run['p50_ms']:>8.2f} {run['p95_ms']:>8.2f} {run['p99_ms']:>8.2f} {run['errors']:>6}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="Seconds per load run")
    parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated: " + ", ".join(MODES))
    parser.add_argument(
        "--train", default="frontend,cartservice", help="Services to train (bundles reused over 10 names)"
    )
    parser.add_argument("--floor-calls", type=int, default=500)
    parser.add_argument("--run-mode", help=argparse.SUPPRESS)  # internal: measure one mode in this process
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.run_mode:
        run_mode(options.prefix, options.duration, options.out)
        return

    modes = [m.strip() for m in options.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")

    from pydantic import SecretStr

    from infra.local.weed import WeedPorts, WeedServer
    from mora_platform.registry import ModelRegistry
    from mora_platform.settings import MoraSettings
    from mora_platform.storage.object_store import ObjectStore

    root = Path(tempfile.mkdtemp(prefix="mora-serve-bench-"))
    access_key, secret_key = secrets.token_hex(8), secrets.token_hex(20)
    weed = WeedServer(root / "weed" / "data", WeedPorts.free(), access_key, secret_key)
    weed.start()
    try:
        settings = MoraSettings(  # type: ignore[call-arg]
            s3_endpoint_url=weed.endpoint_url,
            s3_bucket="bench",
            s3_access_key=SecretStr(access_key),
            s3_secret_key=SecretStr(secret_key),
        )
        store = ObjectStore.from_settings(settings)
        store.ensure_bucket()
        prefix = "models"
        registry = ModelRegistry(store, prefix=prefix)
        bundles = list(
            train_bundles(root, [s.strip() for s in options.train.split(",") if s.strip()]).values()
        )
        for index in range(N_SERVICES):
            registry.publish(f"bench-{index:02d}", bundles[index % len(bundles)], metadata={"metrics": {}})
        report: dict[str, Any] = {
            "created_at": datetime.now(UTC).isoformat(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "load_avg_1m_at_start": round(os.getloadavg()[0], 2),  # other work on the machine
            },
            "setup": {
                "services": N_SERVICES,
                "batch_size": BATCH_SIZE,
                "duration_s": options.duration,
                "replicas": {"RecommendationIngress": 1, "ServiceModels": 1},
                "ray_num_cpus": 2,
                "client": "aiohttp, keep-alive, closed loop, same machine",
            },
            "floor": measure_floor(bundles[0], options.floor_calls),
            "modes": {},
        }
        print(f"floor: {report['floor']}", flush=True)
        for mode in modes:
            print(f"mode {mode}", flush=True)
            part = root / f"{mode}.json"
            # HAProxy's admin socket path must stay under 97 bytes, and Ray nests a hash dir in it.
            haproxy_dir = Path(tempfile.mkdtemp(prefix="mhp-", dir="/tmp"))
            env = {
                **os.environ,
                **MODES[mode],
                "MORA_S3_ENDPOINT_URL": weed.endpoint_url,
                "MORA_S3_BUCKET": "bench",
                "MORA_S3_ACCESS_KEY": access_key,
                "MORA_S3_SECRET_KEY": secret_key,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": secrets.token_hex(32),
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy_dir / "haproxy.cfg"),
                "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy_dir / "admin.sock"),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy_dir),
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy_dir / "server-state"),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
                "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            }
            env.pop("RAY_ADDRESS", None)
            command = [sys.executable, __file__, "--run-mode", mode, "--prefix", prefix]
            command += ["--duration", str(options.duration), "--out", str(part)]
            result = subprocess.run(command, env=env, check=False)
            shutil.rmtree(haproxy_dir, ignore_errors=True)
            if result.returncode == 0 and part.is_file():
                report["modes"][mode] = {"env": MODES[mode], **json.loads(part.read_text())}
            else:
                report["modes"][mode] = {"env": MODES[mode], "error": f"exit code {result.returncode}"}
    finally:
        weed.stop()
        shutil.rmtree(root, ignore_errors=True)

    results_dir = REPO / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"serve_load-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
