"""`mora stack up / down` refusing a taken port and cleaning stale PID records: free ports, a temporary MORA_HOME.

The whole life of a running stack (up, status, a second up, down) is checked on the shared stack of
``running_stack/`` (``test_lifecycle.py`` and its ``conftest.py``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from infra.local.config import StackSettings
from infra.local.processes import ProcessRecord, free_ports

pytestmark = pytest.mark.integration

MORA = [sys.executable, "-c", "from mora_platform.cli import main; main()"]


def _port_env(ports: dict[str, int]) -> dict[str, str]:
    return {f"MORA_STACK_{field.upper()}": str(port) for field, port in ports.items()}


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORA_")}
    env.update({"MORA_HOME": str(home), "COLUMNS": "200", "MORA_STACK_RAY_NUM_CPUS": "1"})
    return env


def _run(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(MORA + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture()
def stack_dir(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, str], dict[str, int]]]:
    """A working directory, the environment for `mora`, and the ports; whatever was started is stopped."""
    work = tmp_path_factory.mktemp("stack")
    listening = [name for name in StackSettings.port_names().values() if "worker" not in name]
    ports = dict(zip(listening, free_ports(len(listening)), strict=True))
    ports["ray_min_worker_port"] = 32_100
    ports["ray_max_worker_port"] = 32_199
    env = _base_env(work / ".mora") | _port_env(ports)
    try:
        yield work, env, ports
    finally:
        for record_file in (work / ".mora" / "run").glob("*.json"):
            record = ProcessRecord.load(record_file)
            if record is not None:
                for proc in record.family():
                    proc.kill()


def test_taken_ray_dashboard_port_is_named(stack_dir: tuple[Path, dict[str, str], dict[str, int]]) -> None:
    work, env, ports = stack_dir
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["ray_dashboard_port"]))
        squatter.listen()
        result = _run(["stack", "up"], env, work)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert f"port {ports['ray_dashboard_port']} (dashboard)" in message
    assert "--port ray_dashboard=N" in message and "MORA_STACK_RAY_DASHBOARD_PORT" in message
    assert not list((work / ".mora" / "run").glob("*.json"))  # the S3 server was not started either


def test_stale_pid_record_is_cleaned_up(stack_dir: tuple[Path, dict[str, str], dict[str, int]]) -> None:
    work, env, _ports = stack_dir
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    record = ProcessRecord("ray", finished.pid, 1.0, ["ray"], str(work / "ray.log"), "2026-01-01T00:00:00")
    record.save(work / ".mora" / "run" / "ray.json")
    (work / ".mora" / "run" / "s3.json").write_text("{not json")

    down = _run(["stack", "down"], env, work)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("stale PID record removed") == 2
    assert not list((work / ".mora" / "run").glob("*.json"))
    status = _run(["stack", "status"], env, work)
    assert status.returncode == 1 and status.stdout.count("stopped") == 2
