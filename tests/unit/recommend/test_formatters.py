"""Output formats: every format carries the same numbers; the k8s patch has the exact shape."""

from __future__ import annotations

import json

import pytest
import yaml

from mora_platform.recommend.formatters import (
    UnknownFormatError,
    available_formats,
    format_recommendations,
    register_formatter,
)
from mora_platform.recommend.kubernetes import ResourcePolicy, plan
from mora_platform.recommend.types import MemberContribution, Recommendation
from mora_platform.recommend.workload import ContainerState, HpaState, WorkloadState


def _rec(service: str, millicores: int, mib: int, replicas: int, **extra: object) -> Recommendation:
    """A recommendation of ``millicores`` / ``mib`` per pod at ``replicas`` pods, kept (one container)."""
    workload = extra.pop("workload", None)
    kube = plan(
        service,
        {"cpu": millicores / 1000, "memory": mib * 2**20},
        pods_now=replicas,
        workload=workload,  # type: ignore[arg-type]
        policy=ResourcePolicy(pod_cpu_max_cores=100, min_replicas=replicas),
    )
    return Recommendation(
        service=service,
        namespace=extra.pop("namespace", None),  # type: ignore[arg-type]
        model_version="20260301T120000Z-0a1b2c",
        recommendations=kube.resources,
        containers=kube.containers,
        replica_decision=kube.replicas,
        confidence=0.87,
        contributions={
            "prophet": MemberContribution(
                weight=0.4, cpu_cores=0.2, memory_bytes=5.0e8, replicas=2.0, status="ok"
            ),
            "lstm": MemberContribution(
                weight=0.6, cpu_cores=0.26, memory_bytes=5.2e8, replicas=3.0, status="ok"
            ),
        },
        **extra,  # type: ignore[arg-type]
    )


RECS = [
    _rec("frontend", 250, 512, 3),
    _rec("cartservice", 1500, 96, 1, degraded=True, fallbacks=["lstm:missing"], reasons=["LSTM failed"]),
]


def test_known_formats() -> None:
    assert {"table", "json", "yaml", "k8s-patch"} <= set(available_formats())


@pytest.mark.parametrize("fmt,parse", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_structured_formats_parse_back_to_the_same_numbers(fmt: str, parse: object) -> None:
    parsed = parse(format_recommendations(RECS, fmt))  # type: ignore[operator]
    assert isinstance(parsed, list) and len(parsed) == 2
    for document, rec in zip(parsed, RECS, strict=True):
        assert Recommendation.model_validate(document) == rec
        assert document["recommendations"]["cpu_millicores"] == rec.recommendations.cpu_millicores
        assert document["recommendations"]["memory_bytes"] == rec.recommendations.memory_bytes
        assert document["contributions"]["lstm"]["weight"] == 0.6
    assert parsed[1]["degraded"] is True and parsed[1]["fallbacks"] == ["lstm:missing"]


def test_k8s_patch_exact_structure_and_units() -> None:
    documents = list(yaml.safe_load_all(format_recommendations(RECS, "k8s-patch")))
    assert documents[0] == {
        "spec": {
            "replicas": 3,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "frontend",
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "512Mi"},
                                "limits": {"memory": "512Mi"},
                            },
                        }
                    ]
                }
            },
        }
    }
    second = documents[1]["spec"]
    assert second["replicas"] == 1
    assert second["template"]["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "1500m",
        "memory": "96Mi",
    }


def test_k8s_patch_container_override_and_rounding() -> None:
    one = format_recommendations(RECS[:1], "k8s-patch", container="server")
    assert "kubectl patch deployment frontend" in one
    assert yaml.safe_load(one)["spec"]["template"]["spec"]["containers"][0]["name"] == "server"
    per_service = format_recommendations(RECS, "k8s-patch", container={"cartservice": "cart"})
    names = [d["spec"]["template"]["spec"]["containers"][0]["name"] for d in yaml.safe_load_all(per_service)]
    assert names == ["frontend", "cart"]
    odd = plan("x", {"cpu": 0.01, "memory": 2**20 + 1}, pods_now=1, memory_floor_mib=1)
    rec = _rec("x", 10, 1, 1).model_copy(update={"containers": odd.containers})
    requests = yaml.safe_load(format_recommendations([rec], "k8s-patch"))["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert requests["resources"]["requests"] == {"cpu": "10m", "memory": "2Mi"}  # rounded up, never down


def _strategic_merge(deployment: dict, patch: dict) -> dict:
    """Kubernetes' strategic merge for what a Deployment patch touches: maps merge, containers by name."""
    merged = dict(deployment)
    for key, value in patch.items():
        if key == "containers":
            by_name = {c["name"]: c for c in merged.get(key, [])}
            out = []
            for container in merged.get(key, []):
                update = next((c for c in value if c["name"] == container["name"]), None)
                out.append(_strategic_merge(container, update) if update else container)
            out.extend(c for c in value if c["name"] not in by_name)  # what kubectl would append
            merged[key] = out
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _strategic_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "checkout", "namespace": "shop"},
    "spec": {
        "replicas": 4,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "shop/checkout:1",
                        "resources": {"requests": {"cpu": "500m"}},
                    },
                    {
                        "name": "istio-proxy",
                        "image": "istio/proxyv2",
                        "resources": {"requests": {"cpu": "100m"}},
                    },
                ]
            }
        },
    },
}


def test_patch_applied_to_a_deployment_names_real_containers_and_leaves_others_untouched() -> None:
    workload = WorkloadState(
        service="checkout",
        namespace="shop",
        pods=4,
        containers=[ContainerState(name="server", cpu_request_cores=0.5, cpu_share=1.0, memory_share=1.0)],
    )
    rec = _rec("checkout", 120, 200, 4, workload=workload, namespace="shop")
    text = format_recommendations([rec], "k8s-patch")
    assert "kubectl patch deployment checkout --namespace shop" in text
    patched = _strategic_merge(DEPLOYMENT, yaml.safe_load(text))
    containers = patched["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["server", "istio-proxy"]  # nothing appended
    assert containers[0]["resources"]["requests"] == {"cpu": "120m", "memory": "200Mi"}
    assert containers[0]["image"] == "shop/checkout:1"
    assert containers[1] == DEPLOYMENT["spec"]["template"]["spec"]["containers"][1]  # untouched
    assert patched["spec"]["replicas"] == 4


def test_patch_leaves_replicas_to_an_hpa() -> None:
    workload = WorkloadState(service="web", pods=3, hpa=HpaState(name="web", min_replicas=2, max_replicas=6))
    rec = _rec("web", 100, 64, 3, workload=workload)
    document = yaml.safe_load(format_recommendations([rec], "k8s-patch"))
    assert "replicas" not in document["spec"]
    assert "3 (hpa/web)" in format_recommendations([rec], "table")


def test_table_shows_current_recommended_and_difference_per_container_and_namespace() -> None:
    workload = WorkloadState(
        service="checkout",
        namespace="shop",
        pods=4,
        containers=[
            ContainerState(
                name="server", cpu_request_cores=0.5, memory_request_bytes=256 * 2**20, cpu_share=0.8
            ),
            ContainerState(
                name="sidecar", cpu_request_cores=0.1, memory_request_bytes=64 * 2**20, cpu_share=0.2
            ),
        ],
    )
    rec = _rec("checkout", 100, 128, 4, workload=workload, namespace="shop")
    text = format_recommendations([rec], "table", width=200)
    server = next(line for line in text.splitlines() if "server" in line and "│" in line)
    assert "500m -> 80m (-420m)" in server
    assert "256Mi -> 103Mi (-153Mi)" in server  # memory split by the current requests (no usage share)
    # namespace: 4 pods x (500m + 100m) now, 4 x (80m + 20m) recommended
    assert "namespace shop: all pods' requests: cpu 2400m -> 400m (-2000m)" in text


def test_table_shows_each_service_and_numbers() -> None:
    text = format_recommendations(RECS, "table")
    assert "\x1b[" not in text  # plain text, no colour codes
    rows = [line for line in text.splitlines() if line.startswith("│")]
    lines = [line for line in rows if "frontend" in line or "cartservice" in line]
    assert len(lines) == 2
    assert "250m" in lines[0] and "512Mi" in lines[0] and "0.87" in lines[0]
    assert "1500m" in lines[1] and "96Mi" in lines[1] and "degraded, 1 fallback" in lines[1]
    assert "cartservice: fallback: lstm:missing" in text
    assert "cartservice: note: LSTM failed" in text


def test_unknown_format_lists_known_ones() -> None:
    with pytest.raises(
        UnknownFormatError, match=r"unknown output format 'csv'; known formats: .*json.*k8s-patch"
    ):
        format_recommendations(RECS, "csv")


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ValueError, match=r"does not take option.*container"):
        format_recommendations(RECS, "json", container="x")


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_formatter("json")(lambda recs: "")
