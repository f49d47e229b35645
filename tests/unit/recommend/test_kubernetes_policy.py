"""From per-pod requests to Kubernetes settings (``recommend.kubernetes`` and ``recommend.policy``).

Requests are per container, per pod; the replica count is the Deployment's. These tests pin the units,
the rounding, the floors, the replica rule, the HPA, OOM and container-split rules.
"""

from __future__ import annotations

import pytest

from mora_platform.recommend.kubernetes import ResourcePolicy, plan
from mora_platform.recommend.policy import MIB, build_recommendation
from mora_platform.recommend.types import MemberContribution
from mora_platform.recommend.workload import ContainerState, HpaState, WorkloadState


@pytest.mark.parametrize(
    ("cores", "millicores"),
    [(0.0123, 13), (0.5, 500), (0.1 + 0.2, 300), (1.0000000001, 1000), (1.0004, 1001)],
)
def test_cpu_rounds_up_to_whole_millicores(cores: float, millicores: int) -> None:
    result = plan(
        "svc", {"cpu": cores, "memory": 64 * MIB}, pods_now=1, policy=ResourcePolicy(pod_cpu_max_cores=4)
    )
    assert result.resources.cpu_millicores == millicores
    assert result.resources.cpu_cores == millicores / 1000
    assert result.replicas.recommended == 1


def test_memory_rounds_up_to_whole_mib_and_limit_equals_request_by_default() -> None:
    result = plan("svc", {"cpu": 0.2, "memory": 100.2 * MIB}, pods_now=1)
    assert result.resources.memory_mib == 101.0 and result.resources.memory_bytes == 101 * MIB
    assert result.resources.memory_limit_bytes == 101 * MIB
    assert result.resources.cpu_limit_millicores is None  # CPU limits are off by default
    limited = plan(
        "svc", {"cpu": 0.2, "memory": 100 * MIB}, pods_now=1, policy=ResourcePolicy(cpu_limit_ratio=2)
    )
    assert limited.resources.cpu_limit_millicores == 400


def test_floors_apply_per_container_and_are_explained() -> None:
    result = plan("svc", {"cpu": 0.0004, "memory": 1 * MIB}, pods_now=1)
    assert result.resources.cpu_millicores == 10 and result.resources.memory_mib == 32.0
    assert any("10m floor" in r for r in result.reasons) and any("32 MiB floor" in r for r in result.reasons)
    low = plan(
        "svc", {"cpu": 0.0034, "memory": 5.5 * MIB}, pods_now=1, cpu_floor_millicores=1, memory_floor_mib=1
    )
    assert low.resources.cpu_millicores == 4 and low.resources.memory_mib == 6.0
    with pytest.raises(ValueError, match="floors"):
        plan("svc", {"cpu": 0.1}, cpu_floor_millicores=0)


def test_replicas_follow_load_not_the_replica_history() -> None:
    # adservice-like: 5 millicores per pod over 4 pods -> one pod carries the 20m; the CPU per pod is rescaled
    small = plan("adservice", {"cpu": 0.005, "memory": 60 * MIB}, pods_now=4)
    assert small.replicas.recommended == 1 and small.replicas.current == 4
    assert small.resources.cpu_millicores == 20
    assert small.resources.memory_mib == 60.0  # memory per pod is not rescaled
    assert any("spread over 1" in r for r in small.reasons)
    # busy: 0.9 cores per pod over 4 pods with at most 0.5 cores a pod -> 8 pods of 450m
    busy = plan(
        "api", {"cpu": 0.9, "memory": 200 * MIB}, pods_now=4, policy=ResourcePolicy(pod_cpu_max_cores=0.5)
    )
    assert busy.replicas.recommended == 8 and busy.resources.cpu_millicores == 450
    # the total CPU the Deployment asks for is kept when the count changes
    assert busy.replicas.recommended * busy.resources.cpu_millicores == pytest.approx(4 * 900, abs=8)
    floor = plan(
        "adservice", {"cpu": 0.005, "memory": 60 * MIB}, pods_now=4, policy=ResourcePolicy(min_replicas=2)
    )
    assert floor.replicas.recommended == 2 and floor.resources.cpu_millicores == 10


def test_an_hpa_owns_the_replica_count_and_bounds_the_request() -> None:
    hpa = HpaState(name="web", min_replicas=2, max_replicas=4, target_cpu_utilization=0.5)
    workload = WorkloadState(service="web", pods=3, hpa=hpa)
    # pods average 150m; at a 200m request the HPA (50%) holds 100m a pod -> 4.5 pods > max 4: raised
    result = plan("web", {"cpu": 0.2, "memory": 128 * MIB}, pods_now=3, pod_cpu_mean=0.15, workload=workload)
    assert result.resources.replicas is None and result.replicas.recommended is None
    assert result.replicas.managed_by == "hpa/web"
    assert result.resources.cpu_millicores == 225  # 3 x 150m / (0.5 x 4)
    assert "over its max of 4" in result.replicas.reason


def test_oom_kill_raises_memory_above_the_level_it_died_at() -> None:
    workload = WorkloadState(
        service="cart",
        pods=2,
        containers=[ContainerState(name="server", oom_kills=2, oom_memory_bytes=256 * MIB)],
    )
    result = plan("cart", {"cpu": 0.1, "memory": 200 * MIB}, pods_now=2, workload=workload)
    server = result.containers[0]
    assert server.recommended.memory_request_mib == 356  # max(256 x 1.2, 256 + 100)
    assert server.recommended.memory_limit_mib == 356
    assert any("OOM-killed at" in r for r in server.reasons)


def test_containers_split_by_usage_share_and_keep_their_current_values() -> None:
    workload = WorkloadState(
        service="checkout",
        namespace="shop",
        pods=3,
        containers=[
            ContainerState(name="server", cpu_share=0.75, memory_share=0.5, cpu_request_cores=0.5),
            ContainerState(
                name="istio-proxy", cpu_share=0.25, memory_share=0.5, memory_request_bytes=64 * MIB
            ),
        ],
    )
    policy = ResourcePolicy(pod_cpu_max_cores=0.2)  # 3 pods x 200m need 3 pods of at most 200m: kept
    result = plan("checkout", {"cpu": 0.2, "memory": 200 * MIB}, pods_now=3, workload=workload, policy=policy)
    assert result.replicas.recommended == 3
    names = [c.name for c in result.containers]
    assert names == ["server", "istio-proxy"]
    server, proxy = result.containers
    assert server.recommended.cpu_request_millicores == 150 and proxy.recommended.cpu_request_millicores == 50
    assert server.recommended.memory_request_mib == 100 and proxy.recommended.memory_request_mib == 100
    assert server.current is not None and server.current.cpu_request_millicores == 500
    assert proxy.current is not None and proxy.current.memory_request_mib == 64
    assert result.resources.cpu_millicores == 200  # the pod is the sum of its containers


def test_without_a_workload_one_container_named_like_the_service_is_assumed_and_said() -> None:
    result = plan("frontend", {"cpu": 0.1, "memory": 64 * MIB}, pods_now=1)
    assert [c.name for c in result.containers] == ["frontend"]
    assert any("containers unknown" in r for r in result.reasons)
    named = plan("frontend", {"cpu": 0.1, "memory": 64 * MIB}, pods_now=1, container="server")
    assert [c.name for c in named.containers] == ["server"]


def test_build_recommendation_carries_flags_units_and_unavailable_targets() -> None:
    rec = build_recommendation(
        "cartservice",
        {"cpu": 0.25, "memory": float("nan"), "replicas": 2.4},
        1.7,
        contributions={"prophet": MemberContribution(weight=1.0, cpu_cores=0.2, status="ok")},
        degraded=True,
        fallbacks=["prophet: daily seasonality dropped"],
        reasons=["lstm: missing"],
        model_version="v1",
        pods_now=1,
        unavailable={"memory": "the data has no memory series"},
    )
    assert rec.confidence == 1.0  # clipped into [0, 1]
    assert rec.recommendations.cpu_millicores == 250
    assert rec.recommendations.memory_mib is None and rec.recommendations.memory_bytes is None
    assert rec.unavailable == {"memory": "the data has no memory series"}
    assert any("memory not recommended" in r for r in rec.reasons)
    assert rec.reasons[0] == "lstm: missing"
    assert "per container, per pod" in rec.units
    assert rec.degraded and rec.fallbacks and rec.contributions["prophet"].cpu_cores == 0.2
    assert rec.replica_decision is not None and rec.replica_decision.recommended == 1
