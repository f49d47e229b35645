"""One local stack, started as a user starts it, shared by the tests of this folder.

`mora stack up --prometheus` on free ports with a temporary MORA_HOME and HOME (no ``~/.ray`` of the
machine plays a part, nothing of Ray's auth is set in the shell): the S3 server, the Ray head with its
dashboard in Serve's HAProxy mode, and Prometheus scraping the head. Starting it once for the security,
HAProxy and Prometheus tests (instead of once each) saves two starts and two stops of a whole stack.
The fixture is package-scoped (this folder has an ``__init__.py``), so the stack is stopped by
`mora stack down` right after the folder's last test, and whatever survived that is killed by PID;
the teardown then fails if any process of the stack had outlived `stack down`, if a PID record is
left, if the head's address is still in ``stack.env`` or if `stack status` does not say stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from infra.local.config import StackSettings
from infra.local.envfile import read_env_file
from infra.local.processes import ProcessRecord, free_ports
from infra.local.sockets import ListeningSocket, listening_sockets

MORA = [sys.executable, "-c", "from mora_platform.cli import main; main()"]
COMPONENTS = ("s3", "ray", "prometheus")
#: Ray pushes a process's metrics to its node's agent every metrics_report_interval_ms (10 s by default).
REPORT_MS = "1000"
DRAINING_S = "2"


@dataclass(frozen=True)
class Stack:
    work: Path
    home: Path
    env: dict[str, str]
    ports: dict[str, int]
    up_output: str

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['ray_dashboard_port']}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.ports['prometheus_port']}"

    @property
    def token_file(self) -> Path:
        return self.home / "ray_auth_token"

    def token(self) -> str:
        return self.token_file.read_text().strip()

    def record(self, name: str) -> ProcessRecord:
        record = ProcessRecord.load(self.home / "run" / f"{name}.json")
        assert record is not None and record.is_alive(), f"{name} is not running"
        return record

    def pids(self) -> set[int]:
        return {proc.pid for name in COMPONENTS for proc in self.record(name).family()}

    def sockets(self) -> list[ListeningSocket]:
        return listening_sockets(self.pids())

    def mora(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return mora(args, env or self.env, self.work)


def mora(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(MORA + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def plain_env(home: Path) -> dict[str, str]:
    """A shell with nothing of MORA's or Ray's settings and a HOME without ``~/.ray/auth_token``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MORA_", "RAY_"))}
    env["HOME"] = str(home)
    if os.environ.get("MORA_SIGNING_KEY"):  # the session's manifest key (tests/conftest.py)
        env["MORA_SIGNING_KEY"] = os.environ["MORA_SIGNING_KEY"]
    return env


def table(sockets: list[ListeningSocket]) -> str:
    return "\n".join(f"  {'loopback' if s.loopback else 'EXPOSED '}  {s}" for s in sockets)


def grpc_status(port: int, token: str | None) -> grpc.StatusCode:
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


def _families(home: Path) -> dict[str, list[psutil.Process]]:
    found: dict[str, list[psutil.Process]] = {}
    for record_file in (home / "run").glob("*.json"):
        record = ProcessRecord.load(record_file)
        if record is not None:
            found[record_file.stem] = record.family()
    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:120]}"
    except psutil.Error:
        return str(proc.pid)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("shared-stack")
    home = work / ".mora"
    listening = [name for name in StackSettings.port_names().values() if "worker" not in name]
    ports = dict(zip(listening, free_ports(len(listening)), strict=True))
    # Below the OS's ephemeral range, outside the throw-away heads' windows (30000-32699) and Serve's
    # direct-ingress ranges.
    ports["ray_min_worker_port"], ports["ray_max_worker_port"] = 32_700, 32_767
    env = plain_env(work / "user")
    env.update(
        {
            "MORA_HOME": str(home),
            "COLUMNS": "300",
            "MORA_STACK_RAY_NUM_CPUS": "2",  # Serve: 2 x 0.25 + 2 x 0.5 CPU
            "MORA_STACK_PROMETHEUS_SCRAPE_INTERVAL": "1",
            "RAY_metrics_report_interval_ms": REPORT_MS,
            # In HAProxy mode an ingress replica being stopped waits at least this long (30 s by default)
            # so an external load balancer can stop sending to it; `serve down` here has none to wait for.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": DRAINING_S,
        }
    )
    env.update({f"MORA_STACK_{name.upper()}": str(port) for name, port in ports.items()})
    survivors: list[str] = []
    down: subprocess.CompletedProcess[str] | None = None
    try:
        up = mora(["stack", "up", "--prometheus"], env, work)
        assert up.returncode == 0, up.stdout + up.stderr
        yield Stack(work, home, env, ports, up.stdout + up.stderr)
    finally:
        families = _families(home)
        down = mora(["stack", "down"], env, work)
        deadline = time.monotonic() + 10  # children may take a moment after their parent is gone
        while any(_alive(p) for family in families.values() for p in family) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [proc for family in families.values() for proc in family if _alive(proc)]
        survivors = [_describe(proc) for proc in left if _alive(proc)]
        for proc in [proc for family in _families(home).values() for proc in family] + left:
            if _alive(proc):
                proc.kill()
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("│ stopped") == len(COMPONENTS), down.stdout
    assert not survivors, f"outlived `mora stack down`: {survivors}"
    assert not list((home / "run").glob("*.json")), "`mora stack down` left process records behind"
    # a stopped head is no address: later commands start a local Ray instead of dialling a dead one
    left = read_env_file(home / "stack.env")
    assert "MORA_RAY_ADDRESS" not in left and left.get("MORA_S3_SECRET_KEY")
    after = mora(["stack", "status"], env, work)
    # (Prometheus is listed only while it runs or when asked for)
    assert after.returncode == 1 and after.stdout.count("│ stopped") >= 2, after.stdout
    assert "│ running" not in after.stdout, after.stdout
