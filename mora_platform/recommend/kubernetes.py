"""From per-pod requests (usage units) to what an operator sets: per container, per pod, per Deployment.

The answering layer gives what *one pod* must be granted to cover its usage at the stated probability
(the busiest pod where the data has it, else the service's total spread over its pods), at the pod
count the history ran with. This module turns that into Kubernetes settings, by a documented policy
(``ResourcePolicy``, per service in ``TrainingConfig.resources``):

- **Replicas** follow load: the fewest pods such that none is asked for more than
  ``pod_cpu_max_cores`` of CPU, at least ``min_replicas`` (and at most ``max_replicas`` when set).
  The service's CPU need is the per-pod request times the pods it was measured at; when the
  recommended count differs, the per-pod CPU request is rescaled so the Deployment keeps the same
  total (load spreads over the pods). Memory per pod is not rescaled: a pod's memory is mostly its
  own footprint, so fewer pods do not shrink it, and the reason says so.
- **An HPA** that targets the Deployment owns the replica count: none is recommended. With a CPU
  utilisation target ``u``, the HPA keeps the pods' mean CPU near ``u x request``; the answer says
  how many pods that means at the recommended request and raises the request if the HPA would need
  more than its ``maxReplicas``.
- **Containers** split the pod's requests by their share of the pod's usage (``mora collect``
  records it), else by their current requests, else evenly; each container's request gets the floors.
  Without a recorded workload, one container named like the service (or ``--container``) is assumed.
- **OOM kills**: a container killed for memory gets at least ``max(level x oom_bump_ratio,
  level + oom_min_bump_mib)`` (VPA's rule), ``level`` being the memory it died at.
- **Limits**: memory limit = memory request x ``memory_limit_ratio`` (1.0 by default, as KRR: a pod
  never holds memory it was not granted; None sets no limit); CPU limits are off by default
  (``cpu_limit_ratio`` None), as KRR, because CPU throttling hurts latency more than it saves.

Rounding is always up: CPU to whole millicores, memory to whole MiB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from mora_platform.recommend.types import (
    ContainerRecommendation,
    ContainerResources,
    ReplicaDecision,
    ResourceRecommendation,
)
from mora_platform.recommend.workload import ContainerState, WorkloadState

MIB = 2**20


class ResourcePolicy(BaseModel):
    """How per-pod requests become container requests, limits and a replica count (see module doc)."""

    model_config = ConfigDict(extra="forbid")

    pod_cpu_max_cores: float = Field(
        default=1.0, gt=0, description="the most CPU one pod is asked for before the Deployment scales out"
    )
    min_replicas: int = Field(
        default=1, ge=1, description="never recommend fewer replicas (2 for availability)"
    )
    max_replicas: int | None = Field(default=None, ge=1, description="never recommend more replicas")
    memory_limit_ratio: float | None = Field(
        default=1.0, ge=1, description="memory limit = request x this; None: no memory limit"
    )
    cpu_limit_ratio: float | None = Field(
        default=None, ge=1, description="CPU limit = request x this; None (default): no CPU limit"
    )
    oom_bump_ratio: float = Field(default=1.2, ge=1, description="memory after an OOM kill >= level x this")
    oom_min_bump_mib: int = Field(default=100, ge=0, description="... and >= level + this many MiB")


@dataclass
class KubernetesPlan:
    """The settings for one Deployment, and the sentences that explain them."""

    resources: ResourceRecommendation
    containers: list[ContainerRecommendation]
    replicas: ReplicaDecision
    reasons: list[str] = field(default_factory=list)


def _ceil(value: float) -> int:
    return math.ceil(round(value, 6))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _shares(containers: list[ContainerState], resource: str) -> tuple[list[float], str]:
    """Each container's share of the pod's ``resource`` (cpu | memory), and what they were based on."""
    observed = [getattr(c, f"{resource}_share") for c in containers]
    if all(_finite(s) for s in observed) and sum(observed) > 0:
        return [s / sum(observed) for s in observed], "its share of the pod's usage"
    field_name = "cpu_request_cores" if resource == "cpu" else "memory_request_bytes"
    current = [getattr(c, field_name) for c in containers]
    if all(_finite(v) for v in current) and sum(current) > 0:
        return [v / sum(current) for v in current], "its share of the pod's current requests"
    return [1.0 / len(containers)] * len(containers), "an even split (no usage or requests per container)"


def _current(state: ContainerState | None) -> ContainerResources | None:
    if state is None:
        return None

    def milli(value: float | None) -> int | None:
        return None if value is None or not math.isfinite(value) else _ceil(1000 * value)

    def mib(value: float | None) -> int | None:
        return None if value is None or not math.isfinite(value) else _ceil(value / MIB)

    return ContainerResources(
        cpu_request_millicores=milli(state.cpu_request_cores),
        memory_request_mib=mib(state.memory_request_bytes),
        cpu_limit_millicores=milli(state.cpu_limit_cores),
        memory_limit_mib=mib(state.memory_limit_bytes),
    )


def _replicas(
    cpu: float | None,
    pods_now: int | None,
    pod_cpu_mean: float | None,
    workload: WorkloadState | None,
    policy: ResourcePolicy,
) -> tuple[ReplicaDecision, float | None, list[str]]:
    """The replica decision, the per-pod CPU request at it (cores), and reasons."""
    reasons: list[str] = []
    basis = pods_now or 1
    hpa = workload.hpa if workload is not None else None
    if hpa is not None:
        bounds = f"{hpa.min_replicas if hpa.min_replicas is not None else '?'}-{hpa.max_replicas or '?'}"
        text = f"HPA {hpa.name} scales this Deployment ({bounds} replicas): no replica count is recommended"
        u = hpa.target_cpu_utilization
        if _finite(cpu) and u and _finite(pod_cpu_mean) and pods_now:
            assert cpu is not None and pod_cpu_mean is not None
            expected = _ceil(pods_now * pod_cpu_mean / (u * cpu)) if cpu > 0 else pods_now
            if hpa.max_replicas and expected > hpa.max_replicas:
                raised = pods_now * pod_cpu_mean / (u * hpa.max_replicas)
                text += (
                    f"; at {1000 * cpu:.0f}m the HPA (target {u:.0%} CPU) would want {expected} pods, over its "
                    f"max of {hpa.max_replicas}, so the CPU request is raised to {1000 * raised:.0f}m"
                )
                cpu, expected = raised, hpa.max_replicas
            text += (
                f"; it holds the pods' mean CPU near {u:.0%} of the request ({1000 * u * cpu:.0f}m), and the "
                f"pods averaged {1000 * pod_cpu_mean:.1f}m over {pods_now} pods, so expect about "
                f"{max(expected, hpa.min_replicas or 1)} pods"
            )
        decision = ReplicaDecision(
            recommended=None, current=pods_now, managed_by=f"hpa/{hpa.name}", reason=text
        )
        return decision, cpu, reasons
    if not _finite(cpu):
        count = max(policy.min_replicas, basis)
        if policy.max_replicas:
            count = min(count, policy.max_replicas)
        reason = f"{count} replicas: no CPU data to size them by, the pods running now are kept"
        return ReplicaDecision(recommended=count, current=pods_now, reason=reason), cpu, reasons
    assert cpu is not None
    need = cpu * basis
    count = max(policy.min_replicas, _ceil(need / policy.pod_cpu_max_cores))
    if policy.max_replicas:
        count = min(count, policy.max_replicas)
    reason = (
        f"{count} replica{'s' if count != 1 else ''}: the service needs {1000 * need:.1f}m of CPU "
        f"({1000 * cpu:.1f}m per pod over {basis} pod{'s' if basis != 1 else ''}); the fewest pods with at "
        f"most {1000 * policy.pod_cpu_max_cores:.0f}m each, at least {policy.min_replicas}"
    )
    if count != basis:
        reasons.append(
            f"the CPU request per pod is for {count} pods: {1000 * need:.1f}m spread over {count} "
            f"(it was measured over {basis}); memory per pod is not rescaled (a pod's memory is mostly its own)"
        )
    return ReplicaDecision(recommended=count, current=pods_now, reason=reason), need / count, reasons


def plan(
    service: str,
    requests: Mapping[str, float],
    *,
    pods_now: int | None = None,
    pod_cpu_mean: float | None = None,
    workload: WorkloadState | None = None,
    policy: ResourcePolicy | None = None,
    container: str | None = None,
    cpu_floor_millicores: int = 10,
    memory_floor_mib: int = 32,
) -> KubernetesPlan:
    """Container requests and limits, pod totals and the replica decision from per-pod ``requests``.

    ``requests``: ``{"cpu": cores per pod, "memory": bytes per pod}`` at ``pods_now`` pods (NaN or
    absent: not recommended). ``pod_cpu_mean``: the pods' recent mean CPU (for an HPA's arithmetic).
    ``container`` names the one container when no workload was recorded.
    """
    if cpu_floor_millicores < 1 or memory_floor_mib < 1:
        raise ValueError(
            f"floors must be >= 1 (got cpu {cpu_floor_millicores}m, memory {memory_floor_mib} MiB)"
        )
    policy = policy or ResourcePolicy()
    cpu_in, memory_in = requests.get("cpu"), requests.get("memory")
    cpu = float(cpu_in) if cpu_in is not None and math.isfinite(cpu_in) else None
    memory = float(memory_in) if memory_in is not None and math.isfinite(memory_in) else None
    if workload is not None and not pods_now:
        pods_now = workload.pods or workload.replicas or None
    reasons: list[str] = []
    if not pods_now:
        reasons.append("the pod count is unknown (no replica metric): the usage is taken as one pod's")
    decision, cpu, replica_reasons = _replicas(cpu, pods_now, pod_cpu_mean, workload, policy)
    reasons.extend(replica_reasons)

    states: list[ContainerState | None]
    if workload is not None and workload.containers:
        states = list(workload.containers)
        names = [c.name for c in workload.containers]
        cpu_shares, cpu_basis = _shares(workload.containers, "cpu")
        memory_shares, memory_basis = _shares(workload.containers, "memory")
        if len(names) > 1:
            reasons.append(
                f"the pod's requests are split over its {len(names)} containers: CPU by {cpu_basis}, "
                f"memory by {memory_basis}"
            )
    else:
        names = [container or service]
        states = [None]
        cpu_shares, memory_shares = [1.0], [1.0]
        reasons.append(
            f"containers unknown (no workload recorded by mora collect): one container named {names[0]!r} "
            "is assumed" + ("" if container else "; --container names it")
        )

    out: list[ContainerRecommendation] = []
    for name, state, cpu_share, memory_share in zip(names, states, cpu_shares, memory_shares, strict=True):
        notes: list[str] = []
        millicores = None
        if cpu is not None:
            millicores = _ceil(1000 * cpu * cpu_share)
            if millicores < cpu_floor_millicores:
                notes.append(
                    f"cpu raised to the {cpu_floor_millicores}m floor (need {1000 * cpu * cpu_share:.1f}m)"
                )
                millicores = cpu_floor_millicores
        mib = None
        if memory is not None:
            mib = _ceil(memory * memory_share / MIB)
            if mib < memory_floor_mib:
                notes.append(
                    f"memory raised to the {memory_floor_mib} MiB floor (need {memory * memory_share / MIB:.1f} MiB)"
                )
                mib = memory_floor_mib
        if state is not None and state.oom_kills and _finite(state.oom_memory_bytes):
            level = float(state.oom_memory_bytes or 0.0)
            bumped = _ceil(max(level * policy.oom_bump_ratio, level + policy.oom_min_bump_mib * MIB) / MIB)
            if mib is None or mib < bumped:
                notes.append(
                    f"memory raised to {bumped} MiB, above the {level / MIB:.0f} MiB it was OOM-killed at "
                    f"({state.oom_kills} kill{'s' if state.oom_kills != 1 else ''}; x{policy.oom_bump_ratio:g} "
                    f"or +{policy.oom_min_bump_mib} MiB, whichever is more)"
                )
                mib = bumped
        memory_limit = (
            _ceil(mib * policy.memory_limit_ratio) if mib is not None and policy.memory_limit_ratio else None
        )
        cpu_limit = (
            _ceil(millicores * policy.cpu_limit_ratio)
            if millicores is not None and policy.cpu_limit_ratio
            else None
        )
        out.append(
            ContainerRecommendation(
                name=name,
                recommended=ContainerResources(
                    cpu_request_millicores=millicores,
                    memory_request_mib=mib,
                    cpu_limit_millicores=cpu_limit,
                    memory_limit_mib=memory_limit,
                ),
                current=_current(state),
                cpu_share=round(cpu_share, 6),
                memory_share=round(memory_share, 6),
                reasons=notes,
            )
        )
        reasons.extend(f"{name}: {note}" if len(names) > 1 else note for note in notes)

    def total(values: list[int | None]) -> int | None:
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    pod_millicores = total([c.recommended.cpu_request_millicores for c in out])
    pod_mib = total([c.recommended.memory_request_mib for c in out])
    limit_mib = total([c.recommended.memory_limit_mib for c in out])
    limit_milli = total([c.recommended.cpu_limit_millicores for c in out])
    resources = ResourceRecommendation(
        cpu_cores=None if pod_millicores is None else pod_millicores / 1000,
        cpu_millicores=pod_millicores,
        memory_bytes=None if pod_mib is None else pod_mib * MIB,
        memory_mib=None if pod_mib is None else float(pod_mib),
        replicas=decision.recommended,
        memory_limit_bytes=None if limit_mib is None else limit_mib * MIB,
        cpu_limit_millicores=limit_milli,
    )
    return KubernetesPlan(resources=resources, containers=out, replicas=decision, reasons=reasons)
