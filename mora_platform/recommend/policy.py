"""From calibrated per-pod requests (usage units) to a ``Recommendation``: Kubernetes settings, floors, rounding.

Floors: CPU 10 millicores, memory 32 MiB per container request by default (a service's
``TrainingConfig`` may set other floors, down to Kubernetes' smallest units, 1m and 1 MiB). Rounding,
always up so a request never drops below what was calibrated: CPU to whole millicores, memory to whole
MiB. Values are rounded to 6 decimals first, so 0.5 cores stays 500m rather than becoming 501m
through floating-point noise. Containers, limits and the replica count: ``recommend.kubernetes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mora_platform.recommend.kubernetes import ResourcePolicy, plan
from mora_platform.recommend.types import HistoryUsed, MemberContribution, Recommendation
from mora_platform.recommend.workload import WorkloadState

MIB = 2**20
CPU_FLOOR_MILLICORES = 10
MEMORY_FLOOR_MIB = 32


def build_recommendation(
    service: str,
    requests: Mapping[str, float],
    confidence: float,
    *,
    contributions: Mapping[str, MemberContribution] | None = None,
    degraded: bool = False,
    fallbacks: list[str] | None = None,
    reasons: list[str] | None = None,
    model_version: str | None = None,
    coverage: float = 0.95,
    cpu_floor_millicores: int = CPU_FLOOR_MILLICORES,
    memory_floor_mib: int = MEMORY_FLOOR_MIB,
    pods_now: int | None = None,
    pod_cpu_mean: float | None = None,
    workload: WorkloadState | None = None,
    resource_policy: ResourcePolicy | None = None,
    container: str | None = None,
    unavailable: Mapping[str, str] | None = None,
    outside_training_range: list[str] | None = None,
    coverage_achieved: Mapping[str, float] | None = None,
    history: HistoryUsed | None = None,
) -> Recommendation:
    """A ``Recommendation`` from per-pod requests ``{"cpu": cores, "memory": bytes}`` at ``pods_now`` pods.

    The Kubernetes settings (containers, limits, replicas) come from ``recommend.kubernetes.plan``; a
    target in ``unavailable`` (or not finite) is left out, and the answer says why.
    """
    unavailable = dict(unavailable or {})
    for target in ("cpu", "memory"):
        value = requests.get(target)
        if target not in unavailable and (value is None or not math.isfinite(float(value))):
            unavailable[target] = f"no {target} forecast for this history"
    usable = {t: float(v) for t, v in requests.items() if t in ("cpu", "memory") and t not in unavailable}
    kube = plan(
        service,
        usable,
        pods_now=pods_now,
        pod_cpu_mean=pod_cpu_mean,
        workload=workload,
        policy=resource_policy,
        container=container,
        cpu_floor_millicores=cpu_floor_millicores,
        memory_floor_mib=memory_floor_mib,
    )
    notes = [f"{t} not recommended: {why}" for t, why in unavailable.items() if t != "replicas"]
    return Recommendation(
        service=service,
        namespace=workload.namespace if workload is not None else None,
        model_version=model_version,
        recommendations=kube.resources,
        confidence=min(max(float(confidence), 0.0), 1.0),
        coverage_target=coverage,
        contributions=dict(contributions or {}),
        degraded=degraded,
        fallbacks=list(fallbacks or []),
        reasons=[*(reasons or []), *notes, kube.replicas.reason, *kube.reasons],
        history=history,
        containers=kube.containers,
        replica_decision=kube.replicas,
        unavailable=unavailable,
        outside_training_range=list(outside_training_range or []),
        coverage_achieved=dict(coverage_achieved or {}),
    )
