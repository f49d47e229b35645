"""Typed recommendation results, shared by the CLI, the Serve endpoint and the backtest.

Units are explicit in every field name. Floors and rounding (see ``policy``) are applied
before a ``Recommendation`` is built, so a consumer never has to round again.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

TARGETS: tuple[str, ...] = ("cpu", "memory", "replicas")


class ResourceRecommendation(BaseModel):
    """What to set, per pod: the pod's requests (the sum over its containers) and the Deployment's replicas.

    A request is what *one* pod asks for (Kubernetes schedules pods, not services); the replica count is
    the Deployment's ``spec.replicas``. A field is None when it is not recommended: its target was not in
    the data (``Recommendation.unavailable`` says why) or, for replicas, an HPA manages them.
    """

    model_config = ConfigDict(frozen=True)

    cpu_cores: float | None = Field(default=None, ge=0, description="CPU request per pod in cores")
    cpu_millicores: int | None = Field(
        default=None, ge=0, description="CPU request per pod in millicores (1000 x cpu_cores, rounded up)"
    )
    memory_bytes: int | None = Field(default=None, ge=0, description="Memory request per pod in bytes")
    memory_mib: float | None = Field(default=None, ge=0, description="Memory request per pod in MiB")
    replicas: int | None = Field(
        default=None, ge=1, description="The Deployment's replica count (None: an HPA manages it)"
    )
    memory_limit_bytes: int | None = Field(
        default=None, ge=0, description="Memory limit per pod in bytes (None: no limit recommended)"
    )
    cpu_limit_millicores: int | None = Field(
        default=None, ge=0, description="CPU limit per pod in millicores (None: no CPU limit, the default)"
    )


class ContainerResources(BaseModel):
    """One container's requests and limits (None: not set / not known)."""

    model_config = ConfigDict(frozen=True)

    cpu_request_millicores: int | None = None
    memory_request_mib: int | None = None
    cpu_limit_millicores: int | None = None
    memory_limit_mib: int | None = None


class ContainerRecommendation(BaseModel):
    """What to set on one container of the pod template, beside what is set now."""

    model_config = ConfigDict(frozen=True)

    name: str
    recommended: ContainerResources
    current: ContainerResources | None = Field(default=None, description="What the cluster has set now")
    cpu_share: float = Field(ge=0, le=1, description="This container's share of the pod's CPU request")
    memory_share: float = Field(ge=0, le=1, description="This container's share of the pod's memory request")
    reasons: list[str] = Field(default_factory=list)


class ReplicaDecision(BaseModel):
    """The replica count recommended for the Deployment, the one running now, and why."""

    model_config = ConfigDict(frozen=True)

    recommended: int | None = Field(default=None, description="None: an HPA manages the replicas")
    current: int | None = Field(default=None, description="Pods running in the history the answer saw")
    managed_by: str | None = Field(default=None, description="hpa/NAME when an HPA scales the Deployment")
    reason: str = ""


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


UNITS = (
    "requests and limits are per container, per pod (recommendations: the pod's sum over its containers); "
    "replicas is the Deployment's spec.replicas"
)


class Recommendation(BaseModel):
    """The answer for one service (a Deployment)."""

    service: str
    namespace: str | None = None
    units: str = Field(default=UNITS, description="What the numbers mean in Kubernetes terms")
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
    containers: list[ContainerRecommendation] = Field(
        default_factory=list, description="Per container: recommended and current requests and limits"
    )
    replica_decision: ReplicaDecision | None = None
    unavailable: dict[str, str] = Field(
        default_factory=dict, description="Targets not recommended (not in the data), with why"
    )
    outside_training_range: list[str] = Field(
        default_factory=list,
        description="Context values (a what-if) or history far beyond what training saw: extrapolated, not measured",
    )
    coverage_achieved: dict[str, float] = Field(
        default_factory=dict,
        description="Share of held-out test steps the published model's requests covered, per target",
    )
