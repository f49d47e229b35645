"""Benchmark: the recommendation endpoint under load, three proxy set-ups, plus the in-process floor.

Set-up: a throw-away ``weed`` S3 server on free 127.0.0.1 ports (its Prometheus metrics on, to count
S3 requests); ONE tiny model trained from the shared Online Boutique data and published, signed
(``MORA_SIGNING_KEY``, a fresh one per run), under ``--services`` names (``bench-0000`` ..; every copy
is a complete version published through ``ModelRegistry.publish``); then, for each proxy mode, a
fresh single-node Ray head (2 CPUs) with that mode's environment, the app deployed with
``--replicas`` (default one) ingress and model replica, each model replica holding at most ``--lru``
models (``MORA_SERVE_MAX_MODELS_PER_REPLICA``, below the fleet size), and an aiohttp load generator
on the same machine (keep-alive, closed loop).

Phases per mode: (0) the start-up reads: each ingress replica reads the service list as it starts (the
first read verifies every service: seconds at 1,000), measured as the S3 requests until the store has been
quiet for 3 s, and waited for, so what follows is the steady state; (1) ``--lru`` sequential first requests (cold loads: S3 fetch + verify + load) with
the model replica's RSS before and after, giving memory per loaded model; (2) ``zipf``: requests whose
service follows a Zipf law (weight 1/rank^s, ``--zipf-s``) over the whole fleet, at each concurrency,
answers split into warm and cold (cold: the replica had to load the model for it; decided by replaying
the replica's LRU over the requests in the order they were sent, exact with one model replica), with
S3 requests per second; (3) ``GET /v1/services`` three times (first, at once again, after the
ingress's 5 s cache expired) with the S3 requests (and LISTs) each call caused; (4) the fixed kinds on
the 10 hottest services: ``single`` repeats one question per service (answered from the per-version memo
after the first time, and from the ingress's answer cache when it is on), ``fresh`` sends a new context
every time (the model runs for each request, never a cache hit),
``batch`` sends 10 services per call. The floor is ``ServiceModel.recommend`` called in-process.

Modes: ``default``; ``throughput`` (RAY_SERVE_THROUGHPUT_OPTIMIZED=1); ``haproxy``
(RAY_SERVE_THROUGHPUT_OPTIMIZED=1 + RAY_SERVE_ENABLE_HA_PROXY=1). Each mode runs in its own
subprocess because Ray Serve reads these variables at import time.

The ingress's answer cache (``serve.answer_cache``) is on at the app's default TTL unless
``--answer-cache-ttl`` says otherwise; ``--answer-cache-ttl 0,2`` measures every mode with the cache
off and with a 2 s TTL (rows ``haproxy/ttl=0``, ``haproxy/ttl=2``). The share of answers that came from
the cache (``X-Mora-Cache: hit``) is reported per run; a hit counts as warm (it loads no model). With
the cache on, the LRU replay that splits warm from cold is approximate: a hit does not touch the model
replica's LRU, the replay does.

    .venv/bin/python benchmarks/serve_load.py --services 1000 --lru 64 [--duration 8] [--modes default,haproxy]
    .venv/bin/python benchmarks/serve_load.py --services 1000 --lru 64 --modes haproxy --answer-cache-ttl 0,2
    .venv/bin/python benchmarks/serve_load.py --services 20 --lru 8 --duration 3 --modes default  # small

Writes ``benchmarks/results/serve_load-<UTC time>.json`` and prints a table.

``--services-only`` measures just what ``GET /v1/services`` costs the registry, in-process (no Ray,
no training): ``--services`` copies of a synthetic bundle shaped like the trained one (11 files,
~350 kB) on a fresh weed server, then ``ServableVersions.catalog`` (what the ingress's refresh runs)
first, again with nothing changed, after one service published a new version and after one file
was tampered with; and, for comparison, the per-service verification every refresh did before
(resolve LATEST, verify down to a servable version, read its manifest). Prints S3 requests by type
and time per refresh; writes ``benchmarks/results/serve_services-<UTC time>.json``.

    .venv/bin/python benchmarks/serve_load.py --services-only --services 1000
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
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
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
HOT_SERVICES = 10  # the fixed kinds (single, fresh, batch) use the 10 hottest services
BATCH_SIZE = 10
FRESH_CONTEXTS = 3000  # per service, above serve.model_slots.ANSWER_CACHE_SIZE
KINDS = ("zipf", "single", "fresh", "batch")
SERVICES_TTL_S = 5.0  # serve.ingress.SERVICES_TTL_S (not imported: that would import Ray Serve here)
#: The issue's aims (printed as met / NOT met).
AIM_WARM_P50_MS, AIM_WARM_P99_MS, AIM_COLD_LOAD_MS = 5.0, 100.0, 250.0
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


def service_name(index: int) -> str:
    return f"bench-{index:04d}"


CACHE_HEADER = "X-Mora-Cache"  # serve.answer_cache.CACHE_HEADER (not imported, as SERVICES_TTL_S)


def summarize(
    latencies: list[float], elapsed: float, errors: int, per_request: int, hits: int | None = None
) -> dict[str, Any]:
    """Latency percentiles; ``hits``: answers marked ``X-Mora-Cache: hit`` (None: the header never came)."""
    ms = [value * 1000 for value in latencies]
    cache = {} if hits is None else {"cache_hits": hits, "cache_hit_share": round(hits / max(1, len(ms)), 3)}
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
        **cache,
    }


# ---- set-up: S3, models ----------------------------------------------------------------------


def metrics_weed(data_dir: Path, access_key: str, secret_key: str, metrics_port: int) -> Any:
    """A throw-away ``WeedServer`` that also serves Prometheus metrics on ``metrics_port``."""
    from infra.local.weed import WeedPorts, WeedServer

    class MetricsWeedServer(WeedServer):
        def command(self) -> list[str]:
            return [*super().command(), f"-metricsPort={metrics_port}", f"-metricsIp={self.host}"]

    return MetricsWeedServer(data_dir, WeedPorts.free(), access_key, secret_key)


def s3_requests(metrics_url: str | None, bucket: str = "bench") -> dict[str, int]:
    """S3 requests the weed gateway served on ``bucket`` so far, by type (GET, PUT, LIST, ...)."""
    if not metrics_url:
        return {}
    import httpx

    counts: dict[str, int] = {}
    try:
        text = httpx.get(metrics_url, timeout=10).text
    except httpx.HTTPError:
        return {}
    for line in text.splitlines():
        if not line.startswith("SeaweedFS_s3_request_total{") or f'bucket="{bucket}"' not in line:
            continue
        labels, _, value = line.rpartition(" ")
        kind = labels.split('type="', 1)[1].split('"', 1)[0] if 'type="' in labels else "?"
        counts[kind] = counts.get(kind, 0) + int(float(value))
    return counts


def s3_delta(before: dict[str, int], after: dict[str, int], seconds: float | None = None) -> dict[str, Any]:
    delta = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in sorted(set(before) | set(after))}
    delta = {kind: count for kind, count in delta.items() if count}
    result: dict[str, Any] = {"requests": sum(delta.values()), "by_type": delta}
    if seconds:
        result["per_s"] = round(result["requests"] / seconds, 1)
    return result


def settle_s3(metrics_url: str | None, quiet_s: float = 3.0, timeout_s: float = 180.0) -> dict[str, Any]:
    """Wait until the S3 server has seen no request for ``quiet_s`` (at most ``timeout_s``); the
    requests and seconds until then. The model replicas' LATEST checks (two GETs per loaded service
    every reload interval) do not count as activity: none is loaded yet."""
    if not metrics_url:
        return {}
    started = time.monotonic()
    first = last = s3_requests(metrics_url)
    quiet_since = time.monotonic()
    while time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        now = s3_requests(metrics_url)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
    seconds = max(quiet_since - started, 0.0)
    return {
        **s3_delta(first, last),
        "seconds": round(seconds, 1),
        "settled": last == s3_requests(metrics_url),
    }


def publish_copies(registry: Any, bundle: Path, count: int, threads: int = 8) -> float:
    """Publish ``bundle`` under ``count`` service names (signed, complete versions); returns seconds."""
    started = time.perf_counter()

    def one(index: int) -> None:
        registry.publish(service_name(index), bundle, metadata={"metrics": {}})

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for done, _ in enumerate(pool.map(one, range(count)), start=1):
            if done % 200 == 0:
                print(f"  published {done}/{count}", flush=True)
    return time.perf_counter() - started


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
    hits: int | None = None
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = loop.time() + duration

        async def client(offset: int) -> None:
            nonlocal errors, hits
            turn = offset
            while loop.time() < stop_at:
                body = bodies[turn % len(bodies)]
                turn += concurrency
                t0 = time.perf_counter()
                cached = None
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                        cached = response.headers.get(CACHE_HEADER)
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                    if cached is not None:
                        hits = (hits or 0) + (cached == "hit")
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summarize(latencies, elapsed, errors, per_request, hits)


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


class ZipfTraffic:
    """Services drawn with weight 1/rank^s, and the model replica's LRU replayed in send order.

    A request is *cold* when its service is not in the replayed LRU (the replica loads the model
    for it, evicting the least recently used one when full) or is still being loaded for an
    earlier request (it waits for that load); otherwise *warm*. Exact with one model replica.
    """

    def __init__(self, services: list[str], s: float, lru_size: int, seed: int, loaded: list[str]) -> None:
        import numpy as np

        weights = 1.0 / np.arange(1, len(services) + 1) ** s
        self._p = weights / weights.sum()
        self._rng = np.random.default_rng(seed)
        self._draws: list[int] = []
        self.services = services
        self.lru_size = lru_size
        self.lru: OrderedDict[str, bool] = OrderedDict((service, True) for service in loaded[-lru_size:])
        self.bodies = {svc: json.dumps({"service": svc, "context": CONTEXT}).encode() for svc in services}

    def top_share(self, k: int) -> float:
        """The share of requests that go to the ``k`` most requested services."""
        return float(self._p[:k].sum())

    def next(self) -> tuple[str, bool]:
        if not self._draws:
            self._draws = self._rng.choice(len(self.services), size=10_000, p=self._p).tolist()
        service = self.services[self._draws.pop()]
        ready = self.lru.get(service)
        if ready is None:
            self.lru[service] = False
            while len(self.lru) > self.lru_size:
                self.lru.popitem(last=False)
            return service, True
        self.lru.move_to_end(service)
        return service, not ready

    def answered(self, service: str) -> None:
        if service in self.lru:
            self.lru[service] = True


async def run_zipf_load(url: str, traffic: ZipfTraffic, concurrency: int, duration: float) -> dict[str, Any]:
    """Closed-loop Zipf load; latencies of warm and cold answers summarised apart."""
    import aiohttp

    loop = asyncio.get_running_loop()
    warm: list[float] = []
    cold: list[float] = []
    hit: list[float] = []  # of the warm ones, answered from the ingress's cache
    header_seen = False
    errors = 0
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = loop.time() + duration

        async def client() -> None:
            nonlocal errors, header_seen
            while loop.time() < stop_at:
                service, is_cold = traffic.next()
                t0 = time.perf_counter()
                cached = None
                try:
                    async with session.post(url, data=traffic.bodies[service], headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                        cached = response.headers.get(CACHE_HEADER)
                except aiohttp.ClientError:
                    ok = False
                traffic.answered(service)
                if ok:
                    seconds = time.perf_counter() - t0
                    header_seen = header_seen or cached is not None
                    if cached == "hit":  # no model call, so no model load either: warm
                        hit.append(seconds)
                    (cold if is_cold and cached != "hit" else warm).append(seconds)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    hits = len(hit) if header_seen else None
    total = summarize(warm + cold, elapsed, errors, 1, hits)
    return {
        **total,
        "cold_share": round(len(cold) / max(1, len(warm) + len(cold)), 3),
        "warm": summarize(warm, elapsed, 0, 1, hits),
        "cold": summarize(cold, elapsed, 0, 1),
        **({"hit": summarize(hit, elapsed, 0, 1)} if header_seen else {}),
    }


def replica_pids(head: subprocess.Popen[bytes], name: str) -> list[int]:
    """PIDs of this cluster's Serve replicas of deployment ``name`` (descendants of the head)."""
    import psutil

    pids = []
    for child in psutil.Process(head.pid).children(recursive=True):
        try:
            if f"ServeReplica:mora:{name}" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def hit_text(summary: dict[str, Any]) -> str:
    share = summary.get("cache_hit_share")
    return "" if share is None else f"  cache hits {share * 100:.1f}%"


def hit_cell(run: dict[str, Any]) -> str:
    """The cache hit share for a table (-: no ``X-Mora-Cache`` header, the cache is off)."""
    share = run.get("cache_hit_share")
    return f"{'-':>6}" if share is None else f"{share * 100:>5.1f}%"


def rss_mb(pids: list[int]) -> float | None:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return None
    return round(total / 2**20, 1) if pids else None


def run_mode(options: argparse.Namespace) -> None:
    """Deploy on a fresh cluster (this process's env selects the mode) and measure."""
    import httpx
    import ray
    from ray import serve

    from mora_platform.settings import MoraSettings
    from serve.app import ServeAppArgs, compose_app

    settings = MoraSettings(serve_token=None)  # type: ignore[call-arg]
    services = [service_name(i) for i in range(options.services)]
    lru = options.lru
    concurrency = [int(c) for c in options.concurrency.split(",")]
    kinds = [k.strip() for k in options.kinds.split(",") if k.strip()]
    metrics_url = options.s3_metrics
    temp_dir = Path(tempfile.mkdtemp(prefix="mora-bench-ray-", dir="/tmp"))
    process, address = start_ray_head(temp_dir)
    results: dict[str, Any] = {}
    try:
        ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = ServeAppArgs(registry_prefix=options.prefix, reload_interval_s=10.0, request_timeout_s=30.0)
        if options.answer_cache_ttl:
            args = args.model_copy(update={"answer_cache_ttl_s": float(options.answer_cache_ttl)})
        results["answer_cache_ttl_s"] = args.answer_cache_ttl_s
        started = time.perf_counter()
        app = compose_app(args, settings, replicas=options.replicas)
        serve.run(app, name="mora", route_prefix="/", blocking=False)
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
        url = f"{base}/v1/recommendations"
        # (0) each ingress replica reads the service list as it starts (a first read verifies every
        # service): measured apart, and waited for, so the phases below measure the steady state
        results["startup_reads"] = settle_s3(metrics_url)
        print(f"  start-up reads (service list, per ingress replica): {results['startup_reads']}", flush=True)

        # (1) cold loads, one after another, and the model replica's memory per loaded model
        replicas = replica_pids(process, "ServiceModels")
        memory: dict[str, Any] = {"replica_pids": replicas, "rss_mb_before": rss_mb(replicas)}
        cold = []
        s3_before = s3_requests(metrics_url)
        for index, service in enumerate(services[:lru]):
            t0 = time.perf_counter()
            response = httpx.post(url, json={"service": service, "context": CONTEXT}, timeout=60)
            response.raise_for_status()
            cold.append(time.perf_counter() - t0)
            if index == 0:
                memory["rss_mb_after_1"] = rss_mb(replicas)
        memory["rss_mb_after_lru"] = rss_mb(replicas)
        memory["models_loaded"] = min(lru, len(services))
        loads = len(cold)
        if loads > 1 and memory["rss_mb_after_1"] and memory["rss_mb_after_lru"]:
            # the first load also imports TensorFlow: per model from the 2nd on
            growth = memory["rss_mb_after_lru"] - memory["rss_mb_after_1"]
            memory["mb_per_model"] = round(growth / (loads - 1) / max(1, len(replicas)), 2)
        results["memory"] = memory
        later = cold[1:] or cold
        results["cold_load_ms"] = {
            "first": round(cold[0] * 1000, 1),
            "p50": round(percentile(later, 50) * 1000, 1),
            "p99": round(percentile(later, 99) * 1000, 1),
            "max": round(max(later) * 1000, 1),
            "loads": loads,
            "s3": s3_delta(s3_before, s3_requests(metrics_url)),
        }
        print(f"  cold loads: {results['cold_load_ms']}  memory: {memory}", flush=True)

        runs = []
        # (2) Zipf traffic over the whole fleet, warm and cold answers apart
        if "zipf" in kinds:
            traffic = ZipfTraffic(services, options.zipf_s, lru, options.seed, services[:lru])
            results["zipf"] = {
                "s": options.zipf_s,
                "share_of_top_lru": round(traffic.top_share(lru), 3),
                "share_of_top_10": round(traffic.top_share(HOT_SERVICES), 3),
            }
            asyncio.run(run_zipf_load(url, traffic, max(concurrency), 2.0))  # warm-up, same LRU replay
            for conc in concurrency:
                load_before = round(os.getloadavg()[0], 2)
                s3_before = s3_requests(metrics_url)
                summary = asyncio.run(run_zipf_load(url, traffic, conc, options.duration))
                summary["s3"] = s3_delta(s3_before, s3_requests(metrics_url), summary["seconds"])
                runs.append(
                    {"kind": "zipf", "concurrency": conc, **summary, "load_avg_1m_before": load_before}
                )
                warm, cold_run = summary["warm"], summary["cold"]
                print(
                    f"  zipf   c={conc:<3} {summary['rps']:>8.1f} rps  warm p50 {warm['p50_ms']:.1f} "
                    f"p99 {warm['p99_ms']:.1f} ms ({warm['requests']})  cold p50 {cold_run['p50_ms']:.1f} "
                    f"p99 {cold_run['p99_ms']:.1f} ms ({cold_run['requests']})  "
                    f"S3 {summary['s3'].get('per_s', 0)}/s  errors {summary['errors']}{hit_text(summary)}",
                    flush=True,
                )

        # (3) GET /v1/services: does it list the bucket on every call?
        listing = []
        for label, wait in (("first", 0.0), ("again", 0.0), ("after ingress cache", SERVICES_TTL_S + 1)):
            time.sleep(wait)
            s3_before = s3_requests(metrics_url)
            t0 = time.perf_counter()
            response = httpx.get(f"{base}/v1/services", timeout=900)
            seconds = time.perf_counter() - t0
            count = len(response.json().get("services", [])) if response.status_code == 200 else None
            delta = s3_delta(s3_before, s3_requests(metrics_url))
            listing.append(
                {
                    "call": label,
                    "status": response.status_code,
                    "ms": round(seconds * 1000, 1),
                    "services": count,
                    "s3": delta,
                }
            )
            print(
                f"  GET /v1/services ({label}): {response.status_code} {seconds * 1000:.0f} ms, "
                f"{count} services, S3 {delta['requests']} requests ({delta['by_type'].get('LIST', 0)} LIST)",
                flush=True,
            )
        results["list_services"] = listing

        # (4) the fixed kinds on the hottest services
        hot = services[:HOT_SERVICES]
        single = [json.dumps({"service": s, "context": CONTEXT}).encode() for s in hot]
        batch = [
            json.dumps({"requests": [{"service": s, "context": CONTEXT} for s in hot[:BATCH_SIZE]]}).encode()
        ]
        fixed = [k for k in kinds if k != "zipf"]
        if fixed:
            asyncio.run(run_load(url, single, 8, 2.0, 1))  # warm-up
        # Distinct contexts, more than the per-version memo holds: every request runs the model.
        fresh = [
            json.dumps({"service": s, "context": {"load_users": 1 + n * 0.25, "replica_count": 2}}).encode()
            for n in range(FRESH_CONTEXTS)
            for s in hot
        ]
        table = {
            "single": ("/v1/recommendations", single, 1),
            "fresh": ("/v1/recommendations", fresh, 1),
            "batch": ("/v1/recommendations:batch", batch, BATCH_SIZE),
        }
        sent_fresh = 0
        for kind in fixed:
            path, bodies, per_request = table[kind]
            for conc in concurrency:
                load_before = round(os.getloadavg()[0], 2)
                if kind == "fresh":  # start past the bodies earlier runs sent: none is in the answer cache
                    start = sent_fresh % len(bodies)
                    bodies = bodies[start:] + bodies[:start]
                summary = asyncio.run(run_load(f"{base}{path}", bodies, conc, options.duration, per_request))
                if kind == "fresh":
                    sent_fresh = summary["requests"] + summary["errors"]
                runs.append({"kind": kind, "concurrency": conc, **summary, "load_avg_1m_before": load_before})
                print(
                    f"  {kind:6} c={conc:<3} {summary['rps']:>8.1f} rps  p50 {summary['p50_ms']:.1f} ms  "
                    f"p99 {summary['p99_ms']:.1f} ms  errors {summary['errors']}{hit_text(summary)}",
                    flush=True,
                )
        results["runs"] = runs
        memory["rss_mb_at_end"] = rss_mb(replicas)
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            stop_ray_head(process)
            shutil.rmtree(temp_dir, ignore_errors=True)
    Path(options.out).write_text(json.dumps(results, indent=2))


# ---- orchestration ---------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    floor = report["floor"]
    setup = report["setup"]
    print(
        f"\n{setup['services']} services, LRU {setup['lru_models_per_replica']} models per replica, "
        f"{setup['replicas']} replica(s) per deployment, Zipf s={setup['zipf_s']}"
    )
    print(
        f"in-process floor (ServiceModel.recommend): p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms, "
        f"{floor['rps']} calls/s on one thread"
    )
    header = (
        f"{'mode':18} {'kind':6} {'conc':>4} {'req/s':>8} {'recs/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} {'hit %':>6}"
    )
    print(header)
    print("-" * len(header))
    for mode, result in report["modes"].items():
        if "error" in result:
            print(f"{mode:18} failed: {result['error']}")
            continue
        for run in result["runs"]:
            print(
                f"{mode:18} {run['kind']:6} {run['concurrency']:>4} {run['rps']:>8.1f} "
                f"{run['recommendations_per_s']:>8.1f} {run['p50_ms']:>8.2f} {run['p95_ms']:>8.2f} "
                f"{run['p99_ms']:>8.2f} {run['errors']:>6} {hit_cell(run)}"
            )
    header = (
        f"{'mode':18} {'conc':>4} {'req/s':>8} {'warm p50':>9} {'warm p99':>9} {'warm n':>7} "
        f"{'cold p50':>9} {'cold p99':>9} {'cold n':>7} {'cold %':>7} {'S3 req/s':>9} {'hit %':>6}"
    )
    print("\nZipf traffic, warm and cold answers (ms)")
    print(header)
    print("-" * len(header))
    for mode, result in report["modes"].items():
        for run in result.get("runs", []):
            if run["kind"] != "zipf":
                continue
            warm, cold = run["warm"], run["cold"]
            print(
                f"{mode:18} {run['concurrency']:>4} {run['rps']:>8.1f} {warm['p50_ms']:>9.2f} {warm['p99_ms']:>9.2f} "
                f"{warm['requests']:>7} {cold['p50_ms']:>9.1f} {cold['p99_ms']:>9.1f} {cold['requests']:>7} "
                f"{run['cold_share'] * 100:>6.1f}% {run['s3'].get('per_s', 0):>9.1f} {hit_cell(run)}"
            )
    print()
    for mode, result in report["modes"].items():
        if "error" in result:
            continue
        loads, memory = result["cold_load_ms"], result["memory"]
        startup = result.get("startup_reads") or {}
        if startup:
            print(
                f"{mode}: start-up reads of the service list (every ingress replica): {startup['requests']} S3 "
                f"requests over {startup['seconds']} s, waited for before the phases"
            )
        print(
            f"{mode}: cold load (sequential, {loads['loads']} models) first {loads['first']} ms, then p50 "
            f"{loads['p50']} ms, p99 {loads['p99']} ms, max {loads['max']} ms, "
            f"{loads['s3']['requests'] / max(1, loads['loads']):.1f} S3 requests per load; "
            f"model replica RSS {memory.get('rss_mb_before')} MB -> {memory.get('rss_mb_after_1')} MB (1 model) "
            f"-> {memory.get('rss_mb_after_lru')} MB ({memory['models_loaded']}): "
            f"{memory.get('mb_per_model')} MB per loaded model per replica"
        )
        for call in result["list_services"]:
            print(
                f"{mode}: GET /v1/services ({call['call']}): {call['ms']} ms, {call['services']} services, "
                f"{call['s3']['requests']} S3 requests ({call['s3']['by_type'].get('LIST', 0)} LIST)"
            )
        for line in aims(result):
            print(f"{mode}: {line}")


def aims(result: dict[str, Any]) -> list[str]:
    """The issue's aims, met or not, for one mode."""
    lines = []
    zipf = [run for run in result.get("runs", []) if run["kind"] == "zipf"]
    if zipf:
        top = max(zipf, key=lambda run: run["concurrency"])
        warm = top["warm"]
        met = warm["p50_ms"] < AIM_WARM_P50_MS and warm["p99_ms"] < AIM_WARM_P99_MS
        lines.append(
            f"aim warm p50 < {AIM_WARM_P50_MS:g} ms and p99 < {AIM_WARM_P99_MS:g} ms at c={top['concurrency']}: "
            f"{warm['p50_ms']} / {warm['p99_ms']} ms, {'met' if met else 'NOT met'}"
        )
    loads = result["cold_load_ms"]
    lines.append(
        f"aim cold loads < {AIM_COLD_LOAD_MS:g} ms: p50 {loads['p50']} ms, max {loads['max']} ms "
        f"(sequential), {'met' if loads['max'] < AIM_COLD_LOAD_MS else 'NOT met'}"
    )
    return lines


def synthetic_bundle(directory: Path, files: int = 11, total_bytes: int = 350_000) -> Path:
    """A bundle shaped like the trained one (``files`` files, ~``total_bytes``): the registry's
    request counts depend on the file count, not on what the files hold."""
    directory.mkdir(parents=True)
    small = 2_000
    (directory / "model.bin").write_bytes(secrets.token_bytes(max(1, total_bytes - small * (files - 1))))
    for index in range(files - 1):
        (directory / f"part-{index:02d}.json").write_text(json.dumps({"part": index, "pad": "x" * small}))
    return directory


def run_services_only(options: argparse.Namespace) -> None:
    """S3 requests and time of one service-list refresh over ``--services`` services, before/after."""
    from pydantic import SecretStr

    from mora_platform.registry import (
        ArtifactIntegrityError,
        ModelNotFoundError,
        ModelRegistry,
        ServableVersions,
    )
    from mora_platform.settings import MoraSettings
    from mora_platform.storage.object_store import ObjectStore

    load_at_start = round(os.getloadavg()[0], 2)  # other work on the machine
    os.environ["MORA_SIGNING_KEY"] = secrets.token_hex(32)
    os.environ.pop("MORA_ACCEPT_UNSIGNED", None)
    root = Path(tempfile.mkdtemp(prefix="mora-services-bench-"))
    access_key, secret_key = secrets.token_hex(8), secrets.token_hex(20)
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    weed = metrics_weed(root / "weed" / "data", access_key, secret_key, metrics_port)
    weed.start()
    calls: list[dict[str, Any]] = []
    try:
        settings = MoraSettings(  # type: ignore[call-arg]
            s3_endpoint_url=weed.endpoint_url,
            s3_bucket="bench",
            s3_access_key=SecretStr(access_key),
            s3_secret_key=SecretStr(secret_key),
        )
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
        registry = ModelRegistry(store, prefix="models")
        bundle = synthetic_bundle(root / "bundle")
        publish_seconds = publish_copies(registry, bundle, options.services)
        print(f"published {options.services} services in {publish_seconds:.1f} s", flush=True)

        def before() -> int:
            """The refresh as it was: per service, LATEST, a full verification, the manifest again."""
            listed = 0
            for service in registry.list_services():
                resolved = registry.resolve_latest(service)
                for version in registry.serving_candidates(resolved):
                    try:
                        registry.verify(service, version)
                    except (ArtifactIntegrityError, ModelNotFoundError):
                        continue
                    registry.read_manifest(service, version)
                    break
                listed += 1
            return listed

        servable = ServableVersions(registry)

        def after() -> int:
            return len(servable.catalog())

        def measure(label: str, refresh: Any) -> None:
            s3_before = s3_requests(metrics_url)
            started = time.perf_counter()
            count = refresh()
            seconds = time.perf_counter() - started
            delta = s3_delta(s3_before, s3_requests(metrics_url))
            calls.append({"refresh": label, "ms": round(seconds * 1000, 1), "services": count, "s3": delta})
            print(
                f"  {label}: {seconds * 1000:.0f} ms, {count} services, S3 {delta['requests']} requests "
                f"{delta['by_type']}",
                flush=True,
            )

        measure("before: per-service verification (each refresh once the 30 s verdicts expired)", before)
        measure("after: first catalog (every service verified)", after)
        measure("after: again, nothing changed", after)
        registry.publish(service_name(0), bundle, metadata={"metrics": {}})
        measure("after: one service published a new version", after)
        version = registry.latest_version(service_name(1))
        store.put_bytes(f"models/{service_name(1)}/{version}/part-00.json", b"{}")
        measure("after: one file tampered with (its only version refused)", after)
        measure("after: again, nothing changed", after)
    finally:
        weed.stop()
        shutil.rmtree(root, ignore_errors=True)

    results_dir = REPO / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"serve_services-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    report = {
        "created_at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": load_at_start},
        "services": options.services,
        "bundle_files": 11,
        "refreshes": calls,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="Seconds per load run")
    parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated: " + ", ".join(MODES))
    parser.add_argument("--services", type=int, default=1000, help="Services published (copies of one model)")
    parser.add_argument(
        "--lru", type=int, default=64, help="MORA_SERVE_MAX_MODELS_PER_REPLICA (below --services)"
    )
    parser.add_argument("--replicas", type=int, default=1, help="Replicas of each deployment")
    parser.add_argument("--concurrency", default="1,32", help="Comma-separated client concurrencies")
    parser.add_argument("--kinds", default=",".join(KINDS), help="Comma-separated: " + ", ".join(KINDS))
    parser.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (weight 1/rank^s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", default="frontend", help="The one service trained (copied to every name)")
    parser.add_argument("--floor-calls", type=int, default=500)
    parser.add_argument(
        "--answer-cache-ttl",
        default="",
        help="Comma-separated answer-cache TTLs in s to measure each mode at (0: the cache off); "
        "default: the app's default TTL",
    )
    parser.add_argument("--run-mode", help=argparse.SUPPRESS)  # internal: measure one mode in this process
    parser.add_argument("--prefix", default="models", help=argparse.SUPPRESS)
    parser.add_argument("--s3-metrics", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--services-only",
        action="store_true",
        help="Only measure the service-list refresh (S3 requests, time) in-process; see the docstring",
    )
    options = parser.parse_args()
    if options.run_mode:
        run_mode(options)
        return
    if options.services_only:
        run_services_only(options)
        return

    modes = [m.strip() for m in options.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    unknown = [k for k in options.kinds.split(",") if k.strip() and k.strip() not in KINDS]
    if unknown:
        raise SystemExit(f"unknown kind(s) {unknown}; choose from {list(KINDS)}")
    try:
        ttls: list[float | None] = [float(t) for t in options.answer_cache_ttl.split(",") if t.strip()] or [
            None
        ]
    except ValueError:
        raise SystemExit(f"--answer-cache-ttl: not a list of seconds: {options.answer_cache_ttl!r}") from None
    if any(t is not None and t < 0 for t in ttls):
        raise SystemExit("--answer-cache-ttl: TTLs must be >= 0")
    if options.lru >= options.services:
        print(f"warning: --lru {options.lru} holds the whole fleet of {options.services}", flush=True)

    from pydantic import SecretStr

    from mora_platform.registry import ModelRegistry
    from mora_platform.settings import MoraSettings
    from mora_platform.storage.object_store import ObjectStore

    # Every copy is a signed version; the replicas verify with the same key (inherited environment).
    os.environ["MORA_SIGNING_KEY"] = secrets.token_hex(32)
    os.environ.pop("MORA_ACCEPT_UNSIGNED", None)
    root = Path(tempfile.mkdtemp(prefix="mora-serve-bench-"))
    access_key, secret_key = secrets.token_hex(8), secrets.token_hex(20)
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    weed = metrics_weed(root / "weed" / "data", access_key, secret_key, metrics_port)
    weed.start()
    try:
        settings = MoraSettings(  # type: ignore[call-arg]
            s3_endpoint_url=weed.endpoint_url,
            s3_bucket="bench",
            s3_access_key=SecretStr(access_key),
            s3_secret_key=SecretStr(secret_key),
        )
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
        prefix = "models"
        registry = ModelRegistry(store, prefix=prefix)
        trained = [s.strip() for s in options.train.split(",") if s.strip()][:1]
        bundle = train_bundles(root, trained)[trained[0]]
        s3_before = s3_requests(metrics_url)
        publish_seconds = publish_copies(registry, bundle, options.services)
        published = s3_delta(s3_before, s3_requests(metrics_url), publish_seconds)
        print(
            f"published {options.services} services in {publish_seconds:.1f} s "
            f"({published['requests']} S3 requests)",
            flush=True,
        )
        report: dict[str, Any] = {
            "created_at": datetime.now(UTC).isoformat(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "load_avg_1m_at_start": round(os.getloadavg()[0], 2),  # other work on the machine
            },
            "setup": {
                "services": options.services,
                "lru_models_per_replica": options.lru,
                "replicas": options.replicas,
                "zipf_s": options.zipf_s,
                "seed": options.seed,
                "concurrency": options.concurrency,
                "kinds": options.kinds,
                "hot_services": HOT_SERVICES,
                "batch_size": BATCH_SIZE,
                "duration_s": options.duration,
                "ray_num_cpus": 2,
                "answer_cache_ttl_s": [t for t in ttls if t is not None] or "app default",
                "client": "aiohttp, keep-alive, closed loop, same machine",
                "publish": {"seconds": round(publish_seconds, 1), "s3": published},
                "bundle_bytes": sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()),
            },
            "floor": measure_floor(bundle, options.floor_calls),
            "modes": {},
        }
        print(f"floor: {report['floor']}", flush=True)
        for mode, ttl in [(mode, ttl) for mode in modes for ttl in ttls]:
            label = mode if ttl is None else f"{mode}/ttl={ttl:g}"
            print(f"mode {label}", flush=True)
            part = root / f"{mode}-{ttl}.json"
            # HAProxy's admin socket path must stay under 97 bytes, and Ray nests a hash dir in it.
            haproxy_dir = Path(tempfile.mkdtemp(prefix="mhp-", dir="/tmp"))
            env = {
                **os.environ,
                **MODES[mode],
                "MORA_S3_ENDPOINT_URL": weed.endpoint_url,
                "MORA_S3_BUCKET": "bench",
                "MORA_S3_ACCESS_KEY": access_key,
                "MORA_S3_SECRET_KEY": secret_key,
                "MORA_SERVE_MAX_MODELS_PER_REPLICA": str(options.lru),
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
            command += ["--services", str(options.services), "--lru", str(options.lru)]
            command += ["--replicas", str(options.replicas), "--concurrency", options.concurrency]
            command += [
                "--kinds",
                options.kinds,
                "--zipf-s",
                str(options.zipf_s),
                "--seed",
                str(options.seed),
            ]
            command += ["--s3-metrics", metrics_url]
            if ttl is not None:
                command += ["--answer-cache-ttl", str(ttl)]
            result = subprocess.run(command, env=env, check=False)
            shutil.rmtree(haproxy_dir, ignore_errors=True)
            if result.returncode == 0 and part.is_file():
                report["modes"][label] = {"env": MODES[mode], **json.loads(part.read_text())}
            else:
                report["modes"][label] = {"env": MODES[mode], "error": f"exit code {result.returncode}"}
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
