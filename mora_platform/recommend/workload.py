"""What is set on a Deployment now: its containers, their requests and limits, OOM kills and any HPA.

``mora collect`` records one ``WorkloadState`` per service beside the dataset's rows (from
kube-state-metrics and cAdvisor, see ``collect``); the answering side reads it to recommend per
container, to show *current -> recommended*, to raise memory above the level a container was
OOM-killed at, and to leave the replica count to an HPA that manages it. Every field is optional
because a cluster may lack any of the series: what could not be found is listed in ``missing``.

Units: CPU in cores, memory in bytes, per container (one pod's container; every pod of a
Deployment runs the same template). Utilisation targets as fractions (0.7 = 70%).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: A DNS-1123 label: what Kubernetes allows for container and Deployment names.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
WORKLOAD_FORMAT = 1


class ContainerState(BaseModel):
    """One container of the Deployment's pod template, as observed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    cpu_request_cores: float | None = Field(default=None, ge=0)
    memory_request_bytes: float | None = Field(default=None, ge=0)
    cpu_limit_cores: float | None = Field(default=None, ge=0)
    memory_limit_bytes: float | None = Field(default=None, ge=0)
    cpu_share: float | None = Field(
        default=None, ge=0, le=1, description="This container's share of the pod's CPU usage over the window"
    )
    memory_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="This container's share of the pod's memory usage over the window",
    )
    oom_kills: int = Field(default=0, ge=0, description="OOMKilled terminations seen over the window")
    oom_memory_bytes: float | None = Field(
        default=None,
        ge=0,
        description="Memory at the last OOM kill (the limit it hit, else the last working set before it)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"container name {value!r} is not a valid Kubernetes name (DNS-1123 label)")
        return value


class HpaState(BaseModel):
    """A HorizontalPodAutoscaler that targets the Deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    target_cpu_utilization: float | None = Field(
        default=None, gt=0, description="Target average CPU utilisation of the requests (0.7 = 70%)"
    )
    target_memory_utilization: float | None = Field(default=None, gt=0)


class WorkloadState(BaseModel):
    """A Deployment as observed at ``collected_at``: pods, containers, HPA, and what was missing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = WORKLOAD_FORMAT
    service: str
    namespace: str | None = None
    collected_at: str | None = Field(default=None, description="ISO 8601, UTC")
    source: str = Field(default="prometheus", description="prometheus | manifest | manual")
    pods: int | None = Field(default=None, ge=0, description="Pods running at collection time")
    replicas: int | None = Field(default=None, ge=0, description="The Deployment's replica count now")
    containers: list[ContainerState] = Field(default_factory=list)
    hpa: HpaState | None = None
    missing: list[str] = Field(
        default_factory=list, description="Series or facts that could not be found, readable"
    )

    def container(self, name: str) -> ContainerState | None:
        return next((c for c in self.containers if c.name == name), None)
