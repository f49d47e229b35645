"""`mora stack up / status / down` end to end: real weed and Ray processes, free ports, a temporary MORA_HOME."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from infra.local.config import StackSettings
from infra.local.envfile import read_env_file
from infra.local.processes import ProcessRecord, free_ports
from mora_platform.storage.errors import StorageAuthError
from mora_platform.storage.object_store import ObjectStore

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


def test_stack_up_status_down(stack_dir: tuple[Path, dict[str, str], dict[str, int]]) -> None:
    work, env, ports = stack_dir
    home = work / ".mora"

    began = time.monotonic()
    up = _run(["stack", "up"], env, work)
    up_seconds = time.monotonic() - began
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"`mora stack up` took {up_seconds:.1f} s")  # reported in the test log (-s)
    assert up.stdout.count("started") >= 2

    # stack.env: endpoints and credentials, owner-only; identities too
    env_file = home / "stack.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "s3" / "identities.json").stat().st_mode) == 0o600
    values = read_env_file(env_file)
    assert values["MORA_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['s3_port']}"
    assert values["MORA_RAY_ADDRESS"] == f"127.0.0.1:{ports['ray_port']}"
    assert values["MORA_RAY_DASHBOARD_URL"] == f"http://127.0.0.1:{ports['ray_dashboard_port']}"
    secret = values["MORA_S3_SECRET_KEY"]
    assert len(secret) >= 32

    # the S3 server really has auth on, with the generated credentials
    store = ObjectStore(
        values["MORA_S3_ENDPOINT_URL"], values["MORA_S3_BUCKET"], values["MORA_S3_ACCESS_KEY"], secret
    )
    store.put_bytes("probe", b"ok")
    assert store.get_bytes("probe") == b"ok"
    with pytest.raises(StorageAuthError):
        ObjectStore(values["MORA_S3_ENDPOINT_URL"], values["MORA_S3_BUCKET"], None, None).get_bytes("probe")

    status = _run(["stack", "status"], env, work)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("running") == 2
    assert "anonymous refused" in status.stdout and "GCS healthy" in status.stdout

    records = {name: ProcessRecord.load(home / "run" / f"{name}.json") for name in ("s3", "ray")}
    assert all(record is not None and record.is_alive() for record in records.values())
    ours = {proc.pid for record in records.values() if record for proc in record.family()}
    assert len(ours) > 3  # weed + ray start + gcs_server, raylet, dashboard, ...

    # a second `up` starts nothing
    again = _run(["stack", "up"], env, work)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == 2
    assert {name: ProcessRecord.load(home / "run" / f"{name}.json") for name in records} == records

    # a taken port: a second stack on the same S3 port is refused before anything starts
    other = work / "other"
    other.mkdir()
    clash = _run(["stack", "up"], _base_env(other / ".mora") | _port_env(ports), other)
    assert clash.returncode == 2
    message = " ".join(clash.stderr.split())
    assert f"port {ports['s3_port']} (s3)" in message
    assert "--port s3=N" in message and "MORA_STACK_S3_PORT" in message
    assert not list((other / ".mora" / "run").glob("*.json"))

    # no secret ever printed
    for output in (up, status, again, clash):
        assert secret not in output.stdout + output.stderr

    down = _run(["stack", "down"], env, work)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count("│ stopped") == 2
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in ours) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in ours if _alive(pid)]
    assert not list((home / "run").glob("*.json"))
    # a stopped head is no address: later commands start a local Ray instead of dialling a dead one
    left = read_env_file(env_file)
    assert "MORA_RAY_ADDRESS" not in left and left["MORA_S3_SECRET_KEY"] == secret

    after = _run(["stack", "status"], env, work)
    assert after.returncode == 1
    assert after.stdout.count("stopped") == 2


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
