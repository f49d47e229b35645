"""The ingress's answer cache (``serve.answer_cache``): the HTTP app over ``ServeBackend`` and a stub
DeploymentHandle that counts model calls (no Ray, no S3), on a clock the tests move."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from mora_platform.registry import LocalBlobBackend, ModelRegistry
from mora_platform.settings import MoraSettings
from serve.answer_cache import CACHE_HEADER, AnswerCache, cache_key
from serve.api import RecommendationRequest
from serve.app import ServeAppArgs, answer_cache_ttl
from serve.http_api import ModelOutcome, create_api
from serve.ingress import ServeBackend

TTL_S = 2.0
NEWEST = "2026-01-01T00:00:00+00:00"
NEWEST_EPOCH = 1767225600.0


class Clocks:
    """The cache's monotonic clock and wall clock, moved by the tests."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall = NEWEST_EPOCH + 30.0

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


class Models:
    """Stands in for the model DeploymentHandle: counts calls, answers what ``reply`` says."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.status = 200
        self.degraded = False
        self.wall = lambda: NEWEST_EPOCH + 30.0
        self.cancelled = 0

    def options(self, *, multiplexed_model_id: str) -> Routed:
        return Routed(self, multiplexed_model_id)

    def answer(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.status != 200:
            return {"status": self.status, "recommendation": None, "error": f"status {self.status}"}
        users = (payload.get("context") or {}).get("load_users", 10.0)
        recommendation = {
            "service": payload["service"],
            "model_version": "v1",
            "recommendations": {"cpu_millicores": round(users), "memory_mib": 64.0},
            "confidence": 0.8,
            "degraded": self.degraded,
            "history": {
                "source": "dataset:ob",
                "rows": 280,
                "newest": NEWEST,
                "age_seconds": round(self.wall() - NEWEST_EPOCH, 1),
            },
            "calls": len(self.calls) - 1,  # which call answered
        }
        return {"status": 200, "recommendation": recommendation, "error": None}


class Routed:
    def __init__(self, models: Models, service: str) -> None:
        self.models, self.service = models, service

    @property
    def recommend(self) -> Method:
        return Method(self, "recommend")

    @property
    def recommend_mixed(self) -> Method:
        return Method(self, "recommend_mixed")


class Method:
    def __init__(self, routed: Routed, name: str) -> None:
        self.routed, self.name = routed, name

    def remote(self, payloads: list[dict[str, Any]]) -> Any:
        models = self.routed.models
        models.calls.append((self.name, self.routed.service, payloads))

        async def answer() -> list[dict[str, Any]]:
            try:
                await asyncio.sleep(models.delay)
            except asyncio.CancelledError:
                models.cancelled += 1
                raise
            return [models.answer(payload) for payload in payloads]

        return answer()


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(LocalBlobBackend(tmp_path / "blobs"))


@pytest.fixture()
def clocks() -> Clocks:
    return Clocks()


def app_for(
    registry: ModelRegistry,
    clocks: Clocks,
    models: Models,
    ttl_s: float = TTL_S,
    timeout_s: float = 30.0,
    **limits: Any,
) -> tuple[Any, AnswerCache]:
    models.wall = lambda: clocks.wall
    cache = AnswerCache(ttl_s, clock=lambda: clocks.monotonic, wall=lambda: clocks.wall, **limits)
    backend = ServeBackend(models, registry, request_timeout_s=timeout_s)  # type: ignore[arg-type]
    return create_api(backend, answer_cache=cache), cache


def ask(client: TestClient, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/recommendations", content=content, headers={"content-type": "application/json"})


QUESTION = {"service": "svc-a", "context": {"load_users": 50, "replica_count": 2}}


def test_a_repeated_question_within_the_ttl_makes_no_model_call(
    registry: ModelRegistry, clocks: Clocks
) -> None:
    models = Models()
    app, cache = app_for(registry, clocks, models)
    client = TestClient(app)
    first = ask(client, QUESTION)
    assert first.status_code == 200 and first.headers[CACHE_HEADER] == "miss"
    assert first.headers["content-type"] == "application/json"
    clocks.advance(TTL_S - 0.1)
    again = ask(client, QUESTION)  # the same bytes: answered before parsing
    assert again.status_code == 200 and again.headers[CACHE_HEADER] == "hit"
    # another spelling of the same question: key order, spacing, 50.0 for 50
    spelled = b'{ "context": {"replica_count": 2, "load_users": 50.0}, "service": "svc-a" }'
    other = ask(client, spelled)
    assert other.status_code == 200 and other.headers[CACHE_HEADER] == "hit"
    assert len(models.calls) == 1
    assert other.json()["calls"] == again.json()["calls"] == first.json()["calls"] == 0
    # nothing differs but the age of the rows, brought up to the moment of the answer
    assert first.json()["history"]["age_seconds"] == 30.0
    assert again.json()["history"]["age_seconds"] == pytest.approx(30.0 + TTL_S - 0.1)
    assert {**again.json(), "history": None} == {**first.json(), "history": None}
    assert cache.stats.hits == 2


def test_a_hit_is_byte_for_byte_what_a_model_call_sends(registry: ModelRegistry, clocks: Clocks) -> None:
    app, _ = app_for(registry, clocks, Models())
    client = TestClient(app)
    first = ask(client, QUESTION)
    assert ask(client, QUESTION).content == first.content  # the wall clock did not move: same age
    uncached = TestClient(create_api(ServeBackend(Models(), registry)))  # type: ignore[arg-type]
    plain = ask(uncached, QUESTION)
    assert CACHE_HEADER not in plain.headers
    assert plain.content == first.content
    assert plain.headers["content-type"] == first.headers["content-type"]


def test_after_the_ttl_the_model_is_asked_again(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models()
    app, _ = app_for(registry, clocks, models)
    client = TestClient(app)
    ask(client, QUESTION)
    clocks.advance(TTL_S)
    refreshed = ask(client, QUESTION)  # the same bytes too: the alias expires with its answer
    assert refreshed.headers[CACHE_HEADER] == "miss" and refreshed.json()["calls"] == 1
    assert ask(client, QUESTION).headers[CACHE_HEADER] == "hit"
    assert len(models.calls) == 2


def test_the_ttl_counts_from_when_the_model_call_was_sent(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models()
    cache = AnswerCache(TTL_S, clock=lambda: clocks.monotonic, wall=lambda: clocks.wall)
    key = cache_key(RecommendationRequest.model_validate(QUESTION))
    assert key is not None
    outcome = ModelOutcome(**models.answer(QUESTION))
    started = clocks.monotonic
    clocks.advance(TTL_S - 0.5)  # a slow call
    assert cache.put(key, outcome, started) is not None
    clocks.advance(0.5)
    assert cache.get(key) is None
    clocks.advance(1.0)
    assert cache.put(key, outcome, started + 1.0) is None  # answered after its TTL was over: not kept


def test_different_bodies_and_services_do_not_share_answers(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models()
    app, _ = app_for(registry, clocks, models)
    client = TestClient(app)
    questions = [
        QUESTION,
        {**QUESTION, "service": "svc-b"},
        {"service": "svc-a", "context": {"load_users": 51, "replica_count": 2}},
        {"service": "svc-a"},
        {"service": "svc-a", "current": {"cpu_cores_value": 0.5}},
    ]
    answers = [ask(client, question) for question in questions]
    assert [a.headers[CACHE_HEADER] for a in answers] == ["miss"] * 5
    assert [a.json()["calls"] for a in answers] == [0, 1, 2, 3, 4]
    assert answers[1].json()["service"] == "svc-b"
    assert answers[2].json()["recommendations"]["cpu_millicores"] == 51
    again = [ask(client, question) for question in questions]
    assert [a.headers[CACHE_HEADER] for a in again] == ["hit"] * 5
    assert [a.json()["calls"] for a in again] == [0, 1, 2, 3, 4]
    assert len(models.calls) == 5


def test_concurrent_identical_misses_make_one_model_call(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models(delay=0.2)
    app, cache = app_for(registry, clocks, models)
    bodies = [json.dumps(QUESTION).encode()] * 12 + [json.dumps(QUESTION, indent=1).encode()] * 4

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/recommendations", content=body, headers={"content-type": "application/json"}
                    )
                    for body in bodies
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 16
    assert len(models.calls) == 1
    assert {r.content for r in responses} == {responses[0].content}
    assert cache.stats.shared == 15
    assert {r.headers[CACHE_HEADER] for r in responses} == {"miss"}


def test_a_shared_call_outlives_a_waiter_that_left_but_not_all_of_them() -> None:
    clock = [0.0]
    cache = AnswerCache(TTL_S, clock=lambda: clock[0])
    key = ("svc-a", "{}")
    calls: list[str] = []

    def call_of(delay: float) -> Any:
        async def call() -> ModelOutcome:
            calls.append("sent")
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                calls.append("cancelled")
                raise
            return ModelOutcome(200, {"service": "svc-a"})

        return call

    async def one_leaves() -> None:
        first = asyncio.ensure_future(cache.fetch(key, call_of(0.1)))
        second = asyncio.ensure_future(cache.fetch(key, call_of(0.1)))
        await asyncio.sleep(0.02)
        first.cancel()
        outcome, body = await second
        assert outcome.status == 200 and body == b'{"service":"svc-a"}'
        assert first.cancelled()

    asyncio.run(one_leaves())
    assert calls == ["sent"]

    async def all_leave() -> None:
        clock[0] += 10  # expired
        waiters = [asyncio.ensure_future(cache.fetch(key, call_of(5.0))) for _ in range(3)]
        await asyncio.sleep(0.02)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await asyncio.sleep(0.01)
        # a newcomer starts a call of its own rather than joining the cancelled one
        outcome, _ = await cache.fetch(key, call_of(0.0))
        assert outcome.status == 200

    calls.clear()
    asyncio.run(all_leave())
    assert calls == ["sent", "cancelled", "sent"]


@pytest.mark.parametrize("status", [404, 503, 500])
def test_error_outcomes_are_not_cached(
    registry: ModelRegistry, clocks: Clocks, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serve.ingress.UNKNOWN_TTL_S", 0.0)  # ServeBackend's memory of unknown services
    models = Models()
    app, cache = app_for(registry, clocks, models)
    client = TestClient(app)
    models.status = status
    failed = ask(client, QUESTION)
    assert failed.status_code == status and CACHE_HEADER not in failed.headers
    if status == 503:
        assert failed.headers["retry-after"] == "2"
    models.status = 200
    answered = ask(client, QUESTION)
    assert answered.status_code == 200 and answered.headers[CACHE_HEADER] == "miss"
    assert len(models.calls) == 2 and len(cache) == 1


def test_timeouts_are_not_cached(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models(delay=0.5)
    app, cache = app_for(registry, clocks, models, timeout_s=0.05)
    client = TestClient(app)
    assert ask(client, QUESTION).status_code == 504
    assert len(cache) == 0
    models.delay = 0.0
    assert ask(client, QUESTION).headers[CACHE_HEADER] == "miss"
    assert len(models.calls) == 2 and models.cancelled == 1


def test_degraded_answers_are_not_cached(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models()
    models.degraded = True
    app, cache = app_for(registry, clocks, models)
    client = TestClient(app)
    answers = [ask(client, QUESTION) for _ in range(3)]
    assert [a.headers[CACHE_HEADER] for a in answers] == ["miss"] * 3
    assert all(a.json()["degraded"] for a in answers)
    assert len(models.calls) == 3 and len(cache) == 0


def test_questions_with_history_are_not_cached(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models()
    app, cache = app_for(registry, clocks, models)
    client = TestClient(app)
    rows = [{"timestamp": f"t_{i}", "cpu_cores_value": 0.1, "mem_bytes_value": 1e8} for i in range(3)]
    body = {"service": "svc-a", "history": rows}
    answers = [ask(client, body) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert all(CACHE_HEADER not in a.headers for a in answers)
    assert len(models.calls) == 2 and len(cache) == 0
    assert cache_key(RecommendationRequest.model_validate(body)) is None


def test_a_zero_ttl_turns_the_cache_off(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models()
    app, cache = app_for(registry, clocks, models, ttl_s=0.0)
    client = TestClient(app)
    answers = [ask(client, QUESTION) for _ in range(3)]
    assert all(a.status_code == 200 and CACHE_HEADER not in a.headers for a in answers)
    assert len(models.calls) == 3 and len(cache) == 0
    assert "cached" not in client.get("/openapi.json").json()["info"]["description"]


def test_the_openapi_description_states_the_ttl(registry: ModelRegistry, clocks: Clocks) -> None:
    app, _ = app_for(registry, clocks, Models())
    spec = TestClient(app).get("/openapi.json").json()
    assert "cached for 2 s per ingress replica" in spec["info"]["description"]
    headers = spec["paths"]["/v1/recommendations"]["post"]["responses"]["200"]["headers"]
    assert headers[CACHE_HEADER]["schema"]["enum"] == ["hit", "miss"]


def test_the_lru_bound_holds(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models()
    app, cache = app_for(registry, clocks, models, max_entries=3)
    client = TestClient(app)
    services = [f"svc-{i}" for i in range(5)]
    for service in services:
        assert ask(client, {"service": service}).headers[CACHE_HEADER] == "miss"
        assert len(cache) <= 3
    # svc-0 and svc-1 were evicted (least recently used); svc-2..4 are still answered from the cache
    assert [ask(client, {"service": s}).headers[CACHE_HEADER] for s in services[2:]] == ["hit"] * 3
    assert ask(client, {"service": "svc-0"}).headers[CACHE_HEADER] == "miss"
    assert len(cache) == 3 and cache.stats.evicted == 3
    assert len(models.calls) == 6


def test_the_memory_bound_holds(clocks: Clocks) -> None:
    cache = AnswerCache(TTL_S, max_bytes=100_000, clock=lambda: clocks.monotonic, wall=lambda: clocks.wall)
    for index in range(300):
        key = (f"svc-{index}", json.dumps({"service": f"svc-{index}"}))
        assert cache.put(key, ModelOutcome(200, {"pad": "x" * 150}), clocks.monotonic) is not None
        cache.alias(key[1].encode(), key)
        assert cache.size_bytes <= 100_000
    assert 100 < len(cache) < 300
    # the evicted answers' aliases went with them; the kept ones still answer
    assert cache.by_body(json.dumps({"service": "svc-0"}).encode()) is None
    assert cache.by_body(json.dumps({"service": "svc-299"}).encode()) == b'{"pad":"' + b"x" * 150 + b'"}'
    # an answer too large for its share of the budget (1/100) is not kept
    huge = ModelOutcome(200, {"pad": "x" * 1000})
    assert cache.put(("svc-huge", "{}"), huge, clocks.monotonic) is None


def test_a_batch_takes_cached_answers_and_fills_the_cache(registry: ModelRegistry, clocks: Clocks) -> None:
    models = Models()
    app, _ = app_for(registry, clocks, models)
    client = TestClient(app)
    ask(client, QUESTION)  # svc-a cached
    other = {"service": "svc-b"}
    batch = client.post("/v1/recommendations:batch", json={"requests": [QUESTION, other]})
    assert batch.status_code == 200 and batch.headers[CACHE_HEADER] == "miss"
    results = batch.json()["results"]
    assert [r["status"] for r in results] == [200, 200]
    assert [r["recommendation"]["calls"] for r in results] == [0, 1]
    assert models.calls[1][0] == "recommend_mixed" and [p["service"] for p in models.calls[1][2]] == ["svc-b"]
    again = client.post("/v1/recommendations:batch", json={"requests": [QUESTION, other]})
    assert again.headers[CACHE_HEADER] == "hit" and again.json() == batch.json()
    assert ask(client, other).headers[CACHE_HEADER] == "hit"  # filled by the batch
    assert len(models.calls) == 2


class FlatBackend:
    """A RecommendationBackend without Ray types: every question answered, counted."""

    def __init__(self) -> None:
        self.calls = 0

    async def recommend(self, service: str, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        self.calls += 1
        return [ModelOutcome(200, {"service": service, "value": float("nan")})]

    async def recommend_batch(self, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        raise AssertionError("not used")

    async def list_services(self) -> list[Any]:
        return []

    async def registry_problem(self) -> str | None:
        return None


def test_an_answer_json_cannot_carry_is_not_cached_and_fails_as_before() -> None:
    backend = FlatBackend()
    client = TestClient(create_api(backend, answer_cache=AnswerCache(TTL_S)), raise_server_exceptions=False)
    for _ in range(2):
        assert ask(client, {"service": "svc-a"}).status_code == 500
    assert backend.calls == 2


@pytest.mark.parametrize(
    ("requested", "reload_s", "rows", "max_age_s", "expected"),
    [
        (2.0, 10.0, 2000, 60.0, 2.0),  # the defaults
        (30.0, 10.0, 2000, 60.0, 10.0),  # never beyond the reload interval
        (2.0, 1.0, 2000, 60.0, 1.0),
        (2.0, 10.0, 2000, 0.5, 0.5),  # nor beyond the history max age
        (2.0, 10.0, 2000, 0.0, 0.0),  # rows read for every answer: no cache
        (2.0, 10.0, 0, 0.0, 2.0),  # no recent rows read at all: only the reload interval counts
        (0.0, 10.0, 2000, 60.0, 0.0),
    ],
)
def test_the_ttl_is_capped_at_the_intervals_an_answer_can_change(
    requested: float, reload_s: float, rows: int, max_age_s: float, expected: float
) -> None:
    args = ServeAppArgs(answer_cache_ttl_s=requested, reload_interval_s=reload_s)
    settings = MoraSettings(serve_history_rows=rows, serve_history_max_age_s=max_age_s)  # type: ignore[call-arg]
    assert answer_cache_ttl(args, settings) == expected


def test_the_default_ttl_is_below_the_default_intervals() -> None:
    from mora_platform.settings import MoraSettings as Settings
    from serve.model_deployment import DEFAULT_RELOAD_INTERVAL_S

    default_ttl = ServeAppArgs().answer_cache_ttl_s
    max_age = Settings.model_fields["serve_history_max_age_s"].default
    assert 0 < default_ttl <= min(DEFAULT_RELOAD_INTERVAL_S, max_age)


def test_a_cached_answer_still_needs_the_token_and_a_json_body(
    registry: ModelRegistry, clocks: Clocks
) -> None:
    models = Models()
    cache = AnswerCache(TTL_S, clock=lambda: clocks.monotonic, wall=lambda: clocks.wall)
    backend = ServeBackend(models, registry)  # type: ignore[arg-type]
    client = TestClient(create_api(backend, token="s3cr3t", answer_cache=cache))
    body = json.dumps(QUESTION).encode()
    json_type = {"content-type": "application/json"}
    authorized = {**json_type, "authorization": "Bearer s3cr3t"}
    assert client.post("/v1/recommendations", content=body, headers=authorized).status_code == 200
    assert client.post("/v1/recommendations", content=body, headers=json_type).status_code == 401
    wrong = {**json_type, "authorization": "Bearer nope"}
    assert client.post("/v1/recommendations", content=body, headers=wrong).status_code == 401
    as_text = {"content-type": "text/plain", "authorization": "Bearer s3cr3t"}
    assert client.post("/v1/recommendations", content=body, headers=as_text).status_code == 415
    hit = client.post("/v1/recommendations", content=body, headers=authorized)
    assert hit.status_code == 200 and hit.headers[CACHE_HEADER] == "hit"
    assert len(models.calls) == 1
