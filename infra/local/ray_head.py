"""A single-node Ray head we own: ``ray start --head --block`` as a child in its own session.

``--block`` keeps the ``ray start`` process alive as the leader of every Ray process it starts, so
stopping it (SIGTERM to that one PID) shuts the whole node down cleanly; signalling the whole
group at once instead kills the GCS first and makes the leader hang 30 s trying to drain.

Loopback only: ``ray start --node-ip-address 127.0.0.1`` alone is not enough, because Ray swaps a
loopback node address for the machine's address (``resolve_ip_for_localhost``), and then the GCS,
raylet and dashboard agent listen on all interfaces, the Ray client server, runtime-env agent and
metrics exporter on the machine's address. With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's
switch for single-node-only clusters) the node address stays 127.0.0.1 and every process of the
node (GCS, raylet, object manager, dashboard and its agent, client server, runtime-env agent,
metrics exporter, workers) binds 127.0.0.1. Such a head cannot take other nodes, which is the point.

Job entrypoints (``python jobs/retrain_fleet.py ...``) run in a shell on the head with the head's
``PATH``: the head therefore gets this interpreter's ``bin/`` first on its ``PATH`` (whoever started
it, virtualenv active or not), and records the interpreter so ``mora stack up`` can tell a head
started from another environment.

Token authentication: with ``auth_token_path`` the head runs with ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` naming that file (0600), so every gRPC call to the GCS, raylet and client
server and every dashboard / Jobs API request needs the token; Ray reads it from the file, so it
is in no command line and no process environment. Clients get the same two variables
(``client_env``). Without a token file the mode is set explicitly to "disabled" (Ray 2.60 would
otherwise turn token auth on whenever ``~/.ray/auth_token`` exists, and the throw-away heads of
the tests would depend on the machine); ``extra_env`` can still pass RAY_AUTH_MODE=token and a token.

Ray Serve's proxy: ``serve_proxy="haproxy"`` (what ``mora stack up`` uses unless told otherwise) starts
the head with Serve's HAProxy mode, its listeners on 127.0.0.1 (``infra.local.serve_proxy``); the
default, "default", keeps Ray's Python proxy (both switches set to 0 explicitly).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
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
from infra.local.serve_proxy import (
    WRAPPER_NAME,
    ServeProxy,
    default_haproxy_dir,
    find_haproxy,
    prepare_haproxy_dir,
    remove_haproxy_dir,
    serve_proxy_env,
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
    #: Ray Serve in HAProxy mode: the head's fallback proxy, HAProxy's Prometheus exporter and stats page.
    serve_fallback: int = 8500
    haproxy_metrics: int = 9101
    haproxy_stats: int = 8404

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> RayPorts:
        """Free listening ports for a throw-away head.

        Raylets hand out worker ports from the bottom of their range, so two heads with the same
        range collide on their first workers; each throw-away head gets one of 27 windows of 100
        ports in 30000-32699 (chosen from its GCS port): below the OS's ephemeral range, away from
        the stack's default 20002-29999 and from Ray's own default 10002-19999.
        """
        gcs, dashboard, client, agent, metrics, fallback, haproxy_metrics, stats = free_ports(8, host)
        low = 30_000 + 100 * (gcs % 27)
        return cls(
            gcs=gcs,
            dashboard=dashboard,
            client=client,
            dashboard_agent=agent,
            metrics_export=metrics,
            min_worker=low,
            max_worker=low + 99,
            serve_fallback=fallback,
            haproxy_metrics=haproxy_metrics,
            haproxy_stats=stats,
        )

    def listening(self, haproxy: bool = False) -> dict[str, int]:
        """The single ports that must be free before starting (not the worker range; the Serve
        proxy's only with ``haproxy``: they are opened when Serve starts, and only in HAProxy mode)."""
        skip = {"min_worker", "max_worker", *([] if haproxy else _HAPROXY_PORTS)}
        return {name: port for name, port in asdict(self).items() if name not in skip}


#: RayPorts fields used only by Ray Serve's HAProxy mode.
_HAPROXY_PORTS = ("serve_fallback", "haproxy_metrics", "haproxy_stats")


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


#: The local stack's Ray token file, under MORA_HOME (Ray's own format: the token alone, 0600).
TOKEN_FILE_NAME = "ray_auth_token"
#: Ray's switch that keeps a node's address on loopback (see the module docstring).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def token_path(home: Path) -> Path:
    """``{home}/ray_auth_token``: the token of the head ``mora stack up`` starts."""
    return Path(home) / TOKEN_FILE_NAME


def ensure_token(path: Path) -> Path:
    """Create the token file (256 random bits, hex, mode 0600) unless it holds a token; return ``path``."""
    try:
        if path.read_text(encoding="utf-8").strip():
            os.chmod(path, 0o600)
            return path
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_hex(32))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def read_token(path: Path) -> str | None:
    """The token in ``path`` (None when the file is missing or empty)."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def is_loopback_address(address: str | None) -> bool:
    """Whether a Ray address or URL (``127.0.0.1:6379``, ``http://localhost:8265``) names this machine's loopback."""
    if not address:
        return False
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        host = rest[1:].split("]", 1)[0]
    else:
        host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_env(home: Path, address: str | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Variables a Ray client on this machine needs to talk to the local stack's head at ``address``.

    For a head on loopback: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (else ``ray.init`` swaps
    127.0.0.1 for the machine's address, where a loopback-only GCS does not listen) and, when
    ``home`` holds the stack's token file, ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH``,
    unless the caller already names a token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH in ``environ``).
    Nothing for any other cluster, which never gets the local token.
    """
    environ = dict(os.environ if environ is None else environ)
    if not is_loopback_address(address):
        return {}
    env = dict(LOOPBACK_ENV)
    path = token_path(home)
    explicit = environ.get("RAY_AUTH_TOKEN") or environ.get("RAY_AUTH_TOKEN_PATH")
    if read_token(path) is not None and not explicit:
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)})
    return env


def client_headers(home: Path, address: str | None) -> dict[str, str]:
    """The ``Authorization`` header for the local stack's dashboard / Jobs API at ``address`` (or {})."""
    token = read_token(token_path(home)) if is_loopback_address(address) else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def use_client_env(home: Path, address: str | None) -> dict[str, str]:
    """Put ``client_env`` into this process's environment (for ``ray.init``); returns what was set.

    Ray reads the loopback switch when ``ray._private.ray_constants`` is imported and caches its
    authentication settings when first used, so both are refreshed here when Ray is loaded.
    """
    env = client_env(home, address)
    if env:
        os.environ.update(env)
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in env:
            constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]
        if "RAY_AUTH_MODE" in env:
            reset_ray_auth_cache()
    return env


def reset_ray_auth_cache() -> None:
    """Make Ray in this process re-read RAY_AUTH_MODE / RAY_AUTH_TOKEN(_PATH) (no-op without Ray)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]
    except ImportError:
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


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
        auth_token_path: Path | None = None,
        serve_proxy: ServeProxy = "default",
        haproxy_dir: Path | None = None,
    ) -> None:
        self.ports = ports
        self.log_path = log_path
        self.temp_dir = temp_dir or default_temp_dir(log_path.parent)
        self.host = host
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.auth_token_path = auth_token_path
        auth = (
            {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(auth_token_path)}
            if auth_token_path is not None
            else {"RAY_AUTH_MODE": "disabled"}
        )
        loopback = LOOPBACK_ENV if is_loopback_address(host) else {}
        self.serve_proxy: ServeProxy = serve_proxy
        self.haproxy_dir = (
            (haproxy_dir or default_haproxy_dir(log_path.parent)) if serve_proxy == "haproxy" else None
        )
        proxy = serve_proxy_env(
            serve_proxy,
            self.haproxy_dir,
            fallback_port=ports.serve_fallback,
            metrics_port=ports.haproxy_metrics,
            stats_port=ports.haproxy_stats,
        )
        self.extra_env = {**loopback, **auth, **proxy, **(extra_env or {})}
        self.record: ProcessRecord | None = None

    @property
    def auth_mode(self) -> str:
        """ "token" or "disabled": what the head's RAY_AUTH_MODE will be."""
        return self.extra_env.get("RAY_AUTH_MODE", "disabled")

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
            self.ports.listening(haproxy=self.serve_proxy == "haproxy"),
            self.host,
            lambda name: hints.get(name, f"pass another {name} port to RayHead"),
        )

    def haproxy_binary(self) -> Path | None:
        """The real HAProxy Serve will run (None with the default proxy); ``HAProxyBinaryError`` if none."""
        if self.serve_proxy != "haproxy":
            return None
        assert self.haproxy_dir is not None
        return find_haproxy(exclude=self.haproxy_dir / WRAPPER_NAME)

    def _prepare_haproxy(self) -> Path | None:
        """HAProxy's directory, fresh and owner-only, with the wrapper that keeps it on loopback."""
        binary = self.haproxy_binary()
        if binary is None or self.haproxy_dir is None:
            return None
        ports = (self.ports.haproxy_metrics, self.ports.haproxy_stats)
        try:
            prepare_haproxy_dir(self.haproxy_dir, binary, ports)
        except (OSError, ValueError) as exc:
            raise ProcessStartError(f"HAProxy directory {self.haproxy_dir}: {exc}") from exc
        return binary

    def start(self, timeout: float = 120.0) -> ProcessRecord:
        """Start the head and wait until the dashboard answers and reports the GCS healthy."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        haproxy = self._prepare_haproxy()
        env = head_environment(dict(os.environ))
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        if self.auth_token_path is not None:
            ensure_token(self.auth_token_path)
            for name in _AUTH_VARIABLES:  # a token in this shell must not override the head's file
                env.pop(name, None)
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
                "auth": self.auth_mode,
                "loopback_only": bool(env.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"),
                "serve_proxy": self.serve_proxy,
                "haproxy_dir": str(self.haproxy_dir) if self.haproxy_dir else None,
                "haproxy_binary": str(haproxy) if haproxy else None,
                # where the dashboard's metrics views read from (Ray's default when unset)
                "prometheus_url": env.get("RAY_PROMETHEUS_HOST"),
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

        headers = self.auth_headers()
        wait_until(
            lambda: dashboard_healthy(self.dashboard_url, headers=headers),
            timeout=timeout,
            what=f"Ray head (dashboard {self.dashboard_url})",
            abort=died,
            interval=0.5,
        )

    def auth_headers(self) -> dict[str, str] | None:
        """The bearer header the head's dashboard wants (None when token auth is off)."""
        return _auth_headers(self.extra_env)

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM the ``ray start`` leader (it stops its node), SIGKILL leftovers after ``timeout``;
        then remove HAProxy's directory."""
        if self.record is None:
            return []
        pids = stop(self.record, timeout)
        self.record = None
        remove_haproxy_dir(self.haproxy_dir)
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
    """The bearer header for a head started with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN(_PATH)."""
    if env.get("RAY_AUTH_MODE") != "token":
        return None
    token = env.get("RAY_AUTH_TOKEN")
    if not token and env.get("RAY_AUTH_TOKEN_PATH"):
        token = read_token(Path(env["RAY_AUTH_TOKEN_PATH"]))
    return {"Authorization": f"Bearer {token}"} if token else None
