"""Child processes we own: start detached, remember by PID file, stop exactly those by PID.

A PID alone can be reused by the OS after a crash, so a record also keeps the process's
creation time; a record whose PID now belongs to another process (or to nobody) is stale.
Stopping sends SIGTERM to the leader (it shuts its own children down), waits with a deadline
for the leader and everything it started, then SIGKILLs whatever is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

_CREATE_TIME_TOLERANCE = 0.05  # seconds; psutil reports creation time with limited precision


class PortInUseError(RuntimeError):
    """A port a component needs is taken; the message names the port and how to change it."""

    def __init__(self, component: str, port_name: str, port: int, host: str, hint: str) -> None:
        self.component = component
        self.port_name = port_name
        self.port = port
        self.host = host
        owner = _port_owner(port)
        by = f" by {owner}" if owner else ""
        super().__init__(
            f"{component}: port {port} ({port_name}) on {host} is already in use{by}. "
            f"Stop whatever holds it or choose another port: {hint}"
        )


class ProcessStartError(RuntimeError):
    """A child did not start or did not become ready in time (the message includes its log tail)."""


def find_executable(name: str) -> Path:
    """``name`` next to the running interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise FileNotFoundError(
        f"executable {name!r} not found next to {sys.executable} or on PATH (is the project installed?)"
    )


@dataclass(frozen=True)
class ProcessRecord:
    """What we need to find (and only find) a process we started: PID + creation time."""

    name: str
    pid: int
    create_time: float
    command: list[str]
    log_path: str
    started_at: str
    details: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write the record as JSON (atomically)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        """The record in ``path``, or None if there is none or it is unreadable."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def process(self) -> psutil.Process | None:
        """The live process this record names, or None if it exited or the PID was reused."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > _CREATE_TIME_TOLERANCE:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def _same_pid_owner(self) -> bool:
        """Whether the PID still names the process we started (alive or a zombie)."""
        try:
            return abs(psutil.Process(self.pid).create_time() - self.create_time) <= _CREATE_TIME_TOLERANCE
        except psutil.Error:
            return False

    def is_alive(self) -> bool:
        """Whether the process we started is still running."""
        return self.process() is not None

    def family(self) -> list[psutil.Process]:
        """The leader, its descendants and members of its process group started after it."""
        leader = self.process()
        found: dict[int, psutil.Process] = {}
        if leader is not None:
            found[leader.pid] = leader
            with contextlib.suppress(psutil.Error):
                for child in leader.children(recursive=True):
                    found[child.pid] = child
        if leader is None and psutil.pid_exists(self.pid) and not self._same_pid_owner():
            return list(found.values())  # the PID now belongs to someone else: so may its process group
        for proc in psutil.process_iter(["pid", "create_time"]):
            try:
                if proc.pid in found or proc.info["create_time"] + _CREATE_TIME_TOLERANCE < self.create_time:
                    continue
                if os.getpgid(proc.pid) == self.pid:
                    found[proc.pid] = proc
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return list(found.values())


def spawn(
    name: str,
    command: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    details: dict[str, Any] | None = None,
) -> ProcessRecord:
    """Start ``command`` in its own session (so it survives us and has its own process group)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n=== {datetime.now(UTC).isoformat()} starting: {' '.join(command)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    # The Popen object is dropped on purpose: the child outlives this process; we track it by PID.
    popen.returncode = 0  # keeps Popen.__del__ from warning about a "still running" child
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess as exc:
        raise ProcessStartError(f"{name} exited immediately; see {log_path}\n{log_tail(log_path)}") from exc
    return ProcessRecord(
        name=name,
        pid=popen.pid,
        create_time=create_time,
        command=list(command),
        log_path=str(log_path),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        details=dict(details or {}),
    )


def stop(record: ProcessRecord, timeout: float) -> list[int]:
    """SIGTERM the leader, wait up to ``timeout`` s for it and its family, SIGKILL the rest.

    Returns the PIDs that were running when we started stopping. Only processes found through
    this record are signalled.
    """
    family = record.family()
    leader = record.process()
    pids = sorted(proc.pid for proc in family)
    if leader is not None:
        with contextlib.suppress(psutil.Error):
            leader.send_signal(signal.SIGTERM)
    else:
        for proc in family:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(family, timeout=timeout)
    # Children the leader started while shutting down are caught by a second look at the family.
    survivors = {proc.pid: proc for proc in alive}
    for proc in record.family():
        survivors.setdefault(proc.pid, proc)
    for proc in survivors.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(list(survivors.values()), timeout=5)
    return pids


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``check`` until it is true or ``timeout`` passes; ``abort`` may return a reason to stop early."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if abort is not None:
            reason = abort()
            if reason:
                raise ProcessStartError(f"{what}: {reason}")
        if time.monotonic() >= deadline:
            raise ProcessStartError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(interval)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether binding ``host:port`` fails (as a server would, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(component: str, ports: Mapping[str, int], host: str, hint: Callable[[str], str]) -> None:
    """Raise ``PortInUseError`` for the first taken port; ``hint(port_name)`` says how to change it."""
    for port_name, port in ports.items():
        if port_in_use(port, host):
            raise PortInUseError(component, port_name, port, host, hint(port_name))


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the OS reports free right now (held open together so they differ)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _port_owner(port: int) -> str | None:
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
    except (psutil.Error, OSError):
        return None
    return None
