"""Typed recommendation results, shared by the CLI, the Serve endpoint and the backtest.

Units are explicit in every field name. Floors and rounding (see ``policy``) are applied
before a ``Recommendation`` is built, so a consumer never has to round again.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

TARGETS: tuple[str, ...] = ("cpu", "memory", "replicas")


class ResourceRecommendation(BaseModel):
    """What to set on the Deployment: container requests and the replica count."""

    model_config = ConfigDict(frozen=True)

    cpu_cores: float = Field(ge=0, description="CPU request in cores")
    cpu_millicores: int = Field(ge=0, description="CPU request in millicores (1000 x cpu_cores, rounded up)")
    memory_bytes: int = Field(ge=0, description="Memory request in bytes")
    memory_mib: float = Field(ge=0, description="Memory request in MiB (memory_bytes / 2**20)")
    replicas: int = Field(ge=1, description="Replica count")


class MemberContribution(BaseModel):
    """One ensemble member's point forecast per target and its fusion weight."""

    model_config = ConfigDict(frozen=True)

    weight: float = Field(ge=0, le=1)
    cpu_cores: float | None = None
    memory_bytes: float | None = None
    replicas: float | None = None
    status: str = Field("ok", description="ok | failed | missing | fallback")


class HistoryUsed(BaseModel):
    """The recent rows an answer was calibrated on, and how old they are."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(
        description="request: rows the client sent; dataset:NAME: the newest rows of the model's "
        "dataset, read by the server; model: the stored tail of the training data (no recent rows)"
    )
    rows: int = Field(ge=0, description="Rows of history the answer saw")
    newest: str | None = Field(default=None, description="Timestamp of the newest row (ISO 8601, UTC)")
    age_seconds: float | None = Field(
        default=None, description="Seconds from the newest row to the moment of the answer"
    )


class Recommendation(BaseModel):
    """The answer for one service."""

    service: str
    model_version: str | None = None
    recommendations: ResourceRecommendation
    confidence: float = Field(ge=0, le=1, description="1 - normalised validation error, see README")
    coverage_target: float = Field(0.95, gt=0, lt=1, description="Probability the request covers usage")
    contributions: dict[str, MemberContribution] = Field(default_factory=dict)
    degraded: bool = False
    fallbacks: list[str] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list, description="Why degraded / which fallbacks, readable")
    history: HistoryUsed | None = Field(
        default=None, description="The recent rows the answer was calibrated on"
    )
