"""Request and response models of the recommendation endpoint, and its documented limits.

Everything a client sends is validated here, before it reaches a model: context and ``current``
numbers must be finite, usage must be non-negative, values must lie in plausible ranges, unknown
fields are refused (a typo is named instead of silently ignored), and a history is capped in length.
History rows are rows of the unified 18-column schema and are judged by the data layer's rules
(``serve.history``: what ``mora data import`` accepts in a file is accepted here, and is cleaned the
same way before it reaches the model). The response models mirror
:class:`mora_platform.recommend.types.Recommendation`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from mora_platform.recommend.types import Recommendation
from serve.history import history_errors

# Documented limits (README / OpenAPI descriptions quote them).
MAX_HISTORY_ROWS = 2000
MAX_BATCH_REQUESTS = 100
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 64  # a request nests 5 levels (batch > requests > request > history > row)
MAX_OBJECT_KEYS = 256  # keys in one JSON object (a history row has 20): more is refused before validation
MAX_LISTED_ERRORS = 20  # field errors listed in one 4xx body (the detail says how many there were)
MAX_BODY_SECONDS = 20.0  # the whole body must arrive within this (slow senders get 408)
RETRY_AFTER_S = 2  # Retry-After of a 503 answered under overload or while a replica is replaced
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
        ge=0,
        le=MAX_REPLICA_COUNT,
        description=f"Current replicas (0 to {MAX_REPLICA_COUNT}); a whole number, 3.0 as well as 3",
    )
    scenario: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Workload scenario name",
    )

    @field_validator("replica_count", mode="before")
    @classmethod
    def _whole_replicas(cls, value: Any) -> Any:
        # a replica count is a whole number; JSON clients often send 3.0 for 3. Strings and booleans
        # stay refused (they are not numbers), and 2.5 is refused by name.
        if isinstance(value, bool | str):
            raise ValueError("must be a whole number")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"must be a whole number (got {value!r})")
            return int(value)
        return value


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


def _history_cell(value: Any) -> float | str | None:
    """A history cell as sent: numbers (``Infinity`` / ``NaN`` included), strings and null pass to the
    data layer, which judges them; anything else (booleans, objects, lists) is refused here."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range, as "1e400" would read
            return float("inf") if value > 0 else float("-inf")
    raise PydanticCustomError("history_cell", 'must be a number, a string holding one (e.g. "inf") or null')


HistoryCell = Annotated[
    float | str | None,
    PlainValidator(_history_cell),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}),
]
NUMBER_ENCODINGS = (
    "a JSON number; Infinity / -Infinity (as Python's json.dumps writes them) or a string the data layer "
    'reads as a number ("inf", "-inf", "1.5e-3"); null, NaN or "" when missing'
)


def _history_field(name: str) -> Any:
    return Field(default=None, description=f"{name}: {NUMBER_ENCODINGS}")


class HistoryRow(_Strict):
    """One past observation: a row of the unified 18-column schema (e.g. of ``examples/online-boutique``).

    Its values are judged by the data layer's rules, as ``mora data import`` judges a file's rows
    (``mora_platform.data.validation``; refused: non-numeric or infinite raw metrics, replica_count and
    load_users, negative usage, unparseable or duplicate timestamps), and the history is then cleaned
    like a file's (``mora_platform.data.cleaning``: infinite or implausible derived values and
    outliers, imputation, restart counter, derived metrics).
    """

    timestamp: HistoryCell = Field(
        default=None,
        description="ISO 8601 time (naive: UTC), epoch seconds, or relative labels t_0, t_1, ... on every row "
        "(one model step apart, as the data loader maps them); without a timestamp on any row the rows "
        "are taken as consecutive, one model step apart",
    )
    experiment_id: str | None = Field(
        default=None, description="Series the row belongs to (default: one series)"
    )
    service: str | None = Field(default=None, description="Must be the request's service when given")
    scenario: str | None = Field(default=None, description="Workload scenario (default: the context's)")
    replica_count: HistoryCell = Field(
        default=None, description=f"Replicas (default: the context's); {NUMBER_ENCODINGS}"
    )
    load_users: HistoryCell = Field(
        default=None, description=f"Concurrent users (default: the context's); {NUMBER_ENCODINGS}"
    )
    cpu_cores_value: HistoryCell = _history_field("cpu_cores_value")
    mem_bytes_value: HistoryCell = _history_field("mem_bytes_value")
    net_rx_bytes_value: HistoryCell = _history_field("net_rx_bytes_value")
    net_tx_bytes_value: HistoryCell = _history_field("net_tx_bytes_value")
    pod_restarts_value: HistoryCell = _history_field("pod_restarts_value")
    replica_count_value: HistoryCell = _history_field("replica_count_value")
    node_cpu_util_value: HistoryCell = _history_field("node_cpu_util_value")
    node_mem_util_value: HistoryCell = _history_field("node_mem_util_value")
    network_activity_rate_value: HistoryCell = _history_field("network_activity_rate_value")
    processing_intensity_value: HistoryCell = _history_field("processing_intensity_value")
    service_stability_value: HistoryCell = _history_field("service_stability_value")
    resource_pressure_value: HistoryCell = _history_field("resource_pressure_value")
    step: int | None = Field(
        default=None, strict=True, ge=0, le=10_000_000, description="Position in the series"
    )


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
        description=f"Recent observations, oldest first (at most {MAX_HISTORY_ROWS} rows), as rows of the "
        "unified 18-column schema: accepted when the data layer accepts them in a file, and cleaned the "
        "same way; the model's stored history tail is used when absent",
    )

    @model_validator(mode="after")
    def _history_by_the_data_layer(self) -> RecommendationRequest:
        """The history's rows judged by the data layer, each problem named as ``history[i].column``."""
        if not self.history:
            return self
        rows = [{name: value for name, value in row if value is not None} for row in self.history]
        errors = history_errors(self.service, rows)
        if errors:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("history_value", "{reason}", {"reason": message}),
                        loc=loc,
                        input=value,
                    )
                    for loc, message, value in errors
                ],
            )
        return self

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
