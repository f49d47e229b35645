"""Settings of the local stack: every port and limit, from ``MORA_STACK_*`` or ``--port NAME=N``.

Kept free of heavy imports so the CLI can build its help text from these fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.local.serve_proxy import ServeProxy

if TYPE_CHECKING:
    from infra.local.ray_head import RayPorts
    from infra.local.weed import WeedPorts

# StackSettings field for each WeedPorts / RayPorts attribute.
WEED_PORT_FIELDS = {
    name: f"{name}_port"
    for name in ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")
}
RAY_PORT_FIELDS = {
    "gcs": "ray_port",
    "dashboard": "ray_dashboard_port",
    "client": "ray_client_port",
    "dashboard_agent": "ray_dashboard_agent_port",
    "metrics_export": "ray_metrics_export_port",
    "min_worker": "ray_min_worker_port",
    "max_worker": "ray_max_worker_port",
    "serve_fallback": "ray_serve_fallback_port",
    "haproxy_metrics": "ray_haproxy_metrics_port",
    "haproxy_stats": "ray_haproxy_stats_port",
}


def _port(default: int, what: str) -> int:
    return Field(default, ge=1, le=65535, description=what)


class StackSettings(BaseSettings):
    """Ports and limits of the local stack (env prefix ``MORA_STACK_``; ``--port NAME=N`` on the CLI)."""

    model_config = SettingsConfigDict(env_prefix="MORA_STACK_", env_file=".env", extra="ignore")

    s3_port: int = _port(8333, "S3 gateway HTTP port (MORA_S3_ENDPOINT_URL)")
    s3_grpc_port: int = _port(18333, "S3 gateway gRPC port")
    master_port: int = _port(9333, "SeaweedFS master HTTP port")
    master_grpc_port: int = _port(19333, "SeaweedFS master gRPC port")
    volume_port: int = _port(8080, "SeaweedFS volume server HTTP port")
    volume_grpc_port: int = _port(18080, "SeaweedFS volume server gRPC port")
    filer_port: int = _port(8888, "SeaweedFS filer HTTP port")
    filer_grpc_port: int = _port(18888, "SeaweedFS filer gRPC port")
    ray_port: int = _port(6379, "Ray GCS port (MORA_RAY_ADDRESS)")
    ray_dashboard_port: int = _port(8265, "Ray dashboard / Jobs API port (MORA_RAY_DASHBOARD_URL)")
    ray_client_port: int = _port(10001, "Ray client server port")
    ray_dashboard_agent_port: int = _port(52365, "Ray dashboard agent HTTP port")
    ray_metrics_export_port: int = _port(8266, "Ray node's Prometheus metrics (/metrics, incl. ray_mora_*)")
    ray_min_worker_port: int = _port(20002, "lowest port for Ray workers")
    ray_max_worker_port: int = _port(29999, "highest port for Ray workers")
    ray_serve_fallback_port: int = _port(8500, "Ray Serve's fallback proxy on the head (HAProxy mode)")
    ray_haproxy_metrics_port: int = _port(9101, "HAProxy's Prometheus exporter (HAProxy mode)")
    ray_haproxy_stats_port: int = _port(8404, "HAProxy's stats page (HAProxy mode)")
    serve_proxy: ServeProxy = Field(
        "haproxy",
        description="Ray Serve's proxy on the head: 'haproxy' (Serve's HAProxy mode, 3-5x faster, every "
        "listener on 127.0.0.1 but the replicas' inter-deployment gRPC) or 'default' (Ray's Python proxy)",
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs Ray may schedule (default: all)")
    ray_object_store_bytes: int | None = Field(None, ge=78_643_200, description="Ray object store size")
    ray_temp_dir: Path | None = Field(None, description="Ray session directory (default: short path in /tmp)")
    ray_auth: Literal["token", "disabled"] = Field(
        "token",
        description="Ray's token authentication of the head (token in $MORA_HOME/ray_auth_token); "
        "'disabled' lets anyone who reaches its ports run code as you",
    )
    prometheus: bool = Field(
        False,
        description="also start a Prometheus scraping Ray's metrics with `up` (as `mora stack up --prometheus`)",
    )
    prometheus_port: int = _port(
        9090, "Prometheus scraping Ray's metrics (the dashboard's RAY_PROMETHEUS_HOST)"
    )
    prometheus_scrape_interval: int = Field(
        10, ge=1, le=300, description="seconds between Prometheus scrapes"
    )
    prometheus_retention: str = Field("15d", description="how long Prometheus keeps samples (e.g. 15d, 12h)")
    start_timeout: float = Field(120.0, gt=0, description="seconds to wait for each component to be ready")
    stop_timeout: float = Field(30.0, gt=0, description="seconds to wait after SIGTERM before SIGKILL")

    @classmethod
    def port_names(cls) -> dict[str, str]:
        """CLI short names (``s3``, ``ray_dashboard``, ...) -> field names."""
        return {name[: -len("_port")]: name for name in cls.model_fields if name.endswith("_port")}

    def weed_ports(self) -> WeedPorts:
        """The S3 server's ports."""
        from infra.local.weed import WeedPorts

        return WeedPorts(**{attr: getattr(self, fld) for attr, fld in WEED_PORT_FIELDS.items()})

    def ray_ports(self) -> RayPorts:
        """The Ray head's ports."""
        from infra.local.ray_head import RayPorts

        return RayPorts(**{attr: getattr(self, fld) for attr, fld in RAY_PORT_FIELDS.items()})


def port_hint(field_name: str) -> str:
    """How to change the port held in ``field_name``, for error messages."""
    short = field_name[: -len("_port")]
    return f"`mora stack up --port {short}=N` or MORA_STACK_{field_name.upper()}=N"
