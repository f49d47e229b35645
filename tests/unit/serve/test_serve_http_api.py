"""The HTTP layer alone: FastAPI TestClient against a fake backend (no Ray, no S3)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from fastapi.testclient import TestClient

from mora_platform.recommend.types import Recommendation, ResourceRecommendation
from serve.api import MAX_BODY_BYTES, MAX_JSON_DEPTH, RecommendationRequest, ServiceInfo
from serve.http_api import ModelOutcome, create_api, field_path
from serve.malformed import MALFORMED_CASES, MalformedCase

KNOWN = {"frontend": "20260101T000000Z-aaaaaa", "cartservice": "20260101T000000Z-bbbbbb"}


class FakeBackend:
    """Answers from a dict; records what it was asked."""

    def __init__(self, registry_problem: str | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.batches: list[list[str]] = []
        self.problem = registry_problem

    async def recommend(self, service: str, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        self.calls.append((service, len(requests)))
        if service not in KNOWN:
            return [ModelOutcome(404, error=f"unknown service {service!r}") for _ in requests]
        outcomes = []
        for request in requests:
            users = request.context.load_users if request.context and request.context.load_users else 10.0
            cores = round(0.001 * users, 3)
            rec = Recommendation(
                service=service,
                model_version=KNOWN[service],
                recommendations=ResourceRecommendation(
                    cpu_cores=cores,
                    cpu_millicores=round(cores * 1000),
                    memory_bytes=64 * 2**20,
                    memory_mib=64.0,
                    replicas=1,
                ),
                confidence=0.8,
                coverage_target=0.95,
            )
            outcomes.append(ModelOutcome(200, rec.model_dump(mode="json")))
        return outcomes

    async def recommend_batch(self, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        self.batches.append([request.service for request in requests])
        return [(await self.recommend(request.service, [request]))[0] for request in requests]

    async def list_services(self) -> list[ServiceInfo]:
        return [ServiceInfo(service=name, latest_version=version) for name, version in sorted(KNOWN.items())]

    async def registry_problem(self) -> str | None:
        return self.problem


@pytest.fixture()
def client() -> TestClient:
    return TestClient(create_api(FakeBackend()))


def send(client: TestClient, case: MalformedCase, service: str = "frontend", token: str | None = None):
    headers = dict(case.headers)
    if token:
        headers["authorization"] = f"Bearer {token}"
    return client.post(case.path, content=case.payload(service), headers=headers)


def test_single_recommendation(client: TestClient) -> None:
    response = client.post("/v1/recommendations", json={"service": "frontend", "context": {"load_users": 50}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["service"] == "frontend"
    assert body["model_version"] == KNOWN["frontend"]
    assert body["recommendations"]["cpu_millicores"] == 50
    assert body["degraded"] is False


def test_batch_answers_in_order_and_isolates_unknown(client: TestClient) -> None:
    requests = [
        {"service": "frontend", "context": {"load_users": 10}},
        {"service": "nope"},
        {"service": "cartservice"},
        {"service": "frontend", "context": {"load_users": 30}},
    ]
    response = client.post("/v1/recommendations:batch", json={"requests": requests})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["service"] for r in results] == ["frontend", "nope", "cartservice", "frontend"]
    assert [r["status"] for r in results] == [200, 404, 200, 200]
    assert results[0]["recommendation"]["recommendations"]["cpu_millicores"] == 10
    assert results[3]["recommendation"]["recommendations"]["cpu_millicores"] == 30
    assert "nope" in results[1]["error"]


def test_batch_is_one_backend_call() -> None:
    backend = FakeBackend()
    client = TestClient(create_api(backend))
    body = {"requests": [{"service": "frontend"}, {"service": "cartservice"}, {"service": "frontend"}]}
    assert client.post("/v1/recommendations:batch", json=body).status_code == 200
    assert backend.batches == [["frontend", "cartservice", "frontend"]]


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=lambda case: case.name)
def test_malformed_request_gets_4xx_naming_the_field(client: TestClient, case: MalformedCase) -> None:
    response = send(client, case)
    assert response.status_code == case.status, response.text
    detail = response.json()["detail"]
    assert case.mentions in detail, detail


def test_malformed_table_is_large_enough() -> None:
    assert len(MALFORMED_CASES) >= 20
    assert len({case.name for case in MALFORMED_CASES}) == len(MALFORMED_CASES)


def test_validation_errors_list_fields(client: TestClient) -> None:
    body = {"service": "frontend", "context": {"load_users": -1, "replica_count": "two"}}
    response = client.post("/v1/recommendations", json=body)
    assert response.status_code == 422
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"context.load_users", "context.replica_count"}


def test_streamed_oversized_body_is_413(client: TestClient) -> None:
    def chunks():
        yield b'{"service":"frontend","pad":"'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    response = client.post(
        "/v1/recommendations", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text


def test_auth_required_when_token_set() -> None:
    client = TestClient(create_api(FakeBackend(), token="s3cr3t-token"))
    body = {"service": "frontend"}
    assert client.post("/v1/recommendations", json=body).status_code == 401
    wrong = client.post("/v1/recommendations", json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/services").status_code == 401
    right = client.post("/v1/recommendations", json=body, headers={"authorization": "Bearer s3cr3t-token"})
    assert right.status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_auth_checked_before_body(client: TestClient) -> None:
    secured = TestClient(create_api(FakeBackend(), token="t"))
    response = secured.post(
        "/v1/recommendations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


def test_services_and_health(client: TestClient) -> None:
    services = client.get("/v1/services").json()["services"]
    assert [s["service"] for s in services] == ["cartservice", "frontend"]
    assert client.get("/healthz").json() == {"status": "ok", "registry": "reachable", "detail": None}


def test_health_unavailable_when_registry_down() -> None:
    problem = "EndpointConnectionError: Could not connect to http://10.1.2.3:9000/models"
    client = TestClient(create_api(FakeBackend(registry_problem=problem)))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["registry"] == "unreachable"
    # /healthz is open: it says the registry is unreachable, never where the storage lives
    assert "10.1.2.3" not in response.text and "9000" not in response.text
    assert client.get("/v1/services").status_code == 503


def test_a_post_to_a_get_route_is_405_not_415(client: TestClient) -> None:
    for path in ("/v1/services", "/healthz"):
        response = client.post(path, content=b"x", headers={"content-type": "text/plain"})
        assert response.status_code == 405, (path, response.status_code, response.text)
    assert client.post("/v1/nowhere", json={}).status_code == 404


def test_a_whole_replica_count_may_be_sent_as_a_float(client: TestClient) -> None:
    ok = client.post(
        "/v1/recommendations", json={"service": "frontend", "context": {"replica_count": 1396.0}}
    )
    assert ok.status_code == 200, ok.text
    for bad in (2.5, "3", True):
        refused = client.post(
            "/v1/recommendations", json={"service": "frontend", "context": {"replica_count": bad}}
        )
        assert refused.status_code == 422 and "context.replica_count" in refused.text, (bad, refused.text)


def test_openapi_documents_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/recommendations", "/v1/recommendations:batch", "/v1/services", "/healthz"} <= set(
        spec["paths"]
    )
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()
    assert client.get("/docs").status_code == 200


def test_field_path_formatting() -> None:
    assert field_path(("body", "history", 3, "cpu_cores_value")) == "history[3].cpu_cores_value"
    assert field_path(("body",)) == "body"
    assert field_path(("body", "requests", 0, "service")) == "requests[0].service"


def test_open_paths_under_a_root_path() -> None:
    client = TestClient(create_api(FakeBackend(), token="t"), root_path="/secured")
    assert client.get("/secured/healthz").status_code == 200
    assert client.get("/secured/v1/services").status_code == 401


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 1_000, 100_000])
def test_deeply_nested_json_is_400_saying_so(client: TestClient, depth: int) -> None:
    """Beyond the JSON parser's own limit (RecursionError) or just past ours, the answer says what is wrong."""
    body = b'{"service":"frontend","history":' + b"[" * depth + b"]" * depth + b"}"
    response = client.post("/v1/recommendations", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert (
        response.json()["detail"] == f"invalid request: body: JSON nested deeper than {MAX_JSON_DEPTH} levels"
    )
    assert response.json()["errors"] == [
        {"field": "body", "message": f"JSON nested deeper than {MAX_JSON_DEPTH} levels"}
    ]
    batch = b'{"requests":' + b"[" * depth + b"]" * depth + b"}"
    response = client.post(
        "/v1/recommendations:batch", content=batch, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "nested deeper" in response.json()["detail"]


def test_nesting_within_the_limit_is_judged_field_by_field(client: TestClient) -> None:
    depth = MAX_JSON_DEPTH - 1  # with the enclosing object: exactly MAX_JSON_DEPTH levels
    body = b'{"service":"frontend","context":' + b"[" * depth + b"]" * depth + b"}"
    response = client.post("/v1/recommendations", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "context"
