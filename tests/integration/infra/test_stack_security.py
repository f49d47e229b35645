"""Nothing of the local stack is reachable from another host, and its Ray head wants a token.

`mora stack up` on free ports with a temporary MORA_HOME (and HOME, so no ``~/.ray/auth_token`` of
the machine plays a part). The listening sockets are read from the OS for the stack's process tree
(psutil), never probed; every connection the tests make goes to 127.0.0.1.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from infra.local.config import StackSettings
from infra.local.envfile import read_env_file
from infra.local.processes import ProcessRecord, free_ports
from infra.local.sockets import ListeningSocket, beyond_loopback, listening_sockets

pytestmark = pytest.mark.integration

MORA = [sys.executable, "-c", "from mora_platform.cli import main; main()"]
RAY = str(Path(sys.executable).parent / "ray")


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
    def token_file(self) -> Path:
        return self.home / "ray_auth_token"

    def token(self) -> str:
        return self.token_file.read_text().strip()

    def pids(self) -> set[int]:
        found: set[int] = set()
        for name in ("s3", "ray"):
            record = ProcessRecord.load(self.home / "run" / f"{name}.json")
            assert record is not None and record.is_alive(), f"{name} is not running"
            found |= {proc.pid for proc in record.family()}
        return found

    def sockets(self) -> list[ListeningSocket]:
        return listening_sockets(self.pids())


def _mora(args: list[str], stack_env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(MORA + args, env=stack_env, cwd=cwd, capture_output=True, text=True, timeout=240)


def _plain_env(home: Path) -> dict[str, str]:
    """A shell with nothing of Ray's auth set and a HOME without ``~/.ray/auth_token``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MORA_", "RAY_"))}
    env["HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("secure-stack")
    home = work / ".mora"
    listening = [name for name in StackSettings.port_names().values() if "worker" not in name]
    ports = dict(zip(listening, free_ports(len(listening)), strict=True))
    ports["ray_min_worker_port"], ports["ray_max_worker_port"] = 32_200, 32_299
    env = _plain_env(work / "user")
    env.update(
        {"MORA_HOME": str(home), "COLUMNS": "250", "MORA_STACK_RAY_NUM_CPUS": "2"}
    )  # Serve: 2 x 0.25 + 2 x 0.5 CPU
    env.update({f"MORA_STACK_{name.upper()}": str(port) for name, port in ports.items()})
    try:
        up = _mora(["stack", "up"], env, work)
        assert up.returncode == 0, up.stdout + up.stderr
        yield Stack(work, home, env, ports, up.stdout + up.stderr)
    finally:
        _mora(["stack", "down"], env, work)
        for record_file in (home / "run").glob("*.json"):
            record = ProcessRecord.load(record_file)
            if record is not None:
                for proc in record.family():
                    proc.kill()


def _table(sockets: list[ListeningSocket]) -> str:
    return "\n".join(f"  {'loopback' if s.loopback else 'EXPOSED '}  {s}" for s in sockets)


def test_the_stack_listens_on_loopback_only_with_token_auth_on(stack: Stack) -> None:
    # The token: generated on first start, owner-only, never printed.
    assert stat.S_IMODE(stack.token_file.stat().st_mode) == 0o600
    token = stack.token()
    assert len(token) == 64
    status = _mora(["stack", "status"], stack.env, stack.work)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "token auth on" in status.stdout and status.stdout.count("loopback only") == 2
    for text in (stack.up_output, status.stdout + status.stderr):
        assert token not in text
    assert token not in "".join(read_env_file(stack.home / "stack.env").values())

    auth_on = httpx.get(f"{stack.dashboard}/api/jobs/", timeout=10).status_code == 401
    sockets = stack.sockets()
    print(f"\nlistening sockets of the idle stack:\n{_table(sockets)}")  # in the test log (-s)
    assert len(sockets) >= 10  # weed's 8 ports, the GCS, the dashboard, ...
    assert auth_on, "the Ray head answers the Jobs API without a token"
    assert not beyond_loopback(sockets), f"reachable from other hosts:\n{_table(beyond_loopback(sockets))}"

    # With work running: a job submitted as the README says (a plain `ray job submit` with the two
    # variables), its driver, the job supervisor and the workers of an actor.
    app = stack.work / "app"
    app.mkdir()
    marker = stack.work / "actor-up"
    (app / "hold.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib, time
            import ray

            ray.init()

            @ray.remote
            class Holder:
                def ping(self):
                    return "pong"

            holder = Holder.remote()
            assert ray.get(holder.ping.remote()) == "pong"
            assert ray.get(ray.remote(lambda: 1).remote()) == 1
            pathlib.Path({str(marker)!r}).write_text("up")
            time.sleep(25)
            print("held")
            """
        )
    )
    submit_env = _plain_env(stack.work / "user") | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(stack.token_file),
    }
    job = subprocess.Popen(
        [
            RAY,
            "job",
            "submit",
            "--address",
            stack.dashboard,
            "--working-dir",
            str(app),
            "--",
            "python",
            "hold.py",
        ],
        env=submit_env,
        cwd=stack.work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert job.poll() is None, job.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the job's actor never started"
            time.sleep(0.25)
        busy = stack.sockets()
        print(f"\nlistening sockets with a job, a task and an actor running:\n{_table(busy)}")
        assert len(busy) > len(sockets)  # the workers' and driver's servers are in the tree
        assert not beyond_loopback(busy), f"reachable from other hosts:\n{_table(beyond_loopback(busy))}"
        output, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-3000:]
    assert "held" in output and token not in output

    # With the endpoint deployed (`mora serve up`: `serve deploy` through the token-checking
    # dashboard), in the stack's default HAProxy mode (HAProxy and the replicas' direct-ingress HTTP
    # servers are in the tree; test_stack_serve_proxy.py checks each of them). Ray Serve 2.60 binds
    # each replica's inter-deployment gRPC server to [::] with no option to change it: the one kind of
    # port beyond loopback, allowed only because token auth guards it (Ray's interceptor), which the
    # calls below check on 127.0.0.1.
    serve_env = stack.env | {"MORA_SERVE_PORT": str(free_ports(1)[0])}
    up = _mora(["serve", "up", "--timeout", "180"], serve_env, stack.work)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        serving = stack.sockets()
        print(f"\nlistening sockets with the endpoint deployed:\n{_table(serving)}")
        exposed = beyond_loopback(serving)
        assert auth_on or not exposed, f"reachable from other hosts without a token:\n{_table(exposed)}"
        assert all("ServeReplica" in item.process for item in exposed), _table(exposed)
        for item in exposed:
            assert _replica_call(item.port, None) == grpc.StatusCode.UNAUTHENTICATED
            assert _replica_call(item.port, "0" * 64) == grpc.StatusCode.UNAUTHENTICATED
            assert _replica_call(item.port, token) != grpc.StatusCode.UNAUTHENTICATED
        status = _mora(["serve", "status"], serve_env, stack.work)
        assert status.returncode == 0 and "RUNNING" in status.stdout, status.stdout + status.stderr
    finally:
        down = _mora(["serve", "down"], serve_env, stack.work)
    assert down.returncode == 0, down.stdout + down.stderr
    for output in (up.stdout + up.stderr, status.stdout, down.stdout):
        assert token not in output


def _replica_call(port: int, token: str | None) -> grpc.StatusCode:
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


def test_the_ray_head_refuses_clients_without_the_token(stack: Stack) -> None:
    token = stack.token()
    url = f"{stack.dashboard}/api/jobs/"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer " + "0" * 64}, timeout=10).status_code == 403
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    assert httpx.get(f"{stack.dashboard}/api/version", timeout=10).status_code == 401

    gcs = f"127.0.0.1:{stack.ports['ray_port']}"
    client = f"ray://127.0.0.1:{stack.ports['ray_client_port']}"
    probe = "import sys, ray; ray.init(address=sys.argv[1]); print('CONNECTED', ray.cluster_resources())"
    # Without the loopback switch ray.init would dial the machine's address, where nothing listens:
    # a refusal for the wrong reason. With it, the same probe reaches the head and only the token differs.
    plain = _plain_env(stack.work / "user") | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    wrong = stack.work / "wrong-token"
    wrong.write_text("f" * 64)
    wrong_env = plain | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}
    right_env = plain | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(stack.token_file)}
    attempts = {
        "driver on the GCS, no token": ([sys.executable, "-c", probe, gcs], plain),
        "driver on the GCS, wrong token": ([sys.executable, "-c", probe, gcs], wrong_env),
        "Ray client, no token": ([sys.executable, "-c", probe, client], plain),
        "ray job submit, no token": ([RAY, "job", "submit", "--address", stack.dashboard, "--", "id"], plain),
        # controls: the same commands with the token get in
        "driver on the GCS, token": ([sys.executable, "-c", probe, gcs], right_env),
        "Ray client, token": ([sys.executable, "-c", probe, client], right_env),
    }
    began = time.monotonic()
    results: dict[str, tuple[int | None, str]] = {}

    def run(names: list[str]) -> None:
        running = {
            name: subprocess.Popen(
                attempts[name][0],
                env=attempts[name][1],
                cwd=stack.work,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name in names
        }
        for name, process in running.items():
            try:
                output, _ = process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
            results[name] = (process.returncode, output)
            print(f"{name}: exit {process.returncode} after {time.monotonic() - began:.0f} s")

    # The GCS and Jobs API attempts at once; the Ray client server starts one server per client,
    # so its two attempts go one after the other.
    run([name for name in attempts if not name.startswith("Ray client")])
    run(["Ray client, no token"])
    for _ in range(3):  # the refused client's per-client server may still be shutting down on its port
        run(["Ray client, token"])
        if "Starting Ray client server failed" not in results["Ray client, token"][1]:
            break
        time.sleep(5)
    for name, (code, output) in results.items():
        assert token not in output
        if name.endswith(", token"):
            assert code == 0 and "CONNECTED" in output, f"{name}: exit {code}\n{output[-3000:]}"
        else:
            assert code != 0 and "CONNECTED" not in output, f"{name}: exit {code}\n{output[-3000:]}"
    submit_output = results["ray job submit, no token"][1]
    assert "Authentication required" in submit_output or "401" in submit_output, submit_output[-2000:]

    # No process of the stack ran the refused command, and the head is still healthy.
    assert not [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-1:] == ["id"]]
    status = _mora(["stack", "status"], stack.env, stack.work)
    assert status.returncode == 0, status.stdout + status.stderr
