"""The local stack's optional Prometheus: Debian's ``prometheus`` scraping the Ray head's metrics.

``mora stack up --prometheus`` (or ``MORA_STACK_PROMETHEUS=true``) starts it on 127.0.0.1
(``prometheus_port``, default 9090, Ray's default ``RAY_PROMETHEUS_HOST``) with a configuration
written on every start to ``$MORA_HOME/prometheus/prometheus.yml`` and its TSDB in
``$MORA_HOME/prometheus/data``. One scrape job, ``ray``, finds the targets two ways:

- the file-based service discovery file Ray's dashboard keeps up to date,
  ``prom_metrics_service_discovery.json`` (every live node's metrics port, the dashboard's and the
  autoscaler's): in the head's ``--temp-dir`` (a link Ray keeps to the current session's file)
  and in ``<temp-dir>/session_latest/``;
- the head's fixed metrics port (``--metrics-export-port``, default 8266) as a static target, so
  the node's metrics (the platform's ``ray_mora_*`` among them) are scraped before the discovery
  file exists. Prometheus merges a target found both ways into one.

The head's dashboard reads from it through ``RAY_PROMETHEUS_HOST`` (set when the head starts,
see ``infra.local.stack``). The server has no scrape target beyond loopback and no admin or
lifecycle API; it is stopped by its PID like the other components.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from infra.local.processes import (
    ProcessRecord,
    ProcessStartError,
    check_ports,
    log_tail,
    spawn,
    stop,
    wait_until,
)
from infra.local.prometheus import find_binary

#: ray._private.ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE (not imported: Ray is heavy).
DISCOVERY_FILE_NAME = "prom_metrics_service_discovery.json"
#: The scrape job of Ray's targets (also the ``job`` label Ray's discovery file sets).
JOB_NAME = "ray"


def discovery_files(ray_temp_dir: Path) -> list[Path]:
    """Where Ray writes its Prometheus targets for a head started with ``--temp-dir ray_temp_dir``."""
    return [ray_temp_dir / DISCOVERY_FILE_NAME, ray_temp_dir / "session_latest" / DISCOVERY_FILE_NAME]


def scrape_config(
    ray_temp_dir: Path,
    ray_metrics_port: int,
    *,
    host: str = "127.0.0.1",
    scrape_interval: int = 10,
) -> str:
    """The Prometheus configuration (YAML) that scrapes the Ray head's metrics every ``scrape_interval`` s."""
    interval = f"{scrape_interval}s"
    timeout = f"{min(scrape_interval, 10)}s"  # Prometheus refuses a timeout above the interval
    files = "".join(f"          - {json.dumps(str(path))}\n" for path in discovery_files(ray_temp_dir))
    return (
        "# Written by `mora stack up` on every start of the local Prometheus "
        "(infra/local/ray_prometheus.py); edits are lost.\n"
        "global:\n"
        f"  scrape_interval: {interval}\n"
        f"  scrape_timeout: {timeout}\n"
        f"  evaluation_interval: {interval}\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB_NAME}\n"
        "    file_sd_configs:\n"
        "      - refresh_interval: 15s\n"
        "        files:\n"
        f"{files}"
        "    static_configs:\n"
        "      - targets:\n"
        f"          - {json.dumps(f'{host}:{ray_metrics_port}')}\n"
    )


def prometheus_ready(url: str, timeout: float = 3.0) -> bool:
    """Whether the Prometheus at ``url`` answers ``/-/ready`` with 200."""
    try:
        return httpx.get(f"{url}/-/ready", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def ray_targets(url: str, timeout: float = 3.0) -> tuple[int, int]:
    """(targets of the ``ray`` job that are up, all of them) in the Prometheus at ``url``."""
    answer = httpx.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=timeout)
    answer.raise_for_status()
    targets = [
        target
        for target in answer.json().get("data", {}).get("activeTargets", [])
        if target.get("labels", {}).get("job") == JOB_NAME
    ]
    return sum(1 for target in targets if target.get("health") == "up"), len(targets)


class RayPrometheus:
    """One Prometheus process on ``host:port`` scraping a Ray head, started and stopped by PID."""

    def __init__(
        self,
        port: int,
        base_dir: Path,
        log_path: Path,
        *,
        ray_temp_dir: Path,
        ray_metrics_port: int,
        host: str = "127.0.0.1",
        scrape_interval: int = 10,
        retention: str = "15d",
    ) -> None:
        self.port = port
        self.base_dir = base_dir
        self.log_path = log_path
        self.ray_temp_dir = ray_temp_dir
        self.ray_metrics_port = ray_metrics_port
        self.host = host
        self.scrape_interval = scrape_interval
        self.retention = retention
        self.record: ProcessRecord | None = None

    @property
    def url(self) -> str:
        """Web UI and HTTP API base URL (what the head gets as ``RAY_PROMETHEUS_HOST``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        """The generated configuration."""
        return self.base_dir / "prometheus.yml"

    @property
    def data_dir(self) -> Path:
        """The TSDB."""
        return self.base_dir / "data"

    def config_text(self) -> str:
        """The configuration this server runs with."""
        return scrape_config(
            self.ray_temp_dir, self.ray_metrics_port, host=self.host, scrape_interval=self.scrape_interval
        )

    def command(self) -> list[str]:
        """The ``prometheus`` command line (raises ``PrometheusBinaryError`` when it is not installed)."""
        return [
            find_binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.host}:{self.port}",
        ]

    def check_ports(self, hint: str) -> None:
        """Raise ``PortInUseError`` when the port is taken."""
        check_ports("Prometheus", {"prometheus": self.port}, self.host, lambda _name: hint)

    def start(self, timeout: float = 60.0) -> ProcessRecord:
        """Write the configuration, start the server and wait until ``/-/ready`` answers."""
        command = self.command()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Prometheus watches the discovery files' directory: have it there before the head writes.
        self.ray_temp_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        record = spawn(
            "prometheus",
            command,
            self.log_path,
            details={
                "url": self.url,
                "config": str(self.config_path),
                "data_dir": str(self.data_dir),
                "ray_temp_dir": str(self.ray_temp_dir),
                "ray_metrics_port": self.ray_metrics_port,
            },
        )
        self.record = record

        def died() -> str | None:
            if not record.is_alive():
                return f"prometheus exited during start-up; log {self.log_path}:\n{log_tail(self.log_path)}"
            return None

        try:
            wait_until(
                lambda: prometheus_ready(self.url),
                timeout=timeout,
                what=f"Prometheus ({self.url})",
                abort=died,
                interval=0.3,
            )
        except ProcessStartError:
            self.stop(timeout=10.0)
            raise
        return record

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM the server, SIGKILL it after ``timeout``."""
        if self.record is None:
            return []
        pids = stop(self.record, timeout)
        self.record = None
        return pids
