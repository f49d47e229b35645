"""Request and response models of the recommendation endpoint, and its documented limits.

Everything a client sends is validated here, before it reaches a model: numbers must be
finite, usage must be non-negative, values must lie in plausible ranges, unknown fields are
refused (a typo is named instead of silently ignored), and a history is capped in length.
The response models mirror :class:`mora_platform.recommend.types.Recommendation`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mora_platform.recommend.types import Recommendation

# Documented limits (README / OpenAPI descriptions quote them).
MAX_HISTORY_ROWS = 2000
MAX_BATCH_REQUESTS = 100
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_LOAD_USERS = 1_000_000.0
MAX_REPLICA_COUNT = 10_000
SERVICE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # DNS-1123 label, as the registry

# Upper bounds per metric: far above anything real, low enough to catch unit mistakes
# (e.g. millicores sent as cores) and overflow.
METRIC_MAXIMUM: dict[str, float] = {
    "cpu_cores_value": 10_000.0,
    "mem_bytes_value": 1e15,
    "net_rx_bytes_value": 1e15,
    "net_tx_bytes_value": 1e15,
    "pod_restarts_value": 1e9,
    "replica_count_value": float(MAX_REPLICA_COUNT),
    "node_cpu_util_value": 1e4,
    "node_mem_util_value": 1e4,
    "network_activity_rate_value": 1e15,
    "processing_intensity_value": 1e15,
    "service_stability_value": 1e6,
    "resource_pressure_value": 1e6,
}


def _metric_field(name: str, *, non_negative: bool) -> Any:
    """A finite, bounded, optional float field for one metric column."""
    maximum = METRIC_MAXIMUM[name]
    minimum = 0.0 if non_negative else -maximum
    return Field(
        default=None,
        strict=True,
        allow_inf_nan=False,
        ge=minimum,
        le=maximum,
        description=f"{name} (finite, {minimum:g} to {maximum:g})",
    )


class _Strict(BaseModel):
    """Unknown fields are an error: a misspelt field name is reported, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RequestContext(_Strict):
    """The conditions to recommend for: expected load, current replicas, scenario."""

    load_users: float | None = Field(
        default=None,
        strict=True,
        allow_inf_nan=False,
        ge=0.0,
        le=MAX_LOAD_USERS,
        description=f"Concurrent users expected (0 to {MAX_LOAD_USERS:g})",
    )
    replica_count: int | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=MAX_REPLICA_COUNT,
        description=f"Current replicas (0 to {MAX_REPLICA_COUNT})",
    )
    scenario: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Workload scenario name",
    )


class MetricValues(_Strict):
    """Current values of the 12 metric columns (each optional)."""

    cpu_cores_value: float | None = _metric_field("cpu_cores_value", non_negative=True)
    mem_bytes_value: float | None = _metric_field("mem_bytes_value", non_negative=True)
    net_rx_bytes_value: float | None = _metric_field("net_rx_bytes_value", non_negative=True)
    net_tx_bytes_value: float | None = _metric_field("net_tx_bytes_value", non_negative=True)
    pod_restarts_value: float | None = _metric_field("pod_restarts_value", non_negative=True)
    replica_count_value: float | None = _metric_field("replica_count_value", non_negative=True)
    node_cpu_util_value: float | None = _metric_field("node_cpu_util_value", non_negative=True)
    node_mem_util_value: float | None = _metric_field("node_mem_util_value", non_negative=True)
    network_activity_rate_value: float | None = _metric_field(
        "network_activity_rate_value", non_negative=False
    )
    processing_intensity_value: float | None = _metric_field("processing_intensity_value", non_negative=True)
    service_stability_value: float | None = _metric_field("service_stability_value", non_negative=False)
    resource_pressure_value: float | None = _metric_field("resource_pressure_value", non_negative=False)


class HistoryRow(MetricValues):
    """One past observation: the metrics plus the context they were measured under."""

    timestamp: datetime | None = Field(default=None, description="ISO 8601 time of the observation")
    step: int | None = Field(
        default=None, strict=True, ge=0, le=10_000_000, description="Position in the series"
    )
    load_users: float | None = Field(
        default=None, strict=True, allow_inf_nan=False, ge=0.0, le=MAX_LOAD_USERS
    )
    replica_count: int | None = Field(default=None, strict=True, ge=0, le=MAX_REPLICA_COUNT)
    scenario: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class RecommendationRequest(_Strict):
    """Body of ``POST /v1/recommendations``; everything but ``service`` is optional."""

    service: str = Field(
        min_length=1, max_length=63, pattern=SERVICE_NAME_PATTERN, description="Service name (DNS-1123 label)"
    )
    context: RequestContext | None = None
    current: MetricValues | None = None
    history: list[HistoryRow] | None = Field(
        default=None,
        max_length=MAX_HISTORY_ROWS,
        description=f"Recent observations, oldest first (at most {MAX_HISTORY_ROWS} rows); "
        "the model's stored history tail is used when absent",
    )

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "service": "frontend",
                    "context": {"load_users": 50, "replica_count": 2, "scenario": "browsing"},
                    "current": {"cpu_cores_value": 0.01, "mem_bytes_value": 52428800.0},
                }
            ]
        },
    )


class BatchRequest(_Strict):
    """Body of ``POST /v1/recommendations:batch``."""

    requests: list[RecommendationRequest] = Field(
        min_length=1,
        max_length=MAX_BATCH_REQUESTS,
        description=f"1 to {MAX_BATCH_REQUESTS} requests, answered in the same order",
    )


class RecommendationResponse(Recommendation):
    """Answer for one service (see ``Recommendation``; ``reasons`` explains ``degraded``)."""


class BatchItem(BaseModel):
    """One answer of a batch: either a recommendation or the error for that request alone."""

    index: int = Field(ge=0, description="Position of the request in the batch")
    service: str
    status: int = Field(description="HTTP status this request would have got alone")
    recommendation: RecommendationResponse | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    """Answers in request order; one failing service never fails the others."""

    results: list[BatchItem]


class ServiceInfo(BaseModel):
    """A published service as the registry describes it."""

    service: str
    latest_version: str | None
    trained_at: datetime | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class ServicesResponse(BaseModel):
    services: list[ServiceInfo]


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    registry: Literal["reachable", "unreachable"]
    detail: str | None = None


class FieldError(BaseModel):
    """One validation problem: where (``field``, dotted path) and what."""

    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a readable ``detail`` plus per-field errors when validation failed."""

    detail: str
    errors: list[FieldError] = Field(default_factory=list)
