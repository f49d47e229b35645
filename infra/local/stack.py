"""The local stack behind ``mora stack up | down | status``: one S3 server and one Ray head.

State lives under ``MORA_HOME`` (default ``~/.mora``): ``s3/`` (data and identities), ``run/``
(one PID record per component), ``logs/`` and ``stack.env`` (endpoints and credentials).
``up`` starts only what is not already running, checks every port before starting anything,
and starts both components at once; ``down`` stops exactly the processes ``up`` recorded.
The Ray head runs with this environment's interpreter first on its PATH and ``MORA_HOME`` set, so
jobs submitted to it (``mora retrain`` or a plain ``ray job submit``) run the platform's Python and
read their settings, credentials included, from ``$MORA_HOME/stack.env``, never from the job's
runtime_env. A running head started from another environment is refused with what to do.

The Ray head listens on 127.0.0.1 only and runs with Ray's token authentication; the token is
generated on its first start into ``$MORA_HOME/ray_auth_token`` (0600) and never printed. Every
``mora`` command that talks to the head sends it (``infra.local.ray_head.client_env``); a head
left running without token auth by an older ``mora`` is refused with what to do.

The model manifests' signing key is generated the same way on the first ``up`` into
``$MORA_HOME/signing_key`` (0600, never printed, never in ``stack.env`` or S3): the publisher (``mora
train``, the retrain jobs on the head) signs with it and every reader verifies with it
(``mora_platform.registry.signing``), so a model written straight into the S3 server is not served.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from infra.local.config import RAY_PORT_FIELDS, WEED_PORT_FIELDS, StackSettings, port_hint
from infra.local.envfile import read_env_file, stack_env_path, update_env_file
from infra.local.processes import ProcessRecord, ProcessStartError, stop, wait_until
from infra.local.ray_head import (
    RayHead,
    client_headers,
    dashboard_healthy,
    default_temp_dir,
    interpreter,
    token_path,
)
from infra.local.sockets import beyond_loopback, listening_sockets
from infra.local.weed import WeedServer
from mora_platform.settings import ensure_signing_key, signing_key_path
from mora_platform.storage.errors import StorageError
from mora_platform.storage.object_store import ObjectStore

COMPONENTS: tuple[str, ...] = ("s3", "ray")


class ForeignHeadError(RuntimeError):
    """The recorded Ray head runs jobs with another Python than this command's."""


@dataclass
class ComponentStatus:
    """One row of ``up`` / ``down`` / ``status`` output (never holds secrets)."""

    component: str
    state: str
    pid: int | None = None
    endpoint: str = ""
    health: str = ""
    healthy: bool = False
    pids: list[int] = field(default_factory=list)
    seconds: float | None = None


class LocalStack:
    """Start, stop and inspect the local S3 server and Ray head recorded under ``home``."""

    def __init__(self, home: Path, config: StackSettings, *, bucket: str, region: str = "us-east-1") -> None:
        self.home = Path(home).resolve()
        self.config = config
        self.bucket = bucket
        self.region = region
        self.run_dir = self.home / "run"
        self.logs_dir = self.home / "logs"
        self.s3_dir = self.home / "s3"
        self.env_file = stack_env_path(self.home)
        self.ray_token_file = token_path(self.home)
        self._env_lock = threading.Lock()

    # -- records --------------------------------------------------------------------------------

    def record_path(self, component: str) -> Path:
        """``run/{component}.json``."""
        return self.run_dir / f"{component}.json"

    def live_record(self, component: str) -> tuple[ProcessRecord | None, bool]:
        """(the running process we recorded, whether a stale record was found and removed)."""
        path = self.record_path(component)
        record = ProcessRecord.load(path)
        if record is None:
            stale = path.exists()
            path.unlink(missing_ok=True)
            return None, stale
        if record.is_alive():
            return record, False
        path.unlink(missing_ok=True)
        return None, True

    # -- credentials ----------------------------------------------------------------------------

    def credentials(self) -> tuple[str, str]:
        """The S3 key pair kept in stack.env, generated (and saved, 0600) on first use."""
        with self._env_lock:
            values = read_env_file(self.env_file)
            access_key = values.get("MORA_S3_ACCESS_KEY")
            secret_key = values.get("MORA_S3_SECRET_KEY")
            if not access_key or not secret_key:
                access_key = "mora" + secrets.token_hex(8)
                secret_key = secrets.token_urlsafe(32)
                update_env_file(
                    self.env_file, {"MORA_S3_ACCESS_KEY": access_key, "MORA_S3_SECRET_KEY": secret_key}
                )
            return access_key, secret_key

    def _update_env(self, values: dict[str, str]) -> None:
        with self._env_lock:
            update_env_file(self.env_file, values)

    # -- components -----------------------------------------------------------------------------

    def weed_server(self) -> WeedServer:
        """The S3 server as configured (not started)."""
        access_key, secret_key = self.credentials()
        return WeedServer(
            self.s3_dir / "data",
            self.config.weed_ports(),
            access_key,
            secret_key,
            log_path=self.logs_dir / "weed.log",
            config_path=self.s3_dir / "identities.json",
        )

    def ray_head(self) -> RayHead:
        """The Ray head as configured (not started)."""
        return RayHead(
            self.config.ray_ports(),
            self.logs_dir / "ray.log",
            temp_dir=self.config.ray_temp_dir or default_temp_dir(self.home),
            num_cpus=self.config.ray_num_cpus,
            object_store_memory=self.config.ray_object_store_bytes,
            extra_env={"MORA_HOME": str(self.home)},
            auth_token_path=self.ray_token_file if self.config.ray_auth == "token" else None,
        )

    def check_head_environment(self, record: ProcessRecord) -> None:
        """Raise ``ForeignHeadError`` when the running head was started from another Python environment,
        or without the token authentication this configuration asks for."""
        started_with = record.details.get("python")
        here = interpreter()
        if started_with == here:
            if self.config.ray_auth == "token" and record.details.get("auth") != "token":
                raise ForeignHeadError(
                    f"the Ray head (PID {record.pid}) runs without token authentication (started by an "
                    "older `mora` or with MORA_STACK_RAY_AUTH=disabled): anyone who reaches its ports "
                    "can run code as you. Restart it: `mora stack down --component ray && mora stack up`"
                )
            return
        origin = (
            f"from {started_with}" if started_with else "by an older `mora` that did not record its Python"
        )
        raise ForeignHeadError(
            f"the Ray head (PID {record.pid}) was started {origin}; its jobs would not run with "
            f"this environment's Python ({here}). Stop it and start it again from here: "
            "`mora stack down --component ray && mora stack up` (or `make stack-down && make demo`)"
        )

    # -- up -------------------------------------------------------------------------------------

    def up(
        self, components: Sequence[str] = COMPONENTS, progress: Callable[[str], None] | None = None
    ) -> list[ComponentStatus]:
        """Start what is not running; raises ``PortInUseError`` before starting anything if a port is taken."""
        say = progress or (lambda _message: None)
        wanted = [c for c in COMPONENTS if c in components]
        ensure_signing_key(signing_key_path(self.home))  # before any job can publish
        to_start: list[str] = []
        results: dict[str, ComponentStatus] = {}
        for component in wanted:
            record, stale = self.live_record(component)
            if stale:
                say(f"{component}: removed a stale PID record (the process had exited)")
            if record is not None:
                if component == "ray":
                    self.check_head_environment(record)
                results[component] = self._status_of(component, record, state="already running")
            else:
                to_start.append(component)
        weed = self.weed_server() if "s3" in to_start else None
        ray = self.ray_head() if "ray" in to_start else None
        if weed is not None:
            weed.check_ports({attr: port_hint(fld) for attr, fld in WEED_PORT_FIELDS.items()})
        if ray is not None:
            ray.check_ports({attr: port_hint(fld) for attr, fld in RAY_PORT_FIELDS.items()})
        starters: dict[str, Callable[[], ComponentStatus]] = {}
        if weed is not None:
            starters["s3"] = lambda: self._start_s3(weed, say)
        if ray is not None:
            starters["ray"] = lambda: self._start_ray(ray, say)
        with ThreadPoolExecutor(max_workers=max(1, len(starters))) as pool:
            futures = {name: pool.submit(start) for name, start in starters.items()}
            errors: list[str] = []
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except (ProcessStartError, StorageError, OSError) as exc:
                    errors.append(f"{name}: {exc}")
        if errors:
            raise ProcessStartError("; ".join(errors))
        return [results[c] for c in wanted]

    def _start_s3(self, weed: WeedServer, say: Callable[[str], None]) -> ComponentStatus:
        began = time.monotonic()
        say(f"s3: starting weed on {weed.endpoint_url} (log {weed.log_path})")
        self._update_env({"MORA_S3_ENDPOINT_URL": weed.endpoint_url, "MORA_S3_BUCKET": self.bucket})
        record = weed.start(timeout=self.config.start_timeout)
        record.save(self.record_path("s3"))
        access_key, secret_key = self.credentials()
        store = ObjectStore(
            weed.endpoint_url, self.bucket, access_key, secret_key, self.region, max_attempts=2
        )

        def bucket_ready() -> bool:
            try:
                store.ensure_bucket()
            except StorageError:
                return False
            return True

        try:
            wait_until(
                bucket_ready, timeout=self.config.start_timeout, what=f"creating bucket {self.bucket!r}"
            )
        except ProcessStartError:
            weed.stop(timeout=self.config.stop_timeout)
            self.record_path("s3").unlink(missing_ok=True)
            raise
        status = self._status_of("s3", record, state="started")
        status.seconds = time.monotonic() - began
        return status

    def _start_ray(self, ray: RayHead, say: Callable[[str], None]) -> ComponentStatus:
        began = time.monotonic()
        say(f"ray: starting head, dashboard {ray.dashboard_url} (log {ray.log_path})")
        record = ray.start(timeout=self.config.start_timeout)
        record.save(self.record_path("ray"))
        self._update_env({"MORA_RAY_ADDRESS": ray.address, "MORA_RAY_DASHBOARD_URL": ray.dashboard_url})
        status = self._status_of("ray", record, state="started")
        status.seconds = time.monotonic() - began
        return status

    # -- down -----------------------------------------------------------------------------------

    def down(self, components: Sequence[str] = COMPONENTS) -> list[ComponentStatus]:
        """Stop what ``up`` recorded (SIGTERM, then SIGKILL after ``stop_timeout``), in parallel."""
        wanted = [c for c in COMPONENTS if c in components]
        results: dict[str, ComponentStatus] = {}
        running: dict[str, ProcessRecord] = {}
        for component in wanted:
            record, stale = self.live_record(component)
            if record is None:
                state = "not running (stale PID record removed)" if stale else "not running"
                results[component] = ComponentStatus(component, state, healthy=True)
            else:
                running[component] = record

        def stop_timed(record: ProcessRecord) -> tuple[list[int], float]:
            began = time.monotonic()
            pids = stop(record, self.config.stop_timeout)
            return pids, time.monotonic() - began

        with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            futures = {name: pool.submit(stop_timed, record) for name, record in running.items()}
            for name, future in futures.items():
                pids, seconds = future.result()
                self.record_path(name).unlink(missing_ok=True)
                if name == "ray":  # a stopped head is no address to connect to: commands start a local Ray
                    with self._env_lock:
                        update_env_file(self.env_file, {}, remove=("MORA_RAY_ADDRESS",))
                results[name] = ComponentStatus(
                    name, "stopped", pid=running[name].pid, pids=pids, healthy=True, seconds=seconds
                )
        return [results[c] for c in wanted]

    # -- status ---------------------------------------------------------------------------------

    def status(self, components: Sequence[str] = COMPONENTS) -> list[ComponentStatus]:
        """Endpoints and health of each component (running ones are probed)."""
        rows = []
        for component in [c for c in COMPONENTS if c in components]:
            record, _stale = self.live_record(component)
            if record is None:
                rows.append(self._stopped_status(component))
            else:
                rows.append(self._status_of(component, record, state="running"))
        return rows

    def _stopped_status(self, component: str) -> ComponentStatus:
        if component == "s3":
            endpoint = f"http://127.0.0.1:{self.config.s3_port}"
        else:
            endpoint = f"http://127.0.0.1:{self.config.ray_dashboard_port}"
        return ComponentStatus(component, "stopped", endpoint=endpoint, health="-", healthy=False)

    def _status_of(self, component: str, record: ProcessRecord, *, state: str) -> ComponentStatus:
        details = record.details
        auth_on = True
        if component == "s3":
            endpoint = str(details.get("endpoint_url", ""))
            health, healthy = self._s3_health(endpoint)
        else:
            endpoint = f"{details.get('address', '')}, dashboard {details.get('dashboard_url', '')}"
            if details.get("metrics_url"):
                endpoint += f", metrics {details['metrics_url']}"
            dashboard_url = str(details.get("dashboard_url", ""))
            health, healthy = _ray_health(dashboard_url, client_headers(self.home, dashboard_url))
            auth_on = details.get("auth") == "token"
            health += ", token auth on" if auth_on else ", TOKEN AUTH OFF"
        # Read from the OS (psutil), never by connecting: what another host could reach.
        exposed = beyond_loopback(listening_sockets(proc.pid for proc in record.family()))
        if exposed:
            shown = ", ".join(str(item) for item in exposed[:3])
            health += f"; {len(exposed)} port(s) beyond loopback: {shown}"
        else:
            health += ", loopback only"
        healthy = healthy and (auth_on or not exposed)
        return ComponentStatus(
            component, state, pid=record.pid, endpoint=endpoint, health=health, healthy=healthy
        )

    def _s3_health(self, endpoint: str) -> tuple[str, bool]:
        values = read_env_file(self.env_file)
        access_key, secret_key = values.get("MORA_S3_ACCESS_KEY"), values.get("MORA_S3_SECRET_KEY")
        if not access_key or not secret_key:
            return f"no credentials in {self.env_file}", False
        try:
            ObjectStore(endpoint, self.bucket, access_key, secret_key, self.region, max_attempts=1).check()
        except StorageError as exc:
            return f"error: {exc}", False
        try:
            ObjectStore(endpoint, self.bucket, None, None, self.region, max_attempts=1).check()
        except StorageError:
            return f"ok: bucket {self.bucket!r} reachable with auth, anonymous refused", True
        return "open: anonymous access is allowed (auth not enforced)", False


def _ray_health(dashboard_url: str, headers: dict[str, str] | None = None) -> tuple[str, bool]:
    if not dashboard_healthy(dashboard_url, headers=headers):
        return "dashboard not answering", False
    try:
        answer = httpx.get(f"{dashboard_url}/api/version", timeout=3.0, headers=headers)
        version = answer.json().get("ray_version", "?")
    except (httpx.HTTPError, ValueError):
        version = "?"
    return f"ok: dashboard answering, GCS healthy (Ray {version})", True
