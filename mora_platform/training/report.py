"""Typed results of training one service (pydantic, so they travel as JSON to manifests and CLIs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ServiceDataError(ValueError):
    """A service's data cannot be trained on; the message names the service and the problem."""

    def __init__(self, service: str, problem: str) -> None:
        super().__init__(f"service {service!r}: {problem}")
        self.service = service
        self.problem = problem


class TargetMetrics(BaseModel):
    """Evaluation of one target on one split (``mae`` in target units: cores, bytes, replicas)."""

    n: int = Field(description="rows evaluated")
    mae: float | None = Field(default=None, description="MAE of the fused forecast")
    coverage: float | None = Field(
        default=None, description="share of rows where request >= target (calibrated quantity)"
    )
    usage_coverage: float | None = Field(default=None, description="share of rows where request >= raw usage")
    mean_slack: float | None = Field(default=None, description="mean (request - target) / mean target")
    mae_members: dict[str, float] = Field(
        default_factory=dict, description="MAE per member and the naive baseline"
    )
    quantile: float | None = Field(
        default=None, description="calibrated head-room added to the fused forecast"
    )
    confidence: float | None = Field(default=None, description="1 / (1 + MAE / mean|y|) on validation")


#: The context keys a what-if question may set, and the frame columns their range is read from.
CONTEXT_RANGE_COLUMNS: dict[str, str] = {"load_users": "load_users", "replica_count": "replica_count"}


def context_range(prepared: Any) -> dict[str, tuple[float, float]]:
    """The min and max each context key took in a prepared frame (keys without finite values left out)."""
    out: dict[str, tuple[float, float]] = {}
    for key, column in CONTEXT_RANGE_COLUMNS.items():
        if column not in prepared.columns:
            continue
        values = prepared[column].astype("float64")
        values = values[values.notna() & (values != float("inf"))]
        if len(values):
            out[key] = (float(values.min()), float(values.max()))
    return out


class DataWindow(BaseModel):
    start: datetime
    end: datetime
    rows: int
    experiments: int
    usage_scope: str = Field(
        default="service",
        description="what the rows' CPU / memory covered: service (summed over pods) or pod",
    )
    pod_basis: dict[str, str] = Field(
        default_factory=dict,
        description="per resource, what a pod's usage was: busiest-pod, even-spread (total / pods) or mixed",
    )
    context_range: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="min and max of each context key (load_users, replica_count) the training data saw",
    )


class TrainingReport(BaseModel):
    """What ``train_service`` did: metrics on the test split, fallbacks, timing and files written."""

    service: str
    metrics: dict[str, TargetMetrics] = Field(description="test split, per target")
    validation: dict[str, TargetMetrics] = Field(
        default_factory=dict, description="validation split, per target"
    )
    fallbacks: list[str] = Field(default_factory=list)
    members: dict[str, str] = Field(default_factory=dict, description="member -> ok | failed | missing")
    degraded: bool = False
    confidence: float = Field(default=0.0, ge=0, le=1)
    fusion_weights: dict[str, float] = Field(
        default_factory=dict, description="Prophet's weight per target, as used"
    )
    peak_head_weights: dict[str, float] = Field(
        default_factory=dict,
        description="the peak-quantile candidate's sequence head: its weight per target, chosen on "
        "validation (0: the regression alone; a target without an entry trained no head)",
    )
    data_window: DataWindow
    seconds: float
    timings: dict[str, float] = Field(default_factory=dict)
    files: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
