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
from mora_platform.recommend.types import MemberContribution, Recommendation, ResourceRecommendation


def _rec(service: str, millicores: int, mib: int, replicas: int, **extra: object) -> Recommendation:
    return Recommendation(
        service=service,
        model_version="20260301T120000Z-0a1b2c",
        recommendations=ResourceRecommendation(
            cpu_cores=millicores / 1000,
            cpu_millicores=millicores,
            memory_bytes=mib * 2**20,
            memory_mib=float(mib),
            replicas=replicas,
        ),
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
                        {"name": "frontend", "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}
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
    odd = _rec("x", 10, 0, 1).model_copy(
        update={"recommendations": ResourceRecommendation(
            cpu_cores=0.01, cpu_millicores=10, memory_bytes=2**20 + 1, memory_mib=1.000001, replicas=1
        )}
    )  # fmt: skip
    requests = yaml.safe_load(format_recommendations([odd], "k8s-patch"))["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert requests["resources"]["requests"] == {
        "cpu": "10m",
        "memory": "2Mi",
    }  # memory rounded up, never down


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
