"""`mora stack up` runs Ray Serve's HAProxy mode, and every Serve listener it opens is on 127.0.0.1.

The stack is the folder's shared one (``conftest.py``: `mora stack up` as a user runs it, the default
proxy setting, free ports, a temporary MORA_HOME and HOME); the endpoint is deployed with `mora serve up`
(`serve deploy` through the token-checking dashboard) and asked over HTTP through HAProxy. The listening sockets of the stack's process tree (the Ray head's, HAProxy's and the
replicas') are read from the OS with psutil, never probed.

Known exception, the one listener beyond loopback: each Serve replica's inter-deployment gRPC server,
which Ray Serve 2.60 binds to ``[::]`` in ``Replica._on_initialized`` with no option to change it (the
same with Ray's default proxy). Ray's token interceptor guards it; the test checks a call without the
token is refused, with a wrong token too, and that the token is printed by none of the commands.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import httpx
import pytest

from infra.local.processes import free_ports
from infra.local.sockets import beyond_loopback

from .conftest import Stack, grpc_status, table

pytestmark = pytest.mark.integration

#: Ray Serve's default port range for the replicas' direct-ingress HTTP servers.
DIRECT_INGRESS_HTTP = range(30_000, 31_001)


def _haproxy_backends(haproxy_dir: Path) -> list[tuple[str, int]]:
    """(host, port) of every ``server`` line in the HAProxy config Ray wrote for the head node."""
    (config,) = haproxy_dir.glob("*/haproxy.cfg")
    found = re.findall(r"^\s*server\s+\S+\s+([0-9.]+):(\d+)\s", config.read_text(), flags=re.MULTILINE)
    return [(host, int(port)) for host, port in found]


def test_serve_runs_behind_haproxy_with_every_serve_port_on_loopback(stack: Stack) -> None:
    head = stack.record("ray")
    assert head.details["serve_proxy"] == "haproxy"
    haproxy_dir = Path(head.details["haproxy_dir"])
    assert len(str(haproxy_dir)) < 40 and (haproxy_dir / "haproxy").is_file()
    status = stack.mora(["stack", "status"])
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Serve proxy: haproxy" in status.stdout

    serve_port = free_ports(1)[0]
    serve_env = stack.env | {"MORA_SERVE_PORT": str(serve_port)}
    up = stack.mora(["serve", "up", "--timeout", "240"], serve_env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
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
        serve_status = stack.mora(["serve", "status"], serve_env)
        assert serve_status.returncode == 0 and "RUNNING" in serve_status.stdout, serve_status.stdout
    finally:
        down = stack.mora(["serve", "down"], serve_env)
    assert down.returncode == 0, down.stdout + down.stderr
    for output in (
        up.stdout + up.stderr,
        serve_status.stdout + serve_status.stderr,
        down.stdout + down.stderr,
    ):
        assert stack.token() not in output
