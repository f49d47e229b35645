"""`mora serve up | status | down` on the local stack: Serve's HAProxy mode, every Serve listener on
127.0.0.1, the published service answered with the bearer token only.

The stack is the folder's shared one (``conftest.py``: `mora stack up` as a user runs it, the default
proxy setting, free ports, a temporary MORA_HOME and HOME); the endpoint is deployed with `mora serve up`
(`serve deploy` through the token-checking dashboard) after one service was imported and trained with
`mora data import` and `mora train`, and asked over HTTP through HAProxy. The listening sockets of the
stack's process tree (the Ray head's, HAProxy's and the replicas') are read from the OS with psutil,
never probed.

Known exception, the one listener beyond loopback: each Serve replica's inter-deployment gRPC server,
which Ray Serve 2.60 binds to ``[::]`` in ``Replica._on_initialized`` with no option to change it (the
same with Ray's default proxy). Ray's token interceptor guards it; the test checks a call without the
token is refused, with a wrong token too, and that the token is printed by none of the commands.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from infra.local.envfile import read_env_file
from infra.local.processes import free_ports
from infra.local.sockets import beyond_loopback

from .conftest import Stack, grpc_status, table

pytestmark = pytest.mark.integration

#: Ray Serve's default port range for the replicas' direct-ingress HTTP servers.
DIRECT_INGRESS_HTTP = range(30_000, 31_001)
EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "online-boutique"
SERVICE = "adservice"
# Small enough to train in seconds on 2 shared cores.
TINY_CONFIG = {
    "seq_len": 8,
    "lstm": {"units": [8], "dense_units": 4, "epochs": 1, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 16},
    "seed": 0,
}


@dataclass(frozen=True)
class Endpoint:
    port: int
    token: str
    env: dict[str, str]
    version: str
    up: subprocess.CompletedProcess[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def endpoint(stack: Stack) -> Iterator[Endpoint]:
    """The endpoint as a user gets one: a few shipped adservice experiments imported (`mora data
    import`), one service trained with a tiny config (`mora train`, published to the stack's S3), and
    `mora serve up` with a bearer token set in the shell; `mora serve down` afterwards."""
    sample = stack.work / "sample"
    sample.mkdir()
    for path in sorted(EXAMPLES.glob(f"{SERVICE}_*.csv"))[:6]:
        shutil.copy(path, sample / path.name)
    imported = stack.mora(["data", "import", str(sample), "--dataset", "probe-serve"])
    assert imported.returncode == 0, imported.stdout + imported.stderr
    config = stack.work / "tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    trained = stack.mora(
        ["train", "--dataset", "probe-serve", "--service", SERVICE, "--config", str(config), "--epochs", "1"]
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    published = re.search(rf"published: {SERVICE} (\S+)", trained.stdout)
    assert published, trained.stdout

    port, token = free_ports(1)[0], secrets.token_urlsafe(16)
    env = stack.env | {"MORA_SERVE_PORT": str(port), "MORA_SERVE_TOKEN": token}
    up = stack.mora(["serve", "up", "--timeout", "240"], env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield Endpoint(port, token, env, published.group(1), up)
    finally:
        stack.mora(["serve", "down"], env)


def _haproxy_backends(haproxy_dir: Path) -> list[tuple[str, int]]:
    """(host, port) of every ``server`` line in the HAProxy config Ray wrote for the head node."""
    (config,) = haproxy_dir.glob("*/haproxy.cfg")
    found = re.findall(r"^\s*server\s+\S+\s+([0-9.]+):(\d+)\s", config.read_text(), flags=re.MULTILINE)
    return [(host, int(port)) for host, port in found]


def test_serve_runs_behind_haproxy_with_every_serve_port_on_loopback(
    stack: Stack, endpoint: Endpoint
) -> None:
    head = stack.record("ray")
    assert head.details["serve_proxy"] == "haproxy"
    haproxy_dir = Path(head.details["haproxy_dir"])
    assert len(str(haproxy_dir)) < 40 and (haproxy_dir / "haproxy").is_file()
    status = stack.mora(["stack", "status"])
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Serve proxy: haproxy" in status.stdout

    serve_port = endpoint.port
    answer = httpx.get(f"http://127.0.0.1:{serve_port}/healthz", timeout=30)
    assert answer.status_code == 200, answer.text
    docs = httpx.get(f"http://127.0.0.1:{serve_port}/openapi.json", timeout=30)
    assert docs.status_code == 200 and "/v1/recommendations" in docs.json()["paths"]

    sockets = stack.sockets()
    print(f"\nlistening sockets with the endpoint deployed in HAProxy mode:\n{table(sockets)}")
    by_port = {item.port: item for item in sockets}

    # The endpoint's port is HAProxy's (Serve's HAProxy mode is on), on loopback.
    assert serve_port in by_port and by_port[serve_port].process == "haproxy", table(sockets)
    haproxy = [item for item in sockets if item.process == "haproxy"]
    # HAProxy's Prometheus exporter and stats page: Ray renders them on every interface, the
    # stack's wrapper rebinds them to 127.0.0.1, and they still answer there.
    for name, path in (("ray_haproxy_metrics_port", "/metrics"), ("ray_haproxy_stats_port", "/stats")):
        port = stack.ports[name]
        assert port in {item.port for item in haproxy if item.loopback}, f"{name}\n{table(haproxy)}"
        assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 200
    # Serve's fallback proxy (Ray's Python proxy on the head) on its configured port, loopback.
    fallback = by_port.get(stack.ports["ray_serve_fallback_port"])
    assert fallback is not None and "ProxyActor" in fallback.process and fallback.loopback
    # What HAProxy forwards to, from the config Ray wrote: the replicas' direct-ingress HTTP
    # servers (one per ingress replica) and the fallback proxy, all at 127.0.0.1, all bound there.
    backends = _haproxy_backends(haproxy_dir)
    assert backends and {host for host, _port in backends} == {"127.0.0.1"}, backends
    direct = [by_port[port] for _host, port in backends if port in by_port]
    assert len(direct) == len(backends), f"{backends}\n{table(sockets)}"
    ingress = [item for item in direct if "RecommendationIngress" in item.process]
    assert len(ingress) >= 2 and all(item.port in DIRECT_INGRESS_HTTP for item in ingress), table(direct)
    assert not beyond_loopback(direct), table(direct)

    exposed = beyond_loopback(sockets)
    serve_ports = {serve_port, *(item.port for item in haproxy + direct)}
    assert not [item for item in exposed if item.port in serve_ports], table(exposed)
    assert not [item for item in exposed if "ServeReplica" not in item.process], table(exposed)
    replicas = {item.pid for item in sockets if "ServeReplica" in item.process}
    assert len(exposed) == len({item.pid for item in exposed}) == len(replicas) >= 4, table(exposed)
    # The known exception: the replicas' inter-deployment gRPC servers on [::], token-guarded.
    token = stack.token()
    for item in exposed:
        assert item.address in ("::", "0.0.0.0"), str(item)
        assert grpc_status(item.port, None) == grpc.StatusCode.UNAUTHENTICATED, str(item)
        assert grpc_status(item.port, "0" * 64) == grpc.StatusCode.UNAUTHENTICATED, str(item)
        assert grpc_status(item.port, token) != grpc.StatusCode.UNAUTHENTICATED, str(item)


def test_the_endpoint_answers_the_published_service_with_its_token_only(
    stack: Stack, endpoint: Endpoint
) -> None:
    assert f"endpoint ready: {endpoint.url}" in endpoint.up.stdout
    deployed = (stack.home / "serve" / "config.yaml").read_text()
    secret = read_env_file(stack.home / "stack.env")["MORA_S3_SECRET_KEY"]
    assert secret not in deployed and endpoint.token not in deployed
    assert yaml.safe_load(deployed)["http_options"]["port"] == endpoint.port

    answer = httpx.post(
        f"{endpoint.url}/v1/recommendations",
        json={"service": SERVICE},
        headers={"authorization": f"Bearer {endpoint.token}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == endpoint.version
    refused = httpx.post(f"{endpoint.url}/v1/recommendations", json={"service": SERVICE}, timeout=30)
    assert refused.status_code == 401

    status = stack.mora(["serve", "status"], endpoint.env)
    assert status.returncode == 0 and "RUNNING" in status.stdout, status.stdout + status.stderr
    assert "services (1)" in status.stdout, status.stdout
    for output in (endpoint.up.stdout + endpoint.up.stderr, status.stdout + status.stderr):
        assert stack.token() not in output and endpoint.token not in output and secret not in output


def test_serve_down_stops_the_endpoint(stack: Stack, endpoint: Endpoint) -> None:
    down = stack.mora(["serve", "down"], endpoint.env)
    assert down.returncode == 0, down.stdout + down.stderr
    after = stack.mora(["serve", "status"], endpoint.env)
    assert after.returncode == 1 and "unreachable" in after.stdout, after.stdout + after.stderr
    for output in (down.stdout + down.stderr, after.stdout + after.stderr):
        assert stack.token() not in output and endpoint.token not in output
