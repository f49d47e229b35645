"""The rightsizing cycle end to end: Prometheus -> dataset -> retrain what changed -> what a replica answers.

First cycle (``mora cycle --wait``, a Ray Job on a real head): collects two days of two services from a
backfilled Prometheus behind a token proxy, publishes version 1 of both. A second backfill adds newer
rows for one service only, with its load shifted up; the second cycle (``mora cycle --local``, no Ray)
resumes each service from its newest row, retrains that one service and skips the other. A plain
``{"service": ...}`` question goes over HTTP (bearer token) to the real Serve app deployed on the same
Ray head, which reads each service's recent rows live from Prometheus (through the token proxy; cache
age 1 s): from version 1 first, then, within the reload interval after the second cycle, from version 2
on rows newer by hours; with Prometheus unreachable it answers on the dataset's newest rows and says so.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from conftest import NAMESPACE, CycleStack
from cycle_harness import BACKFILL_DAYS, RATE_WINDOW, STEP
from pydantic import SecretStr
from typer.testing import CliRunner

from infra.local.prometheus import free_port
from mora_platform.cli import app
from mora_platform.registry import ModelRegistry

pytestmark = pytest.mark.integration

#: A tiny training config (seconds per service), as the fleet job tests use.
TINY_CONFIG: dict[str, Any] = {
    "seq_len": 6,
    "lstm": {"units": [4], "dense_units": 0, "epochs": 2, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 12, "weekly_seasonality": False},
}


def _summary(object_store: Any, output: str) -> dict[str, Any]:
    match = re.search(r"run summary: s3://[^/]+/(runs/(cycle-[^/]+)/summary\.json)", output)
    assert match, output[-3000:]
    return json.loads(object_store.get_bytes(match.group(1)))


#: How often the served models check LATEST, and how long a recent-rows window is reused (seconds).
RELOAD_INTERVAL_S = 1.0
HISTORY_MAX_AGE_S = 1.0


@dataclass
class ServedApp:
    url: str
    token: str

    def ask(self, service: str) -> dict[str, Any]:
        """The answer to a plain ``{"service": ...}`` question."""
        response = httpx.post(
            f"{self.url}/v1/recommendations",
            json={"service": service},
            headers={"authorization": f"Bearer {self.token}"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())


@contextmanager
def served(stack: CycleStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedApp]:
    """The Serve app on the cycle's Ray head: recent rows live from Prometheus (through the token proxy,
    which is how the replicas get the bearer token: a bound setting, not an environment variable)."""
    from infra.local.ray_head import client_env, reset_ray_auth_cache

    for name, value in client_env(stack.home, stack.head.address).items():
        monkeypatch.setenv(name, value)
    reset_ray_auth_cache()
    import ray
    from ray import serve

    from mora_platform.collect.settings import PrometheusSettings
    from serve.app import ServeAppArgs, compose_app

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", False, raising=False)
    port = free_port()
    token = secrets.token_urlsafe(16)
    settings = stack.settings.model_copy(
        update={
            "serve_token": SecretStr(token),
            "serve_history_max_age_s": HISTORY_MAX_AGE_S,
            "home": stack.home,  # where the cycle's publishers keep the manifest signing key
        }
    )
    prometheus = PrometheusSettings(  # type: ignore[call-arg]
        _env_file=None,
        url=stack.proxy.url,
        bearer_token=SecretStr(stack.token),
        step=STEP,
        rate_window=RATE_WINDOW,
    )
    ray.init(address=stack.head.address, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = ServeAppArgs(reload_interval_s=RELOAD_INTERVAL_S)
        serve.run(
            compose_app(args, settings, prometheus=prometheus), name="mora", route_prefix="/", blocking=False
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Serve app did not come up in 120 s"
            time.sleep(0.5)
        yield ServedApp(url, token)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _wait_for_version(endpoint: ServedApp, service: str, version: str, timeout: float) -> dict[str, Any]:
    """The first plain answer from ``version`` (the replica reloads every RELOAD_INTERVAL_S)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = endpoint.ask(service)
        if answer["model_version"] == version:
            return answer
        assert time.monotonic() < deadline, (
            f"still answering from {answer['model_version']} after {timeout:g} s"
        )
        time.sleep(0.5)


def _dataset_newest(object_store: Any, dataset: str, service: str) -> pd.Timestamp:
    from mora_platform.storage.datasets import DatasetStore

    return pd.Timestamp(DatasetStore(object_store).read(dataset, service)["timestamp"].max())


def _ray_logs_hold(stack: CycleStack, secret: str) -> list[str]:
    """Files of the head's Ray session (logs, runtime envs) that contain ``secret``."""
    found = []
    for path in (stack.root / "ray").rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".json", ".txt"):
            try:
                if secret.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def test_cycle_collects_retrains_what_changed_and_serves_newer_rows(
    cycle_stack: CycleStack,
    object_store: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    stack = cycle_stack
    api, db = stack.services
    dataset = f"{stack.prefix}-shop"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    since = pd.Timestamp(stack.timeline.start, unit="s", tz="UTC").isoformat()
    common = ["--dataset", dataset, "--namespace", NAMESPACE, "--since", since, "--config", str(config)]
    timings: dict[str, float] = {}

    # -- cycle 1: a Ray Job; the submitter's environment has no Prometheus setting at all ---------
    began = time.monotonic()
    env = {
        "MORA_HOME": str(tmp_path / "submitter-home"),
        "MORA_RAY_DASHBOARD_URL": stack.settings.ray_dashboard_url,
    }
    key, secret = stack.settings.s3_credentials()
    env |= {
        "MORA_S3_ENDPOINT_URL": stack.settings.s3_endpoint_url,
        "MORA_S3_BUCKET": stack.settings.s3_bucket,
        "MORA_S3_ACCESS_KEY": key or "",
        "MORA_S3_SECRET_KEY": secret or "",
    }
    result = CliRunner().invoke(app, ["cycle", *common, "--wait", "--timeout", "300"], env=env)
    timings["cycle 1 (Ray Job)"] = time.monotonic() - began
    output = result.output
    assert result.exit_code == 0, output[-4000:]
    assert "SUCCEEDED" in output and "CYCLE RESULT: collected" in output, output[-3000:]
    for credential in (stack.token, key, secret):
        assert credential and credential not in output
    jobs = httpx.get(f"{stack.settings.ray_dashboard_url}/api/jobs/", timeout=10).text
    assert "rightsize_cycle.py" in jobs
    for credential in (stack.token, key, secret):
        assert credential and credential not in jobs

    first = _summary(object_store, output)
    assert first["kind"] == "cycle" and first["dataset"] == dataset
    collected = {row["service"]: row for row in first["collection"]["services"]}
    assert set(collected) == {api, db} and first["collection"]["status"] == "ok"
    for row in collected.values():
        assert row["status"] == "ok" and not row["resumed"], row
        assert row["new_rows"] >= BACKFILL_DAYS * 288 - 2, row  # a week at 5 minutes
    assert first["collection"]["step_seconds"] == 300 and stack.token not in json.dumps(first)
    assert {d["service"]: d["retrain"] for d in first["decisions"]} == {api: True, db: True}
    outcomes = {row["service"]: row for row in first["services"]}
    assert {s: o["status"] for s, o in outcomes.items()} == {api: "published", db: "published"}
    assert first["skipped"] == []

    registry = ModelRegistry(object_store, home=stack.home)  # the publishers' signing key is under this home
    v1 = {service: registry.latest_version(service) for service in (api, db)}
    assert v1 == {service: outcomes[service]["version"] for service in (api, db)}
    manifest = registry.read_manifest(api, v1[api] or "")
    assert manifest.extra["dataset"] == dataset and manifest.extra["run_id"] == first["run_id"]

    # -- the Serve app answers {"service": api} over HTTP, on rows read live from Prometheus ------------
    began = time.monotonic()
    serving = ExitStack()
    request.addfinalizer(serving.close)  # Serve and this process's Ray connection end with the test
    endpoint = serving.enter_context(served(stack, monkeypatch))
    timings["Serve app up"] = time.monotonic() - began
    answer1 = endpoint.ask(api)
    assert answer1["model_version"] == v1[api]
    assert answer1["history"]["source"] == f"prometheus:{NAMESPACE}", answer1["history"]
    assert answer1["history"]["rows"] >= 2 * 288, answer1["history"]
    newest1 = pd.Timestamp(answer1["history"]["newest"])
    boundary = pd.Timestamp(stack.timeline.boundary, unit="s", tz="UTC")
    assert boundary - pd.Timedelta("5min") <= newest1 <= boundary + pd.Timedelta("10min")  # gauges stay 5 min
    stored1 = _dataset_newest(object_store, dataset, api)
    assert abs(stored1 - newest1) <= pd.Timedelta("5min"), (stored1, newest1)  # the rows a dataset holds

    # -- newer data for api only, its load shifted up ----------------------------------------------
    timings["second backfill + Prometheus restart"] = stack.backfill_second_window()

    # -- cycle 2: --local, in a process of its own reading the cluster's stack.env (a laptop) --------
    began = time.monotonic()
    local_env = {k: v for k, v in os.environ.items() if not k.startswith("MORA_")}
    local_env |= {"MORA_HOME": str(stack.home), "PYTHONUNBUFFERED": "1"}
    mora = str(Path(sys.executable).parent / "mora")
    completed = subprocess.run(
        [mora, "cycle", "--local", *common],
        env=local_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    timings["cycle 2 (--local)"] = time.monotonic() - began
    output2 = completed.stdout + completed.stderr
    assert completed.returncode == 0, output2[-4000:]
    assert stack.token not in output2

    second = _summary(object_store, output2)
    collected = {row["service"]: row for row in second["collection"]["services"]}
    assert collected[api]["resumed"] and collected[db]["resumed"]
    assert collected[api]["start"] == stored1.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert collected[api]["new_rows"] >= 3 * 12 - 2, output2[-5000:]  # ~3 h at 5 minutes
    assert collected[db]["new_rows"] == 0, collected[db]
    decisions = {d["service"]: d for d in second["decisions"]}
    assert decisions[api]["retrain"] and decisions[api]["trained_through"] is not None, decisions[api]
    assert not decisions[db]["retrain"] and decisions[db]["reason"].startswith("unchanged"), decisions[db]
    assert [row["service"] for row in second["services"]] == [api]
    assert second["services"][0]["status"] == "published"
    assert second["skipped"] == [db] and second["counts"]["skipped"] == 1
    assert "CYCLE RESULT: collected" in output2 and "1 skipped; exit 0" in output2, output2[-2000:]

    v2 = registry.latest_version(api)
    assert v2 is not None and v2 != v1[api] and v2 == second["services"][0]["version"]
    assert registry.latest_version(db) == v1[db]  # unchanged: not retrained

    # -- within the reload interval a plain request is answered by version 2, on live rows hours newer ----
    with serving:
        began = time.monotonic()
        answer2 = _wait_for_version(endpoint, api, v2, timeout=RELOAD_INTERVAL_S + 60)
        timings["version 2 served after publishing"] = time.monotonic() - began
        assert answer2["history"]["source"] == f"prometheus:{NAMESPACE}", answer2["history"]
        newest2 = pd.Timestamp(answer2["history"]["newest"])
        assert newest2 > newest1 + pd.Timedelta("2h"), (newest1, newest2)
        assert answer2["recommendations"]["cpu_cores"] > answer1["recommendations"]["cpu_cores"]

        # Prometheus unreachable: the dataset's newest rows answer (collected by cycle 2), and a note says why
        stack.proxy.retarget(f"http://127.0.0.1:{free_port()}")
        try:
            time.sleep(HISTORY_MAX_AGE_S + 0.5)
            fallback = endpoint.ask(api)
        finally:
            stack.proxy.retarget(stack.prometheus.url)
        assert fallback["model_version"] == v2
        assert fallback["history"]["source"] == f"dataset:{dataset}", fallback["history"]
        assert pd.Timestamp(fallback["history"]["newest"]) > newest1 + pd.Timedelta("2h")
        assert any("live rows unavailable" in reason for reason in fallback["reasons"]), fallback["reasons"]
        assert stack.token not in json.dumps(fallback)
        assert not _ray_logs_hold(stack, stack.token)  # the bearer token is in no Ray log or runtime env

    # -- an hourly run in which nothing changed: it collects, retrains nothing, exits 0 -------------------
    from jobs.rightsize_cycle import main as run_cycle

    monkeypatch.setenv("MORA_HOME", str(stack.home))
    monkeypatch.setenv("MORA_PROMETHEUS_RETRIES", "0")
    capsys.readouterr()
    began = time.monotonic()
    assert run_cycle(["--dataset", dataset, "--namespace", NAMESPACE, "--since", since]) == 0
    timings["cycle 3 (nothing changed, in-process)"] = time.monotonic() - began
    output3 = capsys.readouterr().out
    assert "CYCLE RESULT: collected 0 new rows for 2 services; retrained 0" in output3, output3[-2000:]
    assert output3.rstrip().endswith("2 skipped; exit 0") and [v2, v1[db]] == [
        registry.latest_version(api),
        registry.latest_version(db),
    ]

    # -- Prometheus unreachable: the cycle says so and fails; nothing changed, so nothing is retrained --
    down = f"http://127.0.0.1:{free_port()}"
    assert run_cycle(["--dataset", dataset, "--namespace", NAMESPACE, "--prometheus", down]) == 1
    output4 = capsys.readouterr().out
    assert "CYCLE RESULT: collection FAILED" in output4 and "retrained 0" in output4, output4[-2000:]
    assert output4.rstrip().endswith("2 skipped; exit 1")
    # a namespace without deployments is a failed collection too, not "nothing changed"
    assert run_cycle(["--dataset", dataset, "--namespace", "nowhere", "--since", since]) == 1
    assert "no deployment in namespace 'nowhere'" in capsys.readouterr().out
    print("\ncycle timings: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items()))
