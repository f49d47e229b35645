"""`mora stack up` runs Ray Serve's HAProxy mode, and every Serve listener it opens is on 127.0.0.1.

The stack is started as a user starts it (`mora stack up`, the default proxy setting, free ports, a
temporary MORA_HOME and HOME), the endpoint deployed with `mora serve up` and asked over HTTP through
HAProxy. The listening sockets of the stack's process tree (the Ray head's, HAProxy's and the
replicas') are read from the OS with psutil, never probed.

Known exception, the one listener beyond loopback: each Serve replica's inter-deployment gRPC server,
which Ray Serve 2.60 binds to ``[::]`` in ``Replica._on_initialized`` with no option to change it (the
same with Ray's default proxy). Ray's token interceptor guards it; the test checks a call without the
token is refused.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from infra.local.config import StackSettings
from infra.local.processes import ProcessRecord, free_ports
from infra.local.sockets import ListeningSocket, beyond_loopback, listening_sockets

pytestmark = pytest.mark.integration

MORA = [sys.executable, "-c", "from mora_platform.cli import main; main()"]
#: Ray Serve's default port range for the replicas' direct-ingress HTTP servers.
DIRECT_INGRESS_HTTP = range(30_000, 31_001)


@dataclass(frozen=True)
class Stack:
    work: Path
    home: Path
    env: dict[str, str]
    ports: dict[str, int]

    def record(self, name: str) -> ProcessRecord:
        record = ProcessRecord.load(self.home / "run" / f"{name}.json")
        assert record is not None and record.is_alive(), f"{name} is not running"
        return record

    def sockets(self) -> list[ListeningSocket]:
        pids = {proc.pid for name in ("s3", "ray") for proc in self.record(name).family()}
        return listening_sockets(pids)


def _mora(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(MORA + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("haproxy-stack")
    home = work / ".mora"
    listening = [name for name in StackSettings.port_names().values() if "worker" not in name]
    ports = dict(zip(listening, free_ports(len(listening)), strict=True))
    # Below the OS's ephemeral range, outside the throw-away heads' windows (30000-32699) and Serve's
    # direct-ingress ranges.
    ports["ray_min_worker_port"], ports["ray_max_worker_port"] = 32_700, 32_767
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MORA_", "RAY_"))}
    env.update({"HOME": str(work / "user"), "MORA_HOME": str(home), "COLUMNS": "250"})
    env["MORA_STACK_RAY_NUM_CPUS"] = "2"  # Serve: 2 x 0.25 + 2 x 0.5 CPU
    env.update({f"MORA_STACK_{name.upper()}": str(port) for name, port in ports.items()})
    try:
        up = _mora(["stack", "up"], env, work)
        assert up.returncode == 0, up.stdout + up.stderr
        yield Stack(work, home, env, ports)
    finally:
        _mora(["stack", "down"], env, work)
        for record_file in (home / "run").glob("*.json"):
            record = ProcessRecord.load(record_file)
            if record is not None:
                for proc in record.family():
                    proc.kill()


def _table(sockets: list[ListeningSocket]) -> str:
    return "\n".join(f"  {'loopback' if s.loopback else 'EXPOSED '}  {s}" for s in sockets)


def _haproxy_backends(haproxy_dir: Path) -> list[tuple[str, int]]:
    """(host, port) of every ``server`` line in the HAProxy config Ray wrote for the head node."""
    (config,) = haproxy_dir.glob("*/haproxy.cfg")
    found = re.findall(r"^\s*server\s+\S+\s+([0-9.]+):(\d+)\s", config.read_text(), flags=re.MULTILINE)
    return [(host, int(port)) for host, port in found]


def _grpc_status(port: int, token: str | None) -> grpc.StatusCode:
    """The status of a call to a Serve replica's gRPC method on 127.0.0.1 (no request is valid)."""
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/ray.serve.ASGIService/HandleRequest",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        try:
            call(b"", timeout=20, metadata=metadata)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_serve_runs_behind_haproxy_with_every_serve_port_on_loopback(stack: Stack) -> None:
    head = stack.record("ray")
    assert head.details["serve_proxy"] == "haproxy"
    haproxy_dir = Path(head.details["haproxy_dir"])
    assert len(str(haproxy_dir)) < 40 and (haproxy_dir / "haproxy").is_file()
    status = _mora(["stack", "status"], stack.env, stack.work)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Serve proxy: haproxy" in status.stdout

    serve_port = free_ports(1)[0]
    serve_env = stack.env | {"MORA_SERVE_PORT": str(serve_port)}
    up = _mora(["serve", "up", "--timeout", "240"], serve_env, stack.work)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        answer = httpx.get(f"http://127.0.0.1:{serve_port}/healthz", timeout=30)
        assert answer.status_code == 200, answer.text
        docs = httpx.get(f"http://127.0.0.1:{serve_port}/openapi.json", timeout=30)
        assert docs.status_code == 200 and "/v1/recommendations" in docs.json()["paths"]

        sockets = stack.sockets()
        print(f"\nlistening sockets with the endpoint deployed in HAProxy mode:\n{_table(sockets)}")
        by_port = {item.port: item for item in sockets}

        # The endpoint's port is HAProxy's (Serve's HAProxy mode is on), on loopback.
        assert serve_port in by_port and by_port[serve_port].process == "haproxy", _table(sockets)
        haproxy = [item for item in sockets if item.process == "haproxy"]
        # HAProxy's Prometheus exporter and stats page: Ray renders them on every interface, the
        # stack's wrapper rebinds them to 127.0.0.1, and they still answer there.
        for name, path in (("ray_haproxy_metrics_port", "/metrics"), ("ray_haproxy_stats_port", "/stats")):
            port = stack.ports[name]
            assert port in {item.port for item in haproxy if item.loopback}, f"{name}\n{_table(haproxy)}"
            assert httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).status_code == 200
        # Serve's fallback proxy (Ray's Python proxy on the head) on its configured port, loopback.
        fallback = by_port.get(stack.ports["ray_serve_fallback_port"])
        assert fallback is not None and "ProxyActor" in fallback.process and fallback.loopback
        # What HAProxy forwards to, from the config Ray wrote: the replicas' direct-ingress HTTP
        # servers (one per ingress replica) and the fallback proxy, all at 127.0.0.1, all bound there.
        backends = _haproxy_backends(haproxy_dir)
        assert backends and {host for host, _port in backends} == {"127.0.0.1"}, backends
        direct = [by_port[port] for _host, port in backends if port in by_port]
        assert len(direct) == len(backends), f"{backends}\n{_table(sockets)}"
        ingress = [item for item in direct if "RecommendationIngress" in item.process]
        assert len(ingress) >= 2 and all(item.port in DIRECT_INGRESS_HTTP for item in ingress), _table(direct)
        assert not beyond_loopback(direct), _table(direct)

        exposed = beyond_loopback(sockets)
        serve_ports = {serve_port, *(item.port for item in haproxy + direct)}
        assert not [item for item in exposed if item.port in serve_ports], _table(exposed)
        assert not [item for item in exposed if "ServeReplica" not in item.process], _table(exposed)
        replicas = {item.pid for item in sockets if "ServeReplica" in item.process}
        assert len(exposed) == len({item.pid for item in exposed}) == len(replicas) >= 4, _table(exposed)
        # The known exception: the replicas' inter-deployment gRPC servers on [::], token-guarded.
        token = (stack.home / "ray_auth_token").read_text().strip()
        for item in exposed:
            assert item.address in ("::", "0.0.0.0"), str(item)
            assert _grpc_status(item.port, None) == grpc.StatusCode.UNAUTHENTICATED, str(item)
            assert _grpc_status(item.port, token) != grpc.StatusCode.UNAUTHENTICATED, str(item)
    finally:
        down = _mora(["serve", "down"], serve_env, stack.work)
    assert down.returncode == 0, down.stdout + down.stderr
