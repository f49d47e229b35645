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


class DataWindow(BaseModel):
    start: datetime
    end: datetime
    rows: int
    experiments: int


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
    data_window: DataWindow
    seconds: float
    timings: dict[str, float] = Field(default_factory=dict)
    files: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
