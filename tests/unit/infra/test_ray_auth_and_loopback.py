"""The local Ray head's token auth and loopback settings, and how clients find the token (no Ray started)."""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from infra.local.config import StackSettings
from infra.local.processes import ProcessRecord
from infra.local.ray_head import (
    RayHead,
    RayPorts,
    client_env,
    client_headers,
    ensure_token,
    is_loopback_address,
    read_token,
    token_path,
)
from infra.local.sockets import ListeningSocket, beyond_loopback, is_loopback, listening_sockets
from infra.local.stack import LocalStack
from mora_platform.cli import app


def test_token_file_is_generated_once_owner_only(tmp_path: Path) -> None:
    path = ensure_token(token_path(tmp_path))
    token = read_token(path)
    assert token is not None and len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token(path) == path and read_token(path) == token  # kept across restarts


def test_head_runs_with_token_auth_and_loopback_only(tmp_path: Path) -> None:
    head = RayHead(RayPorts(), tmp_path / "ray.log", auth_token_path=tmp_path / "tok")
    assert head.auth_mode == "token"
    assert head.extra_env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "tok")
    assert "RAY_AUTH_TOKEN" not in head.extra_env  # the token stays in its file
    assert head.extra_env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # node address stays 127.0.0.1
    assert not [arg for arg in head.command() if "0.0.0.0" in arg]
    throwaway = RayHead(RayPorts(), tmp_path / "ray.log")
    assert throwaway.auth_mode == "disabled" and throwaway.auth_headers() is None


def test_local_stack_turns_token_auth_on_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MORA_STACK_RAY_AUTH", raising=False)
    stack = LocalStack(tmp_path, StackSettings(), bucket="b")
    head = stack.ray_head()
    assert head.auth_mode == "token" and head.auth_token_path == tmp_path / "ray_auth_token"
    monkeypatch.setenv("MORA_STACK_RAY_AUTH", "disabled")
    assert LocalStack(tmp_path, StackSettings(), bucket="b").ray_head().auth_mode == "disabled"


def test_clients_get_the_token_only_for_a_head_on_loopback(tmp_path: Path) -> None:
    loopback = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # ray.init would swap 127.0.0.1 otherwise
    assert client_env(tmp_path, "127.0.0.1:6379", environ={}) == loopback  # no token file yet
    ensure_token(token_path(tmp_path))
    expected = loopback | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray_auth_token")}
    assert client_env(tmp_path, "127.0.0.1:6379", environ={}) == expected
    assert client_env(tmp_path, "http://localhost:8265", environ={"RAY_AUTH_MODE": "disabled"}) == expected
    assert client_env(tmp_path, "http://ray.example.com:8265", environ={}) == {}
    assert client_env(tmp_path, "10.0.0.5:6379", environ={}) == {}
    assert client_env(tmp_path, None, environ={}) == {}
    assert client_env(tmp_path, "127.0.0.1:6379", environ={"RAY_AUTH_TOKEN": "mine"}) == loopback
    token = read_token(token_path(tmp_path))
    assert client_headers(tmp_path, "http://127.0.0.1:8265") == {"Authorization": f"Bearer {token}"}
    assert client_headers(tmp_path, "https://ray.example.com") == {}


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:6379", True),
        ("http://127.0.0.1:8265", True),
        ("http://localhost:8265/api", True),
        ("ray://[::1]:10001", True),
        ("0.0.0.0:6379", False),
        ("192.0.2.2:6379", False),
        ("http://ray.example.com:8265", False),
        ("", False),
    ],
)
def test_is_loopback_address(address: str, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback


def test_sockets_beyond_loopback_are_named() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")
    items = [
        ListeningSocket(6379, "::", "tcp", 1, "gcs_server"),
        ListeningSocket(8265, "127.0.0.1", "tcp", 2, "python"),
        ListeningSocket(10001, "::ffff:192.0.2.2", "tcp", 3, "python"),
    ]
    assert [item.port for item in beyond_loopback(items)] == [6379, 10001]
    assert str(items[0]) == "[::]:6379/tcp (gcs_server, pid 1)"


def test_listening_sockets_of_this_process() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        mine = [item for item in listening_sockets([psutil.Process().pid]) if item.port == port]
    assert len(mine) == 1 and mine[0].loopback and mine[0].protocol == "tcp"


def test_stack_up_refuses_a_running_head_without_token_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.local.ray_head import interpreter

    monkeypatch.setenv("MORA_HOME", str(tmp_path))
    monkeypatch.delenv("MORA_STACK_RAY_AUTH", raising=False)
    me = psutil.Process()
    record = ProcessRecord(
        name="ray",
        pid=me.pid,
        create_time=me.create_time(),
        command=["ray", "start"],
        log_path=str(tmp_path / "ray.log"),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        details={"python": interpreter(), "dashboard_url": "http://127.0.0.1:9"},  # an older mora: no "auth"
    )
    record.save(tmp_path / "run" / "ray.json")
    result = CliRunner().invoke(app, ["stack", "up", "--component", "ray"])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "without token authentication" in flat and "mora stack down --component ray" in flat
    assert (tmp_path / "run" / "ray.json").exists()
