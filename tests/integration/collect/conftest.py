"""A real Prometheus with backfilled, known metrics, and a small HTTP proxy in front of it.

The proxy stands in for what sits between a user and a cluster's Prometheus: it demands a
bearer token, answers 401 for one tenant's service and never answers for another's queries.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from collect_promdata import PROXY_TOKEN, BackfilledPrometheus, Timeline, write_openmetrics

from infra.local.prometheus import PrometheusServer, backfill_openmetrics

HOURS = 3


@pytest.fixture(scope="session")
def backfilled_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackfilledPrometheus]:
    """Prometheus on a free 127.0.0.1 port over a TSDB holding 3 h of known data, a few hours old."""
    root = tmp_path_factory.mktemp("prometheus")
    start = int(time.time()) // 3600 * 3600 - 5 * 3600
    timeline = Timeline(start, HOURS)
    source = root / "metrics.om"
    write_openmetrics(source, timeline)
    began = time.monotonic()
    backfill_openmetrics(source, root / "tsdb")
    backfilled = time.monotonic()
    server = PrometheusServer(root / "tsdb")
    server.start()
    started = time.monotonic()
    try:
        yield BackfilledPrometheus(server, timeline, backfilled - began, started - backfilled)
    finally:
        pid = server.pid
        server.stop()
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True
    upstream: str
    release: threading.Event


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _Proxy

    def do_GET(self) -> None:
        query = unquote_plus(self.path)
        if self.headers.get("Authorization") != f"Bearer {PROXY_TOKEN}" or 'pod=~"locked' in query:
            self._answer(401, b'{"status":"error","error":"unauthorized"}')
            return
        if 'pod=~"slow' in query:
            self.server.release.wait(timeout=30)  # never answers within the client's timeout
            return
        try:
            with urllib.request.urlopen(self.server.upstream + self.path, timeout=30) as response:
                self._answer(response.status, response.read())
        except urllib.error.HTTPError as exc:
            self._answer(exc.code, exc.read())

    def _answer(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        return


@pytest.fixture
def auth_proxy(backfilled_prometheus: BackfilledPrometheus) -> Iterator[str]:
    """URL of a proxy that needs ``PROXY_TOKEN``, refuses 'locked' and stalls 'slow' queries."""
    proxy = _Proxy(("127.0.0.1", 0), _ProxyHandler)
    proxy.upstream = backfilled_prometheus.url
    proxy.release = threading.Event()
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.release.set()
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)
