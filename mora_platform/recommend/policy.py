"""From calibrated requests (model units) to a ``Recommendation``: floors and rounding.

Floors: CPU 10 millicores, memory 32 MiB, 1 replica. Rounding, always up so a request never
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
    cpu_cores: float, memory_bytes: float, replicas: float
) -> tuple[ResourceRecommendation, list[str]]:
    """Apply floors and rounding; returns the resources and a note per floor that applied."""
    notes = []
    millicores = _ceil(1000 * _finite("cpu", cpu_cores))
    if millicores < CPU_FLOOR_MILLICORES:
        notes.append(f"cpu raised to the {CPU_FLOOR_MILLICORES}m floor (forecast {1000 * cpu_cores:.1f}m)")
        millicores = CPU_FLOOR_MILLICORES
    mib = _ceil(_finite("memory", memory_bytes) / MIB)
    if mib < MEMORY_FLOOR_MIB:
        notes.append(
            f"memory raised to the {MEMORY_FLOOR_MIB} MiB floor (forecast {memory_bytes / MIB:.1f} MiB)"
        )
        mib = MEMORY_FLOOR_MIB
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
) -> Recommendation:
    """A ``Recommendation`` from calibrated requests ``{"cpu": cores, "memory": bytes, "replicas": n}``."""
    resources, notes = round_resources(requests["cpu"], requests["memory"], requests["replicas"])
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
