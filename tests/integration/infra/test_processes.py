"""PID records and stopping: real child processes, a process that ignores SIGTERM, stale records."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from infra.local.processes import PortInUseError, ProcessRecord, check_ports, port_in_use, spawn, stop

pytestmark = pytest.mark.integration

# A parent that starts two children, then ignores SIGTERM (optionally) and sleeps.
_TREE = """
import signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]) for _ in range(2)]
print("ready", flush=True)
time.sleep(300)
"""


def _wait_for_family(record: ProcessRecord, size: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        family = record.family()
        if len(family) >= size:
            return family
        time.sleep(0.1)
    raise AssertionError(f"expected {size} processes, got {record.family()}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("mode", ["polite", "stubborn"])
def test_stop_ends_the_whole_family(mode: str, tmp_path: Path) -> None:
    record = spawn("tree", [sys.executable, "-c", _TREE, mode], tmp_path / "tree.log")
    record.save(tmp_path / "tree.json")
    assert ProcessRecord.load(tmp_path / "tree.json") == record
    family = _wait_for_family(record, 3)
    pids = [proc.pid for proc in family]
    assert record.is_alive()

    began = time.monotonic()
    stopped = stop(record, timeout=1.5)  # the children ignore their parent's death: SIGKILLed after it
    elapsed = time.monotonic() - began
    assert sorted(stopped) == sorted(pids)
    assert not [pid for pid in pids if _alive(pid)]
    assert not record.is_alive()
    if mode == "stubborn":
        assert elapsed >= 1.5  # waited for the deadline, then SIGKILL
    assert "starting" in (tmp_path / "tree.log").read_text()


def test_a_reused_or_dead_pid_is_stale(tmp_path: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = ProcessRecord("x", finished.pid, 1.0, ["x"], "", "")
    assert not dead.is_alive()
    assert dead.family() == []
    assert stop(dead, timeout=1) == []

    me = psutil.Process()
    impostor = ProcessRecord("x", me.pid, me.create_time() - 100.0, ["x"], "", "")
    assert not impostor.is_alive()  # same PID, different process: never ours to signal
    assert impostor.family() == []
    (tmp_path / "broken.json").write_text("{")
    assert ProcessRecord.load(tmp_path / "broken.json") is None
    assert ProcessRecord.load(tmp_path / "missing.json") is None


def test_port_checks_name_the_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use(port)
        with pytest.raises(PortInUseError) as caught:
            check_ports("demo", {"web": port}, "127.0.0.1", lambda name: f"set --{name}-port")
    assert f"demo: port {port} (web) on 127.0.0.1 is already in use" in str(caught.value)
    assert "set --web-port" in str(caught.value)
    assert caught.value.port == port
    assert not port_in_use(port)
