"""The recommendation endpoint on a real Ray cluster, reading real models from the real S3 server."""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from serve_harness import DRILL_REPLICAS, RELOAD_INTERVAL_S, Endpoint, RayHead, wait_until

from mora_platform.models.recent import PEAK_QUANTILE, RECENT_ROWS, RECENT_RULES
from mora_platform.registry import ModelRegistry
from mora_platform.training.held import PEAK_VALIDATION
from serve.malformed import MALFORMED_CASES

pytestmark = pytest.mark.integration

RELOAD_BOUND_S = 30.0
EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "online-boutique"
CONTEXT = {"load_users": 50, "replica_count": 2, "scenario": "browsing"}


def post(endpoint: Endpoint, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{endpoint.url}{path}", json=body, headers=headers, timeout=60)


def check_recommendation(body: dict[str, Any], service: str, version: str) -> None:
    assert set(body) >= {
        "service",
        "model_version",
        "recommendations",
        "confidence",
        "contributions",
        "degraded",
        "fallbacks",
    }
    assert body["service"] == service
    assert body["model_version"] == version
    rec = body["recommendations"]
    assert isinstance(rec["replicas"], int) and rec["replicas"] >= 1
    assert isinstance(rec["cpu_millicores"], int) and isinstance(rec["memory_bytes"], int)
    assert rec["cpu_cores"] > 0 and rec["memory_bytes"] > 0
    # millicores are 1000 x cores, rounded up; cores carry at most millicore precision
    assert rec["cpu_millicores"] == math.ceil(round(rec["cpu_cores"] * 1000, 6))
    assert rec["memory_mib"] == pytest.approx(rec["memory_bytes"] / 2**20, rel=1e-6, abs=0.01)
    assert 0 <= body["confidence"] <= 1
    assert {"prophet", "lstm"} <= set(body["contributions"])
    assert isinstance(body["degraded"], bool) and isinstance(body["fallbacks"], list)


def test_every_published_service_answers(serve_endpoint: Endpoint, published: dict[str, str]) -> None:
    for service, version in published.items():
        response = post(serve_endpoint, "/v1/recommendations", {"service": service, "context": CONTEXT})
        assert response.status_code == 200, response.text
        check_recommendation(response.json(), service, version)
        assert response.json()["degraded"] is False


def test_request_with_history_and_current(serve_endpoint: Endpoint, published: dict[str, str]) -> None:
    service = next(iter(published))
    history = [
        {
            "timestamp": f"2026-01-01T00:{minute:02d}:00Z",
            "load_users": 50.0,
            "replica_count": 2,
            "scenario": "browsing",
            "cpu_cores_value": 0.01 + 0.001 * minute,
            "mem_bytes_value": 60e6,
            "replica_count_value": 2.0,
        }
        for minute in range(40)
    ]
    body = {"service": service, "context": CONTEXT, "current": {"cpu_cores_value": 0.05}, "history": history}
    response = post(serve_endpoint, "/v1/recommendations", body)
    assert response.status_code == 200, response.text
    check_recommendation(response.json(), service, published[service])
    stored = post(serve_endpoint, "/v1/recommendations", {"service": service, "context": CONTEXT}).json()
    assert response.json()["recommendations"] != stored["recommendations"], "the sent history must matter"


def test_long_history_is_answered_with_the_recent_head_room(
    serve_endpoint: Endpoint, published: dict[str, str], trained_bundles: dict[str, Path]
) -> None:
    """A request carrying enough history gets the auto head-room (what the backtest measured), the
    same answer ``ServiceModel.recommend`` gives in process, with a reason naming its source."""
    from mora_platform.training.bundle import ServiceModel
    from serve.model_slots import request_inputs

    service = next(iter(published))
    # before the training data's end: the fused forecast cannot be judged on these rows (their time is
    # in-sample); the no-fit rules and the peak-quantile forecast (which never trained on them) can
    start = datetime(2000, 1, 1, tzinfo=UTC)
    history = [
        {
            "timestamp": (start + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z"),
            "cpu_cores_value": (0.004 if (minute // 45) % 2 else 0.002) + 0.0001 * (minute % 7),
            "mem_bytes_value": 60e6 + 1e5 * (minute % 11),
            "replica_count_value": 1.0,
        }
        for minute in range(180)
    ]
    body = {"service": service, "context": CONTEXT, "history": history}
    response = post(serve_endpoint, "/v1/recommendations", body)
    assert response.status_code == 200, response.text
    served = response.json()
    check_recommendation(served, service, published[service])
    frame, context, _ = request_inputs(service, body)
    assert frame is not None
    model = ServiceModel.load(trained_bundles[service])
    expected = model.recommend(frame, context)
    assert served["recommendations"] == expected.recommendations.model_dump(mode="json")
    held = model.held_requests(frame)
    for target, request in held.items():
        assert request.source in {*RECENT_RULES, PEAK_QUANTILE}, (target, request.source)
        assert any(
            r.startswith(f"{target} head-room calibrated on the 180 most recent rows ({request.source})")
            for r in served["reasons"]
        ), served["reasons"]


def test_a_plain_request_is_answered_on_the_newest_rows_as_the_backtest_measures(
    serve_endpoint: Endpoint,
    published: dict[str, str],
    trained_bundles: dict[str, Path],
    served_dataset: str,
    object_store: Any,
) -> None:
    """`{"service": x}` alone: the replica reads the service's newest rows from the model's dataset in S3
    and answers with the auto head-room on them, the request the backtest's platform row sets for the
    same rows (floors and rounding aside), and says how old those rows are."""
    import pandas as pd

    from mora_platform.backtest.platform_training import ServiceModelAdapter
    from mora_platform.recommend.policy import build_recommendation
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.training.bundle import ServiceModel

    service = next(iter(published))
    served = post(serve_endpoint, "/v1/recommendations", {"service": service}).json()
    check_recommendation(served, service, published[service])
    rows = DatasetStore(object_store).read(served_dataset, service).tail(2_000).reset_index(drop=True)
    used = served["history"]
    assert used["source"] == f"dataset:{served_dataset}" and used["rows"] == len(rows) >= 280
    newest = pd.Timestamp(rows["timestamp"].max())
    assert pd.Timestamp(used["newest"]) == newest
    assert used["age_seconds"] == pytest.approx(
        (pd.Timestamp.now(tz="UTC") - newest).total_seconds(), abs=120
    )

    model = ServiceModel.load(trained_bundles[service])
    assert served["recommendations"] == model.recommend(rows).recommendations.model_dump(mode="json")
    backtest = ServiceModelAdapter(model, horizon_steps=model.calibration.horizon_steps).predict(
        rows, pd.Timedelta(seconds=15)
    )
    assert set(backtest.sources.values()) - {"validation"}, "the auto head-room chose a recent source"
    # the backtest's per-pod requests, at the pods the rows ran with, through the same Kubernetes policy
    same = build_recommendation(
        service,
        backtest.requests,
        1.0,
        coverage=model.calibration.coverage,
        cpu_floor_millicores=model.config.cpu_floor_millicores,
        memory_floor_mib=model.config.memory_floor_mib,
        pods_now=served["replica_decision"]["current"],
        resource_policy=model.config.resources,
    ).recommendations
    assert served["recommendations"]["cpu_millicores"] == same.cpu_millicores
    assert served["recommendations"]["memory_bytes"] == same.memory_bytes
    # and each reason names the source the backtest's row had (the peak-quantile forecast with its
    # training-time head-room has its own wording)
    for target in ("cpu", "memory"):
        source = backtest.sources[target]
        if source == PEAK_VALIDATION:
            said = f"{target} request from the peak-quantile forecast of the usage over the held steps"
        elif source != "validation":
            said = f"{target} head-room calibrated on the {min(len(rows), RECENT_ROWS)} most recent rows ({source})"
        else:
            continue
        assert any(r.startswith(said) for r in served["reasons"]), (said, served["reasons"])

    # a what-if question is answered from the model, not from the recent rows, and says so
    what_if = post(serve_endpoint, "/v1/recommendations", {"service": service, "context": CONTEXT}).json()
    assert what_if["history"]["source"] == "model"
    assert any("what-if context" in r for r in what_if["reasons"])


def test_shipped_example_rows_are_accepted_as_history(
    serve_endpoint: Endpoint, published: dict[str, str], trained_bundles: dict[str, Path]
) -> None:
    """Rows of the shipped data (``t_N`` labels, ``inf``, negative node utilisation, empty cells),
    encoded as Python's json.dumps encodes them, are answered from the frame the data loader makes
    of the same file: validated, mapped and cleaned the same way."""
    import pandas as pd

    from mora_platform.data.loaders import load_path
    from mora_platform.training.bundle import ServiceModel
    from serve.model_slots import model_step_seconds

    service = next(iter(published))
    path = EXAMPLES / f"{service}_checkout_replicas_1_users_20.csv"
    body = json.dumps(
        {"service": service, "context": CONTEXT, "history": pd.read_csv(path).to_dict("records")}
    )
    assert "Infinity" in body and "NaN" in body and '"t_0"' in body
    response = httpx.post(
        f"{serve_endpoint.url}/v1/recommendations",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    served = response.json()
    check_recommendation(served, service, published[service])
    model = ServiceModel.load(trained_bundles[service])
    cleaned = load_path(path, relative_step_seconds=model_step_seconds(model)).frame
    expected = model.recommend(cleaned, {k: CONTEXT[k] for k in ("load_users", "replica_count")})
    assert served["recommendations"] == expected.recommendations.model_dump(mode="json")


def test_batch_answers_in_order(serve_endpoint: Endpoint, published: dict[str, str]) -> None:
    services = list(published)
    order = [services[0], services[1], "no-such-service", services[0], services[1]]
    requests = [
        {"service": s, "context": {**CONTEXT, "load_users": 10 * (i + 1)}} for i, s in enumerate(order)
    ]
    response = post(serve_endpoint, "/v1/recommendations:batch", {"requests": requests})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(order)))
    assert [r["service"] for r in results] == order
    assert [r["status"] for r in results] == [200, 200, 404, 200, 200]
    for result in results:
        if result["status"] == 200:
            check_recommendation(result["recommendation"], result["service"], published[result["service"]])
    assert "no-such-service" in results[2]["error"]


def test_services_match_registry(serve_endpoint: Endpoint, published: dict[str, str]) -> None:
    response = httpx.get(f"{serve_endpoint.url}/v1/services", timeout=30)
    assert response.status_code == 200, response.text
    listed = {entry["service"]: entry for entry in response.json()["services"]}
    registry = serve_endpoint.registry
    assert sorted(listed) == registry.list_services() == sorted(published)
    for service, entry in listed.items():
        assert entry["latest_version"] == registry.latest_version(service)
        assert entry["trained_at"] and entry["metrics"] == {"cpu": {"mae": 0.001}}
    assert httpx.get(f"{serve_endpoint.url}/openapi.json", timeout=30).json()["paths"]


def test_malformed_requests_get_4xx_and_endpoint_stays_healthy(
    serve_endpoint: Endpoint, published: dict[str, str]
) -> None:
    service = next(iter(published))
    failures = []
    for case in MALFORMED_CASES:
        response = httpx.post(
            f"{serve_endpoint.url}{case.path}",
            content=case.payload(service),
            headers=case.headers,
            timeout=60,
        )
        detail = response.json().get("detail", "") if response.content else ""
        if response.status_code != case.status or case.mentions not in detail:
            failures.append(f"{case.name}: {response.status_code} {detail[:200]}")
    assert not failures, "\n".join(failures)
    assert httpx.get(f"{serve_endpoint.url}/healthz", timeout=10).status_code == 200
    response = post(serve_endpoint, "/v1/recommendations", {"service": service})
    assert response.status_code == 200, response.text


def test_hot_reload_serves_new_version_without_restart(
    serve_endpoint: Endpoint, published: dict[str, str], trained_bundles: dict[str, Any]
) -> None:
    service = next(iter(published))
    before = post(serve_endpoint, "/v1/recommendations", {"service": service}).json()
    assert before["model_version"] == published[service]
    new_version = serve_endpoint.registry.publish(service, trained_bundles[service], metadata={"metrics": {}})
    started = time.monotonic()
    wait_until(
        lambda: (
            post(serve_endpoint, "/v1/recommendations", {"service": service}).json()["model_version"]
            == new_version
        ),
        RELOAD_BOUND_S,
        f"{service} to serve {new_version}",
    )
    elapsed = time.monotonic() - started
    assert elapsed < RELOAD_BOUND_S
    print(f"hot reload: {elapsed:.1f} s (check interval {RELOAD_INTERVAL_S:g} s)")
    after = post(serve_endpoint, "/v1/recommendations", {"service": service}).json()
    assert after["degraded"] is False


def test_tampered_version_refused_previous_keeps_serving(
    serve_endpoint: Endpoint, published: dict[str, str], trained_bundles: dict[str, Any]
) -> None:
    service = list(published)[1]
    registry: ModelRegistry = serve_endpoint.registry
    good = registry.latest_version(service)
    assert good is not None
    assert post(serve_endpoint, "/v1/recommendations", {"service": service}).json()["model_version"] == good
    bad = registry.publish(service, trained_bundles[service], metadata={"metrics": {}})
    victim = sorted(registry.read_manifest(service, bad).files)[0]
    registry.backend.put_bytes(f"{registry.prefix}/{service}/{bad}/{victim}", b"tampered bytes")

    def degraded_answer() -> dict[str, Any] | None:
        body = post(serve_endpoint, "/v1/recommendations", {"service": service}).json()
        return body if body.get("degraded") else None

    body = wait_until(degraded_answer, RELOAD_BOUND_S, f"{service} to report the refused version")
    assert body["model_version"] == good
    reasons = " ".join(body["reasons"])
    assert bad in reasons and victim in reasons and "checksum" in reasons
    check_recommendation(body, service, good)
    assert httpx.get(f"{serve_endpoint.url}/healthz", timeout=10).status_code == 200


def test_bearer_token_auth(
    serve_endpoint: Endpoint, ray_head: RayHead, s3_settings: Any, published: dict[str, str]
) -> None:
    from ray import serve

    from serve.app import ServeAppArgs, compose_app

    token = secrets.token_urlsafe(16)
    args = ServeAppArgs(registry_prefix=serve_endpoint.registry.prefix)
    settings = s3_settings.model_copy(update={"serve_token": SecretStr(token)})
    app = compose_app(args, settings, replicas=1)
    serve.run(app, name="mora-secured", route_prefix="/secured", blocking=False)
    try:
        url = f"{serve_endpoint.url}/secured"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200, 60, "secured /healthz")
        body = {"service": next(iter(published))}
        missing = httpx.post(f"{url}/v1/recommendations", json=body, timeout=60)
        assert missing.status_code == 401 and "token" in missing.json()["detail"]
        wrong = httpx.post(
            f"{url}/v1/recommendations", json=body, headers={"authorization": "Bearer wrong"}, timeout=60
        )
        assert wrong.status_code == 401
        assert httpx.get(f"{url}/v1/services", timeout=30).status_code == 401
        right = httpx.post(
            f"{url}/v1/recommendations", json=body, headers={"authorization": f"Bearer {token}"}, timeout=60
        )
        assert right.status_code == 200, right.text
        # the open app next to it is unaffected
        assert post(serve_endpoint, "/v1/recommendations", body).status_code == 200
    finally:
        serve.delete("mora-secured")


def test_a_history_at_the_metric_maxima_is_answered_flagged(
    serve_endpoint: Endpoint, published: dict[str, str]
) -> None:
    """Usage at the accepted maxima (10,000 cores, 1e15 bytes) is answered, but flagged as far beyond
    anything the model was trained on, with the reason."""
    service = next(iter(published))
    history = [
        {
            "timestamp": f"2026-01-01T00:{minute:02d}:00Z",
            "cpu_cores_value": 10_000.0,
            "mem_bytes_value": 1e15,
            "replica_count_value": 1.0,
        }
        for minute in range(40)
    ]
    response = post(serve_endpoint, "/v1/recommendations", {"service": service, "history": history})
    assert response.status_code == 200, response.text
    flagged = response.json()["outside_training_range"]
    assert any(note.startswith("history cpu per pod") for note in flagged), flagged
    assert set(flagged) <= set(response.json()["reasons"])


# --- replica-loss drill: keep last in this module (it kills a replica of the shared endpoint) ---

DRILL_SECONDS = 18.0
#: (seconds into the drill, deployment one replica of which is killed then)
DRILL_KILLS = ((4.0, "ServiceModels"), (11.0, "RecommendationIngress"))
DRILL_CLIENTS = 4  # each about 5 requests a second: ~20 rps in all
DRILL_ERROR_WINDOW_S = 2.0
DRILL_HISTORY = [
    {
        "timestamp": f"2026-01-01T{minute // 60:02d}:{minute % 60:02d}:00Z",
        "cpu_cores_value": 0.01 + 0.0001 * (minute % 17),
        "mem_bytes_value": 6e7 + 1e5 * (minute % 13),
        "replica_count_value": 1.0,
    }
    for minute in range(120)
]


@dataclass
class DrillAnswer:
    started: float
    ended: float
    status: int  # 0: no answer (timeout, connection error)
    body: str


def _replica_names(deployment: str) -> list[str]:
    """Named actors of one deployment's replicas of the ``mora`` application (Serve names them)."""
    import ray

    prefix = f"SERVE_REPLICA::mora#{deployment}#"
    return sorted(
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    )


def _replica_rss_mib(name: str) -> float:
    """Resident memory of one replica's process."""
    import os

    import psutil
    import ray

    actor = ray.get_actor(name, namespace="serve")
    pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=30)
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def _error_window(failed: list[DrillAnswer]) -> float:
    return max((a.ended for a in failed), default=0.0) - min((a.started for a in failed), default=0.0)


def test_replica_loss_drill(serve_endpoint: Endpoint, published: dict[str, str]) -> None:
    """Steady load (up to ~20 rps, model runs, not memoised answers); one model replica killed, later one
    ingress replica: after each kill the errors last under two seconds and none hangs. The model
    replica's loss costs no error that is not a JSON 5xx (the ingress sends a lost call again); the
    requests in flight at a lost ingress replica get the proxy's plain-text 500 (Ray does not retry)."""
    import ray

    services = list(published)
    replicas = {deployment: _replica_names(deployment) for _, deployment in DRILL_KILLS}
    assert all(len(names) == DRILL_REPLICAS for names in replicas.values()), replicas
    for service in services * 4:  # warm: the replicas hold the models before the drill
        assert post(serve_endpoint, "/v1/recommendations", {"service": service}).status_code == 200
    memory = {d: [_replica_rss_mib(name) for name in names] for d, names in replicas.items()}
    print(f"replica RSS MiB after warm-up: {memory}")

    answers: list[DrillAnswer] = []
    lock = threading.Lock()
    origin = time.monotonic()
    stop = origin + DRILL_SECONDS

    def client(number: int) -> None:
        with httpx.Client(base_url=serve_endpoint.url, timeout=10) as http:
            sent = 0
            while time.monotonic() < stop:
                users = 1 + (number * 1000 + sent) % 4000  # a new question each time: the model runs
                body = {
                    "service": services[(number + sent) % len(services)],
                    "context": {**CONTEXT, "load_users": users},
                    "history": DRILL_HISTORY if sent % 2 else None,  # every other one: a longer model run
                }
                started = time.monotonic()
                try:
                    response = http.post("/v1/recommendations", json=body)
                    status, text = response.status_code, response.text
                except httpx.HTTPError as exc:
                    status, text = 0, f"{type(exc).__name__}: {exc}"
                with lock:
                    answers.append(DrillAnswer(started - origin, time.monotonic() - origin, status, text))
                sent += 1
                time.sleep(max(0.0, 0.2 - (time.monotonic() - started)))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(DRILL_CLIENTS)]
    for thread in threads:
        thread.start()
    killed: list[tuple[float, str]] = []
    for at, deployment in DRILL_KILLS:
        time.sleep(max(0.0, origin + at - time.monotonic()))
        ray.kill(ray.get_actor(replicas[deployment][0], namespace="serve"), no_restart=True)
        killed.append((time.monotonic() - origin, deployment))
    for thread in threads:
        thread.join(timeout=DRILL_SECONDS + 30)

    # the load was steady: a request a second per client at least (each paces itself at 5 when answers are
    # quick; on a 2-core machine running the whole stack one plain-clone run answered 128 in 18 s, 7.1 a
    # second in all, just below the 2 per client this asked for before)
    assert len(answers) >= DRILL_SECONDS * DRILL_CLIENTS, f"the load was not steady: {len(answers)} answers"
    assert not [a for a in answers if a.ended < killed[0][0] and a.status != 200], "errors before a kill"
    bounds = [*(at for at, _ in killed[1:]), DRILL_SECONDS + 30]
    for (at, deployment), until in zip(killed, bounds, strict=True):
        after = [a for a in answers if at <= a.ended < until]  # what ended after this kill, before the next
        failed = [a for a in after if a.status != 200]
        window = _error_window(failed)
        in_flight = sum(a.started < at < a.ended for a in answers)
        print(
            f"replica-loss drill, {deployment} replica killed at {at:.1f} s ({in_flight} requests in flight):"
            f" {len(after)} requests, "
            f"{len(failed)} failed {sorted({a.status for a in failed})}, error window {window:.2f} s, "
            f"slowest {max(a.ended - a.started for a in after):.2f} s"
        )
        assert window < DRILL_ERROR_WINDOW_S, [(a.started, a.status, a.body[:120]) for a in failed]
        assert all(a.status >= 500 and a.ended - a.started < 5 for a in failed), failed  # no hang
        if deployment == "ServiceModels":  # the ingress sends a lost call again: at most a few fail
            assert len(failed) <= in_flight, failed
        # an ingress replica's requests in flight are answered by the Serve proxy: a plain-text 500 at once
        assert all(a.status == 200 for a in after if a.started > at + DRILL_ERROR_WINDOW_S)
    # Serve replaces what was lost
    for deployment, names in replicas.items():
        wait_until(
            lambda d=deployment, lost=names[0]: (
                len(now := _replica_names(d)) == DRILL_REPLICAS and lost not in now
            ),
            60,
            f"a replacement {deployment} replica",
        )
