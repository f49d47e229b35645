"""ServeBackend with a stub DeploymentHandle and a local registry (no Ray cluster)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mora_platform.registry import LocalBlobBackend, ModelRegistry
from serve.api import RecommendationRequest
from serve.ingress import ServeBackend


class StubMethod:
    def __init__(self, handle: StubHandle) -> None:
        self.handle = handle

    def remote(self, payloads: list[dict[str, Any]]) -> Any:
        self.handle.calls.append((self.handle.model_id, payloads))
        return self.handle.answer(self.handle.model_id, payloads)


class StubMixed:
    def __init__(self, handle: StubHandle) -> None:
        self.handle = handle

    async def _answer(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [(await self.handle.answer(p["service"], [p]))[0] for p in payloads]

    def remote(self, payloads: list[dict[str, Any]]) -> Any:
        self.handle.calls.append((self.handle.model_id, payloads))
        return self._answer(payloads)


class StubHandle:
    """Mimics ``DeploymentHandle.options(multiplexed_model_id=...).recommend.remote(...)``."""

    def __init__(
        self, known: set[str], delay: float = 0.0, model_id: str | None = None, root: Any = None
    ) -> None:
        self.known, self.delay, self.model_id = known, delay, model_id
        self.root = root or self
        self.calls: list[tuple[str | None, list[dict[str, Any]]]] = self.root.calls if root else []
        self.options_calls = 0

    def options(self, *, multiplexed_model_id: str) -> StubHandle:
        self.root.options_calls += 1
        return StubHandle(self.known, self.delay, multiplexed_model_id, self.root)

    @property
    def recommend(self) -> StubMethod:
        return StubMethod(self)

    @property
    def recommend_mixed(self) -> StubMixed:
        return StubMixed(self)

    async def answer(self, service: str | None, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        await asyncio.sleep(self.delay)
        if service not in self.known:
            return [{"status": 404, "recommendation": None, "error": f"unknown service {service!r}"}] * len(
                payloads
            )
        return [{"status": 200, "recommendation": {"service": service, **p}, "error": None} for p in payloads]


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(LocalBlobBackend(tmp_path / "blobs"))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text(json.dumps({"cores": 0.1}))
    registry.publish("svc-a", bundle, metadata={"metrics": {"cpu": {"mae": 0.5}}})
    return registry


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_payloads_are_json_without_nulls(registry: ModelRegistry) -> None:
    handle = StubHandle({"svc-a"})
    backend = ServeBackend(handle, registry)  # type: ignore[arg-type]
    request = RecommendationRequest.model_validate({"service": "svc-a", "context": {"load_users": 5}})
    [outcome] = run(backend.recommend("svc-a", [request]))
    assert outcome.status == 200
    assert handle.calls == [("svc-a", [{"service": "svc-a", "context": {"load_users": 5.0}}])]


def test_routed_handles_are_reused_and_unknown_services_remembered(registry: ModelRegistry) -> None:
    handle = StubHandle({"svc-a"})
    backend = ServeBackend(handle, registry)  # type: ignore[arg-type]
    request = RecommendationRequest(service="svc-a")
    unknown = RecommendationRequest(service="svc-zz")

    async def scenario() -> None:
        for _ in range(3):
            await backend.recommend("svc-a", [request])
        for _ in range(3):
            [outcome] = await backend.recommend("svc-zz", [unknown])
            assert outcome.status == 404 and "svc-zz" in (outcome.error or "")

    run(scenario())
    assert handle.options_calls == 2
    assert [service for service, _ in handle.calls] == ["svc-a"] * 3 + ["svc-zz"]


def test_slow_model_times_out_with_504(registry: ModelRegistry) -> None:
    backend = ServeBackend(StubHandle({"svc-a"}, delay=1.0), registry, request_timeout_s=0.05)  # type: ignore[arg-type]
    [outcome] = run(backend.recommend("svc-a", [RecommendationRequest(service="svc-a")]))
    assert outcome.status == 504 and "svc-a" in (outcome.error or "")


def test_services_and_health_from_registry(registry: ModelRegistry, tmp_path: Path) -> None:
    backend = ServeBackend(StubHandle(set()), registry)  # type: ignore[arg-type]
    [info] = run(backend.list_services())
    assert info.service == "svc-a"
    assert info.latest_version == registry.latest_version("svc-a")
    assert info.metrics == {"cpu": {"mae": 0.5}} and info.trained_at is not None
    assert run(backend.registry_problem()) is None


def test_health_reports_unreachable_registry(tmp_path: Path) -> None:
    class Broken(LocalBlobBackend):
        def list_keys(self, prefix: str) -> list[str]:
            raise ConnectionError("connection refused")

    backend = ServeBackend(StubHandle(set()), ModelRegistry(Broken(tmp_path)))  # type: ignore[arg-type]
    assert "connection refused" in (run(backend.registry_problem()) or "")


def test_batch_is_one_call_routed_to_its_most_frequent_service(registry: ModelRegistry) -> None:
    handle = StubHandle({"svc-a", "svc-b"})
    backend = ServeBackend(handle, registry)  # type: ignore[arg-type]
    services = ["svc-b", "svc-a", "svc-zz", "svc-a"]
    requests = [RecommendationRequest(service=s) for s in services]
    outcomes = run(backend.recommend_batch(requests))
    assert [o.status for o in outcomes] == [200, 200, 404, 200]
    assert [(o.recommendation or {}).get("service") for o in outcomes] == ["svc-b", "svc-a", None, "svc-a"]
    assert len(handle.calls) == 1 and handle.calls[0][0] == "svc-a"
    # the unknown service is now remembered and no longer sent
    run(backend.recommend_batch(requests))
    assert [p["service"] for p in handle.calls[1][1]] == ["svc-b", "svc-a", "svc-a"]


def test_services_advertise_the_served_version_not_a_refused_latest(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    first = registry.latest_version("svc-a")
    bundle = tmp_path / "bundle2"
    bundle.mkdir()
    (bundle / "model.json").write_text(json.dumps({"cores": 0.2}))
    second = registry.publish("svc-a", bundle, metadata={})
    registry.backend.put_bytes(f"models/svc-a/{second}/model.json", b'{"cores": 9.0}')  # tampered
    [info] = run(ServeBackend(StubHandle(set()), registry).list_services())  # type: ignore[arg-type]
    assert info.latest_version == first
    registry.backend.put_bytes(f"models/svc-a/{second}/model.json", json.dumps({"cores": 0.2}).encode())
    registry.backend.put_bytes("models/svc-a/LATEST", b"../../x")
    [info] = run(ServeBackend(StubHandle(set()), registry).list_services())  # type: ignore[arg-type]
    assert info.latest_version == second
