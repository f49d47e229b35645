"""Recommendation units, rounding and floors (``mora_platform.recommend.policy``)."""

from __future__ import annotations

import math

import pytest

from mora_platform.recommend.policy import MIB, build_recommendation, round_resources
from mora_platform.recommend.types import MemberContribution


@pytest.mark.parametrize(
    ("cores", "millicores"),
    [(0.0123, 13), (0.5, 500), (0.1 + 0.2, 300), (1.0000000001, 1000), (1.0004, 1001), (2.0011, 2002)],
)
def test_cpu_rounds_up_to_whole_millicores(cores: float, millicores: int) -> None:
    resources, notes = round_resources(cores, 64 * MIB, 1)
    assert resources.cpu_millicores == millicores
    assert resources.cpu_cores == millicores / 1000
    assert notes == []


def test_memory_rounds_up_to_whole_mib_and_replicas_ceil() -> None:
    resources, _ = round_resources(0.2, 100.2 * MIB, 1.2)
    assert resources.memory_bytes == 101 * MIB
    assert resources.memory_mib == 101.0
    assert resources.replicas == 2
    assert round_resources(0.2, 100 * MIB, 2.0)[0].replicas == 2
    assert resources.cpu_millicores == math.ceil(1000 * 0.2)


def test_floors_apply_and_are_explained() -> None:
    resources, notes = round_resources(0.0004, 1 * MIB, 0.0)
    assert resources.cpu_millicores == 10
    assert resources.memory_mib == 32.0
    assert resources.memory_bytes == 32 * MIB
    assert resources.replicas == 1
    assert len(notes) == 3
    assert "10m floor" in notes[0]


def test_non_finite_request_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu"):
        round_resources(float("nan"), MIB, 1)


def test_build_recommendation_carries_flags_and_contributions() -> None:
    rec = build_recommendation(
        "cartservice",
        {"cpu": 0.25, "memory": 300 * MIB, "replicas": 2.4},
        1.7,
        contributions={"prophet": MemberContribution(weight=1.0, cpu_cores=0.2, status="ok")},
        degraded=True,
        fallbacks=["prophet: daily seasonality dropped"],
        reasons=["lstm: missing"],
        model_version="v1",
    )
    assert rec.confidence == 1.0  # clipped into [0, 1]
    assert rec.recommendations.cpu_millicores == 250
    assert rec.recommendations.replicas == 3
    assert rec.degraded and rec.fallbacks and rec.reasons == ["lstm: missing"]
    assert rec.contributions["prophet"].cpu_cores == 0.2
    assert rec.model_version == "v1"


def test_configurable_floors_down_to_kubernetes_units() -> None:
    resources, notes = round_resources(0.0, 0.0, 1, cpu_floor_millicores=1, memory_floor_mib=1)
    assert resources.cpu_millicores == 1 and resources.memory_mib == 1.0
    assert "1m floor" in notes[0] and "1 MiB floor" in notes[1]
    assert round_resources(0.0034, 5.5 * MIB, 1, cpu_floor_millicores=1, memory_floor_mib=1)[1] == []
    with pytest.raises(ValueError, match="floors"):
        round_resources(0.1, MIB, 1, cpu_floor_millicores=0)
