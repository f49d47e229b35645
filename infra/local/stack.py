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

An optional third component, ``prometheus`` (``mora stack up --prometheus`` or
``MORA_STACK_PROMETHEUS=true``; off by default), is Debian's Prometheus on 127.0.0.1 scraping the
head's metrics (``infra.local.ray_prometheus``). Its URL is known before anything starts, so a head
started in the same ``up`` (or while it runs) gets ``RAY_PROMETHEUS_HOST`` pointing at it and its
dashboard's metrics views read from it; a head already running without it is left alone, and ``up``
and ``status`` say how to restart it.

Ray Serve's proxy: the head runs Serve's HAProxy mode unless ``--proxy default`` or
``MORA_STACK_SERVE_PROXY=default`` (``infra.local.serve_proxy``: every listener HAProxy and the
replicas open is on 127.0.0.1, except the replicas' inter-deployment gRPC servers, which Ray binds
to ``[::]`` in either mode). A head already running with the other proxy is left alone; ``up`` says
how to restart it.
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
from infra.local.prometheus import PrometheusBinaryError
from infra.local.ray_head import (
    RayHead,
    client_headers,
    dashboard_healthy,
    default_temp_dir,
    interpreter,
    token_path,
)
from infra.local.ray_prometheus import RayPrometheus, prometheus_ready, ray_targets
from infra.local.serve_proxy import HAProxyBinaryError, default_haproxy_dir, remove_haproxy_dir
from infra.local.sockets import beyond_loopback, listening_sockets
from infra.local.weed import WeedServer
from mora_platform.settings import ensure_signing_key, signing_key_path
from mora_platform.storage.errors import StorageError
from mora_platform.storage.object_store import ObjectStore

#: Every component, in the order they are shown; ``up`` starts DEFAULT_COMPONENTS unless asked for more.
COMPONENTS: tuple[str, ...] = ("s3", "ray", "prometheus")
DEFAULT_COMPONENTS: tuple[str, ...] = ("s3", "ray")
#: How to give a running head the local Prometheus (its dashboard reads RAY_PROMETHEUS_HOST at start).
RESTART_HEAD_HINT = "`mora stack down --component ray && mora stack up`"


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
        self.prometheus_dir = self.home / "prometheus"
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

    def default_components(self) -> tuple[str, ...]:
        """What ``up`` starts when not told: s3 and ray, and prometheus when the settings ask for it."""
        return COMPONENTS if self.config.prometheus else DEFAULT_COMPONENTS

    def _recorded_components(self) -> tuple[str, ...]:
        """``default_components()``, and prometheus when it has a PID record."""
        return COMPONENTS if self.record_path("prometheus").exists() else self.default_components()

    def ray_head(self, prometheus_url: str | None = None) -> RayHead:
        """The Ray head as configured (not started); its dashboard reads metrics from ``prometheus_url``."""
        extra_env = {"MORA_HOME": str(self.home)}
        if prometheus_url:
            extra_env["RAY_PROMETHEUS_HOST"] = prometheus_url
        return RayHead(
            self.config.ray_ports(),
            self.logs_dir / "ray.log",
            temp_dir=self.config.ray_temp_dir or default_temp_dir(self.home),
            num_cpus=self.config.ray_num_cpus,
            object_store_memory=self.config.ray_object_store_bytes,
            extra_env=extra_env,
            auth_token_path=self.ray_token_file if self.config.ray_auth == "token" else None,
            serve_proxy=self.config.serve_proxy,
            haproxy_dir=default_haproxy_dir(self.home),
        )

    def prometheus(self, ray_record: ProcessRecord | None = None) -> RayPrometheus:
        """The Prometheus as configured (not started), scraping the running head ``ray_record`` if given."""
        temp_dir = self.config.ray_temp_dir or default_temp_dir(self.home)
        metrics_port = self.config.ray_metrics_export_port
        if ray_record is not None:  # the running head's session and port, whatever the settings say now
            temp_dir = Path(ray_record.details.get("temp_dir") or temp_dir)
            metrics_port = int(ray_record.details.get("ports", {}).get("metrics_export", metrics_port))
        return RayPrometheus(
            self.config.prometheus_port,
            self.prometheus_dir,
            self.logs_dir / "prometheus.log",
            ray_temp_dir=temp_dir,
            ray_metrics_port=metrics_port,
            scrape_interval=self.config.prometheus_scrape_interval,
            retention=self.config.prometheus_retention,
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
        self, components: Sequence[str] | None = None, progress: Callable[[str], None] | None = None
    ) -> list[ComponentStatus]:
        """Start what is not running (``default_components()`` unless told).

        Raises ``PortInUseError`` (a port is taken), ``PrometheusBinaryError`` (Prometheus asked
        for but not installed) or ``HAProxyBinaryError`` (HAProxy mode without an HAProxy) before
        starting anything.
        """
        say = progress or (lambda _message: None)
        chosen = self.default_components() if components is None else components
        wanted = [c for c in COMPONENTS if c in chosen]
        ensure_signing_key(signing_key_path(self.home))  # before any job can publish
        to_start: list[str] = []
        results: dict[str, ComponentStatus] = {}
        running: dict[str, ProcessRecord] = {}
        for component in wanted:
            record, stale = self.live_record(component)
            if stale:
                say(f"{component}: removed a stale PID record (the process had exited)")
            if record is not None:
                if component == "ray":
                    self.check_head_environment(record)
                running[component] = record
            else:
                to_start.append(component)
        for component in ("ray", "prometheus"):  # not asked for, but what the others must fit
            if component not in wanted:
                record, _stale = self.live_record(component)
                if record is not None:
                    running[component] = record
        prometheus = self.prometheus(running.get("ray")) if "prometheus" in to_start else None
        prometheus_url = prometheus.url if prometheus is not None else None
        if prometheus_url is None and "prometheus" in running:
            prometheus_url = str(running["prometheus"].details.get("url") or "") or None
        weed = self.weed_server() if "s3" in to_start else None
        ray = self.ray_head(prometheus_url) if "ray" in to_start else None
        if weed is not None:
            weed.check_ports({attr: port_hint(fld) for attr, fld in WEED_PORT_FIELDS.items()})
        if ray is not None:
            ray.check_ports({attr: port_hint(fld) for attr, fld in RAY_PORT_FIELDS.items()})
            ray.haproxy_binary()  # HAProxyBinaryError, with what to do, before anything starts
        if prometheus is not None:
            prometheus.check_ports(port_hint("prometheus_port"))
            prometheus.command()  # PrometheusBinaryError, with how to install it, before anything starts
        if prometheus_url and "ray" in running and self._head_prometheus(running["ray"]) != prometheus_url:
            say(
                f"ray: the running head (PID {running['ray'].pid}) was started without "
                f"RAY_PROMETHEUS_HOST={prometheus_url}: Prometheus scrapes its metrics, but its dashboard's "
                f"metrics views do not read them; restart the head to fix that: {RESTART_HEAD_HINT}"
            )
        if "ray" in running and "ray" in wanted:
            proxy = self._head_proxy(running["ray"])
            if proxy != self.config.serve_proxy:
                say(
                    f"ray: the running head (PID {running['ray'].pid}) runs Ray Serve's {proxy} proxy, not "
                    f"the {self.config.serve_proxy} proxy asked for; restart the head to switch: "
                    f"`mora stack down --component ray && mora stack up --proxy {self.config.serve_proxy}`"
                )
        for component in wanted:
            if component in running:
                results[component] = self._status_of(component, running[component], state="already running")
        starters: dict[str, Callable[[], ComponentStatus]] = {}
        if weed is not None:
            starters["s3"] = lambda: self._start_s3(weed, say)
        if ray is not None:
            starters["ray"] = lambda: self._start_ray(ray, say)
        if prometheus is not None:
            starters["prometheus"] = lambda: self._start_prometheus(prometheus, say)
        with ThreadPoolExecutor(max_workers=max(1, len(starters))) as pool:
            futures = {name: pool.submit(start) for name, start in starters.items()}
            errors: list[str] = []
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except (
                    ProcessStartError,
                    PrometheusBinaryError,
                    HAProxyBinaryError,
                    StorageError,
                    OSError,
                ) as exc:
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
        say(
            f"ray: starting head, dashboard {ray.dashboard_url}, Ray Serve's {ray.serve_proxy} proxy "
            f"(log {ray.log_path})"
        )
        record = ray.start(timeout=self.config.start_timeout)
        record.save(self.record_path("ray"))
        self._update_env({"MORA_RAY_ADDRESS": ray.address, "MORA_RAY_DASHBOARD_URL": ray.dashboard_url})
        status = self._status_of("ray", record, state="started")
        status.seconds = time.monotonic() - began
        return status

    def _start_prometheus(self, prometheus: RayPrometheus, say: Callable[[str], None]) -> ComponentStatus:
        began = time.monotonic()
        say(
            f"prometheus: starting on {prometheus.url}, scraping Ray's metrics "
            f"(config {prometheus.config_path}, log {prometheus.log_path})"
        )
        record = prometheus.start(timeout=self.config.start_timeout)
        record.save(self.record_path("prometheus"))
        status = self._status_of("prometheus", record, state="started")
        status.seconds = time.monotonic() - began
        return status

    @staticmethod
    def _head_proxy(record: ProcessRecord) -> str:
        """Ray Serve's proxy a recorded head runs ("default" for a head of an older ``mora``)."""
        return str(record.details.get("serve_proxy") or "default")

    @staticmethod
    def _head_prometheus(record: ProcessRecord) -> str | None:
        """The RAY_PROMETHEUS_HOST a recorded head was started with (None: none, or an older ``mora``)."""
        url = record.details.get("prometheus_url")
        return str(url) if url else None

    # -- down -----------------------------------------------------------------------------------

    def down(self, components: Sequence[str] | None = None) -> list[ComponentStatus]:
        """Stop what ``up`` recorded (SIGTERM, then SIGKILL after ``stop_timeout``), in parallel.

        By default s3 and ray, and prometheus whenever it has a PID record (or the settings ask for it).
        """
        chosen = self._recorded_components() if components is None else components
        wanted = [c for c in COMPONENTS if c in chosen]
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
                    remove_haproxy_dir(running[name].details.get("haproxy_dir"))
                results[name] = ComponentStatus(
                    name, "stopped", pid=running[name].pid, pids=pids, healthy=True, seconds=seconds
                )
        return [results[c] for c in wanted]

    # -- status ---------------------------------------------------------------------------------

    def status(self, components: Sequence[str] | None = None) -> list[ComponentStatus]:
        """Endpoints and health of each component (running ones are probed).

        By default the components ``up`` starts, and prometheus whenever it has a PID record.
        """
        if components is None:
            components = self._recorded_components()
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
        elif component == "prometheus":
            endpoint = f"http://127.0.0.1:{self.config.prometheus_port}"
        else:
            endpoint = f"http://127.0.0.1:{self.config.ray_dashboard_port}"
        return ComponentStatus(component, "stopped", endpoint=endpoint, health="-", healthy=False)

    def _status_of(self, component: str, record: ProcessRecord, *, state: str) -> ComponentStatus:
        details = record.details
        auth_on = True
        note = ""
        if component == "s3":
            endpoint = str(details.get("endpoint_url", ""))
            health, healthy = self._s3_health(endpoint)
        elif component == "prometheus":
            endpoint = str(details.get("url", ""))
            health, healthy = self._prometheus_health(endpoint)
            note = self._prometheus_note(record)
            auth_on = False  # no authentication: must stay on loopback
        else:
            endpoint = f"{details.get('address', '')}, dashboard {details.get('dashboard_url', '')}"
            if details.get("metrics_url"):
                endpoint += f", metrics {details['metrics_url']}"
            if details.get("prometheus_url"):
                endpoint += f", metrics views read {details['prometheus_url']}"
            endpoint += f", Serve proxy: {self._head_proxy(record)}"
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
        health += note
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

    def _prometheus_health(self, url: str) -> tuple[str, bool]:
        if not prometheus_ready(url):
            return "not ready", False
        try:
            up, total = ray_targets(url)
            health = f"ok: ready, {up}/{total} Ray metrics targets up"
        except (httpx.HTTPError, ValueError) as exc:
            health = f"ok: ready (targets not listed: {exc})"
        return health, True

    def _prometheus_note(self, record: ProcessRecord) -> str:
        """What to restart when the running head and this Prometheus do not fit each other (or "")."""
        head, _stale = self.live_record("ray")
        if head is None:
            return ""
        if self._head_prometheus(head) != record.details.get("url"):
            return f"; the Ray dashboard does not read from it: restart the head, {RESTART_HEAD_HINT}"
        wanted = self.prometheus(head)
        if (str(wanted.ray_temp_dir), wanted.ray_metrics_port) != (
            record.details.get("ray_temp_dir"),
            record.details.get("ray_metrics_port"),
        ):
            return (
                "; it scrapes another Ray session or port than the running head's: restart it, "
                "`mora stack down --component prometheus && mora stack up --prometheus`"
            )
        return ""


def _ray_health(dashboard_url: str, headers: dict[str, str] | None = None) -> tuple[str, bool]:
    if not dashboard_healthy(dashboard_url, headers=headers):
        return "dashboard not answering", False
    try:
        answer = httpx.get(f"{dashboard_url}/api/version", timeout=3.0, headers=headers)
        version = answer.json().get("ray_version", "?")
    except (httpx.HTTPError, ValueError):
        version = "?"
    return f"ok: dashboard answering, GCS healthy (Ray {version})", True
