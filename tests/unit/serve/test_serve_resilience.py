"""Replica loss and overload, without a cluster: the ingress's retries and cancellation, shedding with 503
+ Retry-After, bounded error bodies and body reads, the model replica's interruptible inference, the
deployment settings shipped in every config, and the plausibility flag of answers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError
from test_serve_http_api import FakeBackend

from mora_platform.training.bundle_data import IMPLAUSIBLE_USAGE_FACTOR, history_beyond_training
from serve.api import MAX_LISTED_ERRORS, MAX_OBJECT_KEYS, RETRY_AFTER_S, RecommendationRequest
from serve.http_api import GuardMiddleware, ModelOutcome, create_api
from serve.ingress import RecommendationIngress, ServeBackend
from serve.model_deployment import ServiceModels
from serve.resilience import GRACEFUL_SHUTDOWN_TIMEOUT_S, INGRESS_OPTIONS, MODELS_OPTIONS, REQUEST_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[3]


class Response:
    """A stand-in ``DeploymentResponse``: awaitable, cancellable, fails or answers as told."""

    def __init__(self, result: Any, delay: float = 0.0) -> None:
        self.result, self.delay, self.cancelled = result, delay, False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self) -> Any:
        return self._get().__await__()

    async def _get(self) -> Any:
        await asyncio.sleep(self.delay)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


class ScriptedHandle:
    """``handle.options(multiplexed_model_id=...).recommend.remote(...)`` answering from a script."""

    def __init__(self, *script: Response) -> None:
        self.script = list(script)
        self.sent: list[Response] = []

    def options(self, **_: Any) -> ScriptedHandle:
        return self

    @property
    def recommend(self) -> ScriptedHandle:
        return self

    def remote(self, payloads: list[dict[str, Any]]) -> Response:
        self.sent.append(self.script.pop(0))
        return self.sent[-1]


def ask(handle: ScriptedHandle, timeout: float = 5.0) -> ModelOutcome:
    backend = ServeBackend(handle, registry=None, request_timeout_s=timeout)  # type: ignore[arg-type]
    [outcome] = asyncio.run(backend.recommend("svc-a", [RecommendationRequest(service="svc-a")]))
    return outcome


ANSWER = [{"status": 200, "recommendation": {"service": "svc-a"}, "error": None}]


def test_a_call_lost_with_its_replica_is_sent_again() -> None:
    handle = ScriptedHandle(Response(ActorDiedError()), Response(ANSWER))
    assert ask(handle).status == 200 and len(handle.sent) == 2


def test_a_second_loss_is_a_503_not_a_hang() -> None:
    handle = ScriptedHandle(Response(ActorDiedError()), Response(ActorDiedError()))
    outcome = ask(handle)
    assert outcome.status == 503 and "retry" in (outcome.error or "")


def test_a_full_queue_is_a_503_at_once() -> None:
    handle = ScriptedHandle(Response(BackPressureError(64, 64)))
    started = time.monotonic()
    outcome = ask(handle)
    assert outcome.status == 503 and "busy" in (outcome.error or "") and len(handle.sent) == 1
    assert time.monotonic() - started < 1


def test_a_timed_out_call_is_cancelled() -> None:
    handle = ScriptedHandle(Response(ANSWER, delay=5.0))
    outcome = ask(handle, timeout=0.05)
    assert outcome.status == 504 and handle.sent[0].cancelled


def test_every_503_says_when_to_retry() -> None:
    client = TestClient(create_api(FakeBackend(registry_problem="down")))
    response = client.get("/v1/services")
    assert response.status_code == 503 and response.headers["retry-after"] == str(RETRY_AFTER_S)


def test_a_body_with_absurdly_many_keys_is_refused_while_parsing() -> None:
    client = TestClient(create_api(FakeBackend()))
    body = json.dumps({"service": "frontend", **{f"k{i}": 1 for i in range(200_000)}})
    started = time.monotonic()
    response = client.post("/v1/recommendations", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and f"limit is {MAX_OBJECT_KEYS}" in response.json()["detail"]
    assert len(response.content) < 1_000 and time.monotonic() - started < 5


def test_error_bodies_are_capped() -> None:
    """Thousands of bad fields (allowed widths, a long history) make a 422 of a few kB naming the count."""
    client = TestClient(create_api(FakeBackend()))
    row = {f"unknown_{i}_{'x' * 250}": 1 for i in range(100)}
    response = client.post("/v1/recommendations", json={"service": "frontend", "history": [row] * 100})
    assert response.status_code == 422
    body = response.json()
    assert len(body["errors"]) == MAX_LISTED_ERRORS and len(response.content) < 10_000
    assert all(len(error["field"]) <= 200 for error in body["errors"])
    assert f"and {100 * 100 - 5} more; the first {MAX_LISTED_ERRORS} are listed" in body["detail"]


def test_a_slow_body_is_408() -> None:
    """A client trickling its body is answered 408 after ``max_body_seconds``, not held forever."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not reached")

    async def scenario() -> list[dict[str, Any]]:
        messages = iter([{"type": "http.request", "body": b"{", "more_body": True}])

        async def receive() -> dict[str, Any]:
            message = next(messages, None)
            if message is None:
                await asyncio.sleep(60)
            return message or {}

        api = create_api(FakeBackend(), max_body_seconds=0.2)
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/recommendations",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "query_string": b"",
        }
        await asyncio.wait_for(api(scope, receive, send), 10)
        return sent

    assert GuardMiddleware(app, None).max_body_seconds > 0
    sent = asyncio.run(scenario())
    assert sent[0]["status"] == 408
    assert b"not received within 0.2 s" in sent[1]["body"]


def test_batches_beyond_the_limit_are_shed() -> None:
    release = asyncio.Event()

    class Slow(FakeBackend):
        async def recommend_batch(self, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
            await release.wait()
            return await super().recommend_batch(requests)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_api(Slow(), max_concurrent_batches=2))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"requests": [{"service": "frontend"}]}
            running = [
                asyncio.create_task(client.post("/v1/recommendations:batch", json=body)) for _ in range(2)
            ]
            await asyncio.sleep(0.2)
            shed = await client.post("/v1/recommendations:batch", json=body)
            release.set()
            return [shed, *await asyncio.gather(*running)]

    shed, *answered = asyncio.run(scenario())
    assert shed.status_code == 503 and shed.headers["retry-after"] == str(RETRY_AFTER_S)
    assert [r.status_code for r in answered] == [200, 200]


class CountingLoader:
    """Answers one payload at a time, slowly, counting what it computed."""

    def __init__(self) -> None:
        self.computed = 0

    def answer(self, slot: Any, payloads: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        time.sleep(0.05)
        self.computed += len(payloads)
        return [{"status": 200, "recommendation": {}, "error": None} for _ in payloads]

    def close(self) -> None:
        pass


def bare_models(loader: CountingLoader) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    models = object.__new__(ServiceModels.func_or_class)
    models._infer_pool = models._load_pool = ThreadPoolExecutor(max_workers=1)
    models._loader = loader
    models._refresher = None
    models._pending = 0
    return models


def test_a_cancelled_call_stops_between_requests() -> None:
    loader = CountingLoader()
    models = bare_models(loader)

    async def scenario() -> None:
        task = asyncio.create_task(models._infer(None, [{}] * 100))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    time.sleep(0.1)  # the request in progress completes in its thread
    assert loader.computed < 10 and models._pending == 0


def test_a_replica_with_too_much_waiting_answers_503() -> None:
    models = bare_models(CountingLoader())
    models._pending = 10_000
    answers = asyncio.run(models._infer(None, [{}] * 3))
    assert [a["status"] for a in answers] == [503] * 3 and "busy" in answers[0]["error"]


def test_shipped_configs_keep_two_replicas_bounded_queues_and_drain_on_scale_down() -> None:
    local = yaml.safe_load((ROOT / "serve/config.yaml").read_text())
    [service] = [
        d
        for d in yaml.safe_load_all((ROOT / "infra/k8s/rayservice.yaml").read_text())
        if d["kind"] == "RayService"
    ]
    cluster = yaml.safe_load(service["spec"]["serveConfigV2"])
    code = {"RecommendationIngress": INGRESS_OPTIONS, "ServiceModels": MODELS_OPTIONS}
    for config in (local, cluster):
        [application] = config["applications"]
        assert application["args"]["request_timeout_s"] == REQUEST_TIMEOUT_S
        assert config["http_options"]["request_timeout_s"] > REQUEST_TIMEOUT_S
        assert 0 < config["http_options"]["keep_alive_timeout_s"] <= 10
        for deployment in application["deployments"]:
            options = code[deployment["name"]]
            for key, value in options.items():
                assert deployment[key] == value, (deployment["name"], key)
            assert deployment["autoscaling_config"]["min_replicas"] >= 2
            assert deployment["graceful_shutdown_timeout_s"] > REQUEST_TIMEOUT_S
    assert GRACEFUL_SHUTDOWN_TIMEOUT_S > REQUEST_TIMEOUT_S
    # the decorators carry the same defaults (what compose_app deploys)
    for deployment, options in ((RecommendationIngress, INGRESS_OPTIONS), (ServiceModels, MODELS_OPTIONS)):
        config = deployment._deployment_config  # type: ignore[attr-defined]
        assert config.max_queued_requests == options["max_queued_requests"]
        assert config.autoscaling_config.min_replicas == 2
        assert config.graceful_shutdown_timeout_s == GRACEFUL_SHUTDOWN_TIMEOUT_S


def test_a_history_far_beyond_the_training_rows_is_flagged() -> None:
    trained = pd.DataFrame({"target_cpu": [0.01, 0.02], "target_memory": [5e7, 6e7]})
    normal = pd.DataFrame({"target_cpu": [0.03], "target_memory": [7e7]})
    assert history_beyond_training(trained, normal) == []
    extreme = pd.DataFrame({"target_cpu": [10_000.0], "target_memory": [6e7 * IMPLAUSIBLE_USAGE_FACTOR * 2]})
    notes = history_beyond_training(trained, extreme)
    assert len(notes) == 2 and notes[0].startswith("history cpu per pod") and "500,000x" in notes[0]
    assert "memory" in notes[1]
