"""Two services' cluster metrics over a week, written as OpenMetrics in two backfills.

``shop-api`` runs through both windows and its load shifts up (CPU x2.5, memory x1.5, one more
replica) in the second; ``shop-db`` stops reporting at the end of the first window, so a second cycle
finds new rows for the first only. Counters continue across the two files (one timeline, split at
the boundary), so ``rate()`` sees no reset. A small proxy in front of Prometheus demands a bearer
token, as a cluster's Prometheus behind auth would.
"""

from __future__ import annotations

import math
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

SCRAPE = 60  # seconds between samples
STEP = "5m"  # the cycle's query step
RATE_WINDOW = "5m"
WARMUP = 900  # samples before the first collected point, so rate windows are full
DAY = 86_400.0
BACKFILL_DAYS = 7  # the first backfill: a week of both services' metrics


@dataclass(frozen=True)
class FakeService:
    name: str
    cpu: float  # mean cores
    memory: float  # mean bytes
    replicas: int
    shifts: bool  # load shifts up after the boundary
    stops: bool  # no samples after the boundary

    @property
    def pod(self) -> str:
        return f"{self.name}-7d4b9c8f6-x2kq9"


def services(prefix: str) -> tuple[FakeService, FakeService]:
    """The changing service and the one that stops, with names unique to this run."""
    return (
        FakeService(f"{prefix}-api", 0.2, 2.0e8, 2, shifts=True, stops=False),
        FakeService(f"{prefix}-db", 0.1, 4.0e8, 1, shifts=False, stops=True),
    )


@dataclass(frozen=True)
class Timeline:
    """``start`` .. ``boundary`` is the first backfill, ``boundary`` .. ``end`` the second (unix s)."""

    start: int
    boundary: int
    end: int

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.start - WARMUP, self.end + 1, SCRAPE, dtype=np.int64)


def _daily(t: np.ndarray) -> np.ndarray:
    return 1.0 + 0.5 * np.sin(2 * math.pi * t / DAY)


def _series(svc: FakeService, timeline: Timeline, seed: int) -> dict[str, np.ndarray]:
    """Per-scrape values of the service's raw series (counters integrated from their rates)."""
    t = timeline.times
    rng = np.random.default_rng(seed)
    after = t > timeline.boundary
    load = _daily(t) * (1 + 0.05 * rng.standard_normal(len(t)))
    if svc.shifts:
        load = np.where(after, load * 2.5, load)
    cpu_rate = svc.cpu * load
    mem = svc.memory * (1 + 0.2 * np.sin(2 * math.pi * t / DAY)) * (1 + 0.02 * rng.standard_normal(len(t)))
    if svc.shifts:
        mem = np.where(after, mem * 1.5, mem)
    replicas = np.full(len(t), float(svc.replicas))
    if svc.shifts:
        replicas = np.where(after, replicas + 1, replicas)
    return {
        "cpu": 1e4 + np.cumsum(cpu_rate * SCRAPE),
        "mem": mem,
        "rx": 1e6 + np.cumsum(5_000.0 * load * SCRAPE),
        "tx": 1e6 + np.cumsum(2_500.0 * load * SCRAPE),
        "restarts": np.zeros(len(t)),
        "replicas": replicas,
    }


def write_backfills(first: Path, second: Path, timeline: Timeline, namespace: str, prefix: str) -> None:
    """The first window (up to ``boundary``) into ``first``, the rest into ``second``."""
    t = timeline.times
    windows = (t <= timeline.boundary, t > timeline.boundary)
    families: list[dict[str, tuple[str, list[str]]]] = [{}, {}]

    def add(
        family: str, kind: str, sample: str, labels: str, values: np.ndarray, *, stops: bool = False
    ) -> None:
        for index, keep in enumerate(windows):
            if stops and index == 1:
                continue
            lines = families[index].setdefault(family, (kind, []))[1]
            lines.extend(
                f"{sample}{{{labels}}} {float(v)!r} {int(ts)}"
                for ts, v in zip(t[keep], values[keep], strict=True)
            )

    for seed, svc in enumerate(services(prefix)):
        values = _series(svc, timeline, seed)
        pod = f'namespace="{namespace}",pod="{svc.pod}"'
        stops = svc.stops
        add(
            "container_cpu_usage_seconds",
            "counter",
            "container_cpu_usage_seconds_total",
            f'{pod},container="app"',
            values["cpu"],
            stops=stops,
        )
        add(
            "container_memory_working_set_bytes",
            "gauge",
            "container_memory_working_set_bytes",
            f'{pod},container="app"',
            values["mem"],
            stops=stops,
        )
        add(
            "container_network_receive_bytes",
            "counter",
            "container_network_receive_bytes_total",
            f'{pod},interface="eth0"',
            values["rx"],
            stops=stops,
        )
        add(
            "container_network_transmit_bytes",
            "counter",
            "container_network_transmit_bytes_total",
            f'{pod},interface="eth0"',
            values["tx"],
            stops=stops,
        )
        add(
            "kube_pod_container_status_restarts",
            "counter",
            "kube_pod_container_status_restarts_total",
            f'{pod},container="app"',
            values["restarts"],
            stops=stops,
        )
        add(
            "kube_deployment_status_replicas",
            "gauge",
            "kube_deployment_status_replicas",
            f'namespace="{namespace}",deployment="{svc.name}"',
            values["replicas"],
            stops=stops,
        )
    for cpu in (0, 1):
        add(
            "node_cpu_seconds",
            "counter",
            "node_cpu_seconds_total",
            f'instance="node-a",cpu="{cpu}",mode="idle"',
            1e6 + 0.7 * (t - t[0]).astype(float),
        )
    add(
        "node_memory_MemAvailable_bytes",
        "gauge",
        "node_memory_MemAvailable_bytes",
        'instance="node-a"',
        np.full(len(t), 8e9),
    )
    add(
        "node_memory_MemTotal_bytes",
        "gauge",
        "node_memory_MemTotal_bytes",
        'instance="node-a"',
        np.full(len(t), 16e9),
    )

    for path, written in zip((first, second), families, strict=True):
        with path.open("w", encoding="utf-8") as out:
            for family, (kind, lines) in written.items():
                out.write(f"# TYPE {family} {kind}\n")
                out.write("\n".join(lines) + "\n")
            out.write("# EOF\n")


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True
    upstream: str
    token: str
    requests: int = 0


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _Proxy

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._answer(401, b'{"status":"error","error":"unauthorized"}')
            return
        self.server.requests += 1
        try:
            with urllib.request.urlopen(self.server.upstream + self.path, timeout=30) as response:
                self._answer(response.status, response.read())
        except urllib.error.HTTPError as exc:
            self._answer(exc.code, exc.read())
        except (urllib.error.URLError, OSError):
            self._answer(502, b'{"status":"error","error":"upstream unreachable"}')

    def _answer(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        return


@dataclass
class TokenProxy:
    url: str
    server: _Proxy

    def retarget(self, upstream: str) -> None:
        self.server.upstream = upstream


@contextmanager
def token_proxy(upstream: str, token: str) -> Iterator[TokenProxy]:
    """A proxy on a free 127.0.0.1 port that forwards GETs carrying ``Bearer token`` to ``upstream``."""
    proxy = _Proxy(("127.0.0.1", 0), _ProxyHandler)
    proxy.upstream = upstream
    proxy.token = token
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield TokenProxy(f"http://127.0.0.1:{proxy.server_address[1]}", proxy)
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)
