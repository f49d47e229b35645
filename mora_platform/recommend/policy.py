"""From calibrated requests (model units) to a ``Recommendation``: floors and rounding.

Floors: CPU 10 millicores, memory 32 MiB, 1 replica by default (a service's ``TrainingConfig`` may
set other CPU / memory floors, down to Kubernetes' smallest units, 1m and 1 MiB). Rounding, always up so a request never
drops below what was calibrated: CPU to whole millicores, memory to whole MiB, replicas to the
next integer. Values are rounded to 6 decimals first, so 0.5 cores stays 500m rather than
becoming 501m through floating-point noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mora_platform.recommend.types import MemberContribution, Recommendation, ResourceRecommendation

MIB = 2**20
CPU_FLOOR_MILLICORES = 10
MEMORY_FLOOR_MIB = 32
REPLICA_FLOOR = 1


def _ceil(value: float) -> int:
    return math.ceil(round(value, 6))


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} request is not a finite number: {value!r}")
    return value


def round_resources(
    cpu_cores: float,
    memory_bytes: float,
    replicas: float,
    *,
    cpu_floor_millicores: int = CPU_FLOOR_MILLICORES,
    memory_floor_mib: int = MEMORY_FLOOR_MIB,
) -> tuple[ResourceRecommendation, list[str]]:
    """Apply floors and rounding; returns the resources and a note per floor that applied."""
    if cpu_floor_millicores < 1 or memory_floor_mib < 1:
        raise ValueError(
            f"floors must be >= 1 (got cpu {cpu_floor_millicores}m, memory {memory_floor_mib} MiB)"
        )
    notes = []
    millicores = _ceil(1000 * _finite("cpu", cpu_cores))
    if millicores < cpu_floor_millicores:
        notes.append(f"cpu raised to the {cpu_floor_millicores}m floor (forecast {1000 * cpu_cores:.1f}m)")
        millicores = cpu_floor_millicores
    mib = _ceil(_finite("memory", memory_bytes) / MIB)
    if mib < memory_floor_mib:
        notes.append(
            f"memory raised to the {memory_floor_mib} MiB floor (forecast {memory_bytes / MIB:.1f} MiB)"
        )
        mib = memory_floor_mib
    count = _ceil(_finite("replicas", replicas))
    if count < REPLICA_FLOOR:
        notes.append(f"replicas raised to the floor of {REPLICA_FLOOR} (forecast {replicas:.2f})")
        count = REPLICA_FLOOR
    resources = ResourceRecommendation(
        cpu_cores=millicores / 1000,
        cpu_millicores=millicores,
        memory_bytes=mib * MIB,
        memory_mib=float(mib),
        replicas=count,
    )
    return resources, notes


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
) -> Recommendation:
    """A ``Recommendation`` from calibrated requests ``{"cpu": cores, "memory": bytes, "replicas": n}``."""
    resources, notes = round_resources(
        requests["cpu"],
        requests["memory"],
        requests["replicas"],
        cpu_floor_millicores=cpu_floor_millicores,
        memory_floor_mib=memory_floor_mib,
    )
    return Recommendation(
        service=service,
        model_version=model_version,
        recommendations=resources,
        confidence=min(max(float(confidence), 0.0), 1.0),
        coverage_target=coverage,
        contributions=dict(contributions or {}),
        degraded=degraded,
        fallbacks=list(fallbacks or []),
        reasons=[*(reasons or []), *notes],
    )
