"""Nothing of the local stack is reachable from another host, and its Ray head wants a token.

The stack is the folder's shared one (``conftest.py``: `mora stack up --prometheus` on free ports with
a temporary MORA_HOME and HOME, so no ``~/.ray/auth_token`` of the machine plays a part). The listening
sockets are read from the OS for the stack's process tree (psutil), never probed; every connection the
tests make goes to 127.0.0.1. The endpoint deployed on it is checked in ``test_serve_proxy.py``.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from infra.local.envfile import read_env_file
from infra.local.sockets import beyond_loopback

from .conftest import Stack, plain_env, table

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).parent / "ray")


def test_the_stack_listens_on_loopback_only_with_token_auth_on(stack: Stack) -> None:
    # The token: generated on first start, owner-only, never printed.
    assert stat.S_IMODE(stack.token_file.stat().st_mode) == 0o600
    token = stack.token()
    assert len(token) == 64
    status = stack.mora(["stack", "status"])
    assert status.returncode == 0, status.stdout + status.stderr
    assert "token auth on" in status.stdout and status.stdout.count("loopback only") == 3
    for text in (stack.up_output, status.stdout + status.stderr):
        assert token not in text
    assert token not in "".join(read_env_file(stack.home / "stack.env").values())

    auth_on = httpx.get(f"{stack.dashboard}/api/jobs/", timeout=10).status_code == 401
    sockets = stack.sockets()
    print(f"\nlistening sockets of the idle stack:\n{table(sockets)}")  # in the test log (-s)
    assert len(sockets) >= 10  # weed's 8 ports, the GCS, the dashboard, ...
    assert auth_on, "the Ray head answers the Jobs API without a token"
    assert not beyond_loopback(sockets), f"reachable from other hosts:\n{table(beyond_loopback(sockets))}"

    # With work running: a job submitted as the README says (a plain `ray job submit` with the two
    # variables), its driver, the job supervisor and the workers of an actor.
    app = stack.work / "app"
    app.mkdir()
    marker, release = stack.work / "actor-up", stack.work / "release"
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
            deadline = time.monotonic() + 120  # held until the test has read the sockets
            while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            print("held")
            """
        )
    )
    submit_env = plain_env(stack.work / "user") | {
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
        print(f"\nlistening sockets with a job, a task and an actor running:\n{table(busy)}")
        assert len(busy) > len(sockets)  # the workers' and driver's servers are in the tree
        assert not beyond_loopback(busy), f"reachable from other hosts:\n{table(beyond_loopback(busy))}"
        release.write_text("done")
        output, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-3000:]
    assert "held" in output and token not in output


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
    plain = plain_env(stack.work / "user") | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
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

    # Every attempt at once but the Ray client with the token: the client server starts one server
    # per client, so that one goes after the refused one.
    run([name for name in attempts if name != "Ray client, token"])
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
    status = stack.mora(["stack", "status"])
    assert status.returncode == 0, status.stdout + status.stderr
