"""The Prometheus client: what it sends (auth headers), how it classifies failures, retries.

A tiny in-process HTTP server on 127.0.0.1 plays the server; it records the requests it sees.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mora_platform.collect.client import (
    PrometheusAuthError,
    PrometheusClient,
    PrometheusQueryError,
    PrometheusTimeoutError,
    PrometheusUnavailableError,
    redact_url,
)
from mora_platform.collect.settings import PrometheusSettings

MATRIX = {
    "status": "success",
    "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[60, "1.5"], [90, "NaN"]]}]},
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    script: list[tuple[int, dict]]  # (status, body) answered in order; the last one repeats
    seen: list[dict[str, str]]
    release: threading.Event


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append({"path": self.path, **{k: v for k, v in self.headers.items()}})
        status, body = self.server.script.pop(0) if len(self.server.script) > 1 else self.server.script[0]
        if status == 0:  # never answer
            self.server.release.wait(timeout=10)
            return
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.script, httpd.seen, httpd.release = [(200, MATRIX)], [], threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _client(server: _Server, **settings: object) -> tuple[PrometheusClient, list[float]]:
    sleeps: list[float] = []
    values: dict[str, Any] = {"retries": 2, "backoff_seconds": 0.5, **settings}
    client = PrometheusClient(
        PrometheusSettings.load(**values), f"http://127.0.0.1:{server.server_address[1]}", sleep=sleeps.append
    )
    return client, sleeps


def test_range_query_sends_auth_and_parses_values(server: _Server) -> None:
    client, _ = _client(server, bearer_token="tok-abc", headers={"X-Scope-OrgID": "team-a"})
    series = client.query_range("up", 60, 90, 30)
    assert len(series) == 1 and series[0].samples[0] == (60.0, 1.5)
    assert series[0].samples[1][1] != series[0].samples[1][1]  # NaN stays NaN
    request = server.seen[0]
    assert request["Authorization"] == "Bearer tok-abc" and request["X-Scope-OrgID"] == "team-a"
    assert "step=30s" in request["path"] and "start=60" in request["path"]


def test_basic_auth_is_sent(server: _Server) -> None:
    client, _ = _client(server, username="me", password="pw")
    client.query_range("up", 60, 90, 30)
    assert server.seen[0]["Authorization"].startswith("Basic ")


def test_401_is_an_auth_error_not_retried_and_secret_free(server: _Server) -> None:
    server.script = [(401, {"status": "error", "error": "unauthorized"})]
    client, sleeps = _client(server, bearer_token="tok-secret")
    with pytest.raises(PrometheusAuthError, match=r"HTTP 401 Unauthorized") as info:
        client.query_range("up", 60, 90, 30, what="query cpu_cores_value")
    assert "tok-secret" not in str(info.value) and "query cpu_cores_value" in str(info.value)
    assert len(server.seen) == 1 and sleeps == []


def test_5xx_is_retried_with_doubling_backoff_then_succeeds(server: _Server) -> None:
    server.script = [(503, {"status": "error", "error": "busy"}), (503, {}), (200, MATRIX)]
    client, sleeps = _client(server)
    assert client.query_range("up", 60, 90, 30)[0].samples[0] == (60.0, 1.5)
    assert sleeps == [0.5, 1.0] and len(server.seen) == 3


def test_bad_query_names_the_server_message(server: _Server) -> None:
    server.script = [
        (400, {"status": "error", "errorType": "bad_data", "error": "parse error: unexpected }"})
    ]
    client, sleeps = _client(server)
    with pytest.raises(PrometheusQueryError, match=r"HTTP 400\): parse error: unexpected \}"):
        client.query_range("up}", 60, 90, 30)
    assert sleeps == []


def test_no_answer_is_a_timeout(server: _Server) -> None:
    server.script = [(0, {})]
    client, sleeps = _client(server, timeout_seconds=0.3, retries=1)
    with pytest.raises(PrometheusTimeoutError, match=r"did not answer within 0.3s \(after 2 attempts\)"):
        client.query_range("up", 60, 90, 30)
    assert len(sleeps) == 1


def test_refused_connection_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []
    client = PrometheusClient(
        PrometheusSettings.load(retries=1), f"http://127.0.0.1:{port}", sleep=sleeps.append
    )
    with pytest.raises(PrometheusUnavailableError, match=r"unreachable: connection refused"):
        client.check()


def test_urls_are_shown_without_credentials() -> None:
    assert redact_url("https://user:pw@prom.example:9090/x") == "https://prom.example:9090/x"
    assert redact_url("http://prom:9090") == "http://prom:9090"
    with pytest.raises(Exception, match="must start with http"):
        PrometheusClient(PrometheusSettings.load(), "prom:9090")
