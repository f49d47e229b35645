"""A single-node Ray head we own: ``ray start --head --block`` as a child in its own session.

``--block`` keeps the ``ray start`` process alive as the leader of every Ray process it starts, so
stopping it (SIGTERM to that one PID) shuts the whole node down cleanly; signalling the whole
group at once instead kills the GCS first and makes the leader hang 30 s trying to drain.
Ray resolves 127.0.0.1 to the machine's address internally; the dashboard still binds 127.0.0.1.

Job entrypoints (``python jobs/retrain_fleet.py ...``) run in a shell on the head with the head's
``PATH``: the head therefore gets this interpreter's ``bin/`` first on its ``PATH`` (whoever started
it, virtualenv active or not), and records the interpreter so ``mora stack up`` can tell a head
started from another environment.

Token authentication: Ray 2.60 turns it on for a new head whenever ``~/.ray/auth_token`` exists
(any earlier ``ray.init()`` on the machine writes one), and then every client must send the token.
The mode is therefore set explicitly (``RAY_AUTH_MODE`` of the child), default "disabled", so the
stack behaves the same on every machine; ``extra_env`` can pass RAY_AUTH_MODE=token and a token.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from infra.local.processes import (
    ProcessRecord,
    ProcessStartError,
    check_ports,
    find_executable,
    free_ports,
    log_tail,
    spawn,
    stop,
    wait_until,
)


@dataclass(frozen=True)
class RayPorts:
    """Fixed ports of the head node (Ray picks the others at random)."""

    gcs: int = 6379
    dashboard: int = 8265
    client: int = 10001
    dashboard_agent: int = 52365
    metrics_export: int = 8266
    min_worker: int = 20002
    max_worker: int = 29999

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> RayPorts:
        """Free listening ports for a throw-away head.

        Raylets hand out worker ports from the bottom of their range, so two heads with the same
        range collide on their first workers; each throw-away head gets one of 27 windows of 100
        ports in 30000-32699 (chosen from its GCS port): below the OS's ephemeral range, away from
        the stack's default 20002-29999 and from Ray's own default 10002-19999.
        """
        gcs, dashboard, client, agent, metrics = free_ports(5, host)
        low = 30_000 + 100 * (gcs % 27)
        return cls(
            gcs=gcs,
            dashboard=dashboard,
            client=client,
            dashboard_agent=agent,
            metrics_export=metrics,
            min_worker=low,
            max_worker=low + 99,
        )

    def listening(self) -> dict[str, int]:
        """The single ports that must be free before starting (not the worker range)."""
        ports = asdict(self)
        ports.pop("min_worker")
        ports.pop("max_worker")
        return ports


def interpreter() -> str:
    """This environment's Python (the virtualenv's, not what it links to): what the head's jobs run."""
    return str(Path(sys.executable).absolute())


def head_environment(base: dict[str, str], python: str | None = None) -> dict[str, str]:
    """``base`` with ``python``'s ``bin/`` first on ``PATH`` (and ``VIRTUAL_ENV`` when it is a venv)."""
    python = python or interpreter()
    bin_dir = str(Path(python).parent)
    env = dict(base)
    rest = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry and entry != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *rest])
    venv = Path(bin_dir).parent
    if (venv / "pyvenv.cfg").is_file():
        env["VIRTUAL_ENV"] = str(venv)
    else:
        env.pop("VIRTUAL_ENV", None)
    return env


def default_temp_dir(home: Path) -> Path:
    """A short per-home directory for Ray's session files (its socket paths must stay under ~107 bytes)."""
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"mora-ray-{digest}"


class RayHead:
    """One Ray head node on this machine, started and stopped by PID."""

    def __init__(
        self,
        ports: RayPorts,
        log_path: Path,
        *,
        temp_dir: Path | None = None,
        host: str = "127.0.0.1",
        num_cpus: int | None = None,
        object_store_memory: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.ports = ports
        self.log_path = log_path
        self.temp_dir = temp_dir or default_temp_dir(log_path.parent)
        self.host = host
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.extra_env = {"RAY_AUTH_MODE": "disabled", **(extra_env or {})}
        self.record: ProcessRecord | None = None

    @property
    def address(self) -> str:
        """The GCS address for ``ray.init(address=...)``."""
        return f"{self.host}:{self.ports.gcs}"

    @property
    def metrics_url(self) -> str:
        """The node's Prometheus metrics (Ray's own and the platform's ``ray_mora_*``)."""
        return f"http://{self.host}:{self.ports.metrics_export}/metrics"

    @property
    def dashboard_url(self) -> str:
        """Dashboard and Jobs API base URL."""
        return f"http://{self.host}:{self.ports.dashboard}"

    def command(self) -> list[str]:
        """The ``ray start`` command line."""
        p = self.ports
        command = [
            str(find_executable("ray")),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            self.host,
            "--port",
            str(p.gcs),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            self.host,
            "--dashboard-port",
            str(p.dashboard),
            "--ray-client-server-port",
            str(p.client),
            "--dashboard-agent-listen-port",
            str(p.dashboard_agent),
            "--metrics-export-port",
            str(p.metrics_export),
            "--min-worker-port",
            str(p.min_worker),
            "--max-worker-port",
            str(p.max_worker),
            "--temp-dir",
            str(self.temp_dir),
            "--disable-usage-stats",
        ]
        if self.num_cpus is not None:
            command += ["--num-cpus", str(self.num_cpus)]
        if self.object_store_memory is not None:
            command += ["--object-store-memory", str(self.object_store_memory)]
        return command

    def check_ports(self, hint_for: dict[str, str] | None = None) -> None:
        """Raise ``PortInUseError`` naming the first taken port."""
        hints = hint_for or {}
        check_ports(
            "Ray head",
            self.ports.listening(),
            self.host,
            lambda name: hints.get(name, f"pass another {name} port to RayHead"),
        )

    def start(self, timeout: float = 120.0) -> ProcessRecord:
        """Start the head and wait until the dashboard answers and reports the GCS healthy."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        env = head_environment(dict(os.environ))
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env.update(self.extra_env)
        record = spawn(
            "ray",
            self.command(),
            self.log_path,
            env=env,
            details={
                "address": self.address,
                "dashboard_url": self.dashboard_url,
                "metrics_url": self.metrics_url,
                "ports": asdict(self.ports),
                "temp_dir": str(self.temp_dir),
                "python": interpreter(),
            },
        )
        self.record = record
        try:
            self.wait_ready(timeout)
        except ProcessStartError:
            self.stop(timeout=10.0)
            raise
        return record

    def wait_ready(self, timeout: float) -> None:
        """Poll the dashboard until it answers and the GCS is healthy."""

        def died() -> str | None:
            if self.record is not None and not self.record.is_alive():
                return f"`ray start` exited during start-up; log {self.log_path}:\n{log_tail(self.log_path)}"
            return None

        headers = _auth_headers(self.extra_env)
        wait_until(
            lambda: dashboard_healthy(self.dashboard_url, headers=headers),
            timeout=timeout,
            what=f"Ray head (dashboard {self.dashboard_url})",
            abort=died,
            interval=0.5,
        )

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM the ``ray start`` leader (it stops its node), SIGKILL leftovers after ``timeout``."""
        if self.record is None:
            return []
        pids = stop(self.record, timeout)
        self.record = None
        return pids


def dashboard_healthy(
    dashboard_url: str, timeout: float = 3.0, headers: dict[str, str] | None = None
) -> bool:
    """Whether the Ray dashboard answers ``/api/version`` and its GCS health check succeeds."""
    try:
        version = httpx.get(f"{dashboard_url}/api/version", timeout=timeout, headers=headers)
        if version.status_code != 200:
            return False
        health = httpx.get(f"{dashboard_url}/api/gcs_healthz", timeout=timeout, headers=headers)
    except httpx.HTTPError:
        return False
    return health.status_code == 200


def _auth_headers(env: dict[str, str]) -> dict[str, str] | None:
    """The bearer header for a head started with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN."""
    if env.get("RAY_AUTH_MODE") == "token" and env.get("RAY_AUTH_TOKEN"):
        return {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}
    return None
