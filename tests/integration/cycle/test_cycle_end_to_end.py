"""The rightsizing cycle end to end: Prometheus -> dataset -> retrain what changed -> what a replica answers.

First cycle (``mora cycle --wait``, a Ray Job on a real head): collects two days of two services from a
backfilled Prometheus behind a token proxy, publishes version 1 of both. A second backfill adds newer
rows for one service only, with its load shifted up; the second cycle (``mora cycle --local``, no Ray)
resumes each service from its newest row, retrains that one service and skips the other. A plain
``{"service": ...}`` question is answered the way the Serve replica answers it (``ModelLoader`` with
``RecentHistory``; cache age 0 so every question reads the dataset again): from version 1 first, then
from version 2 on newer rows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from conftest import NAMESPACE, CycleStack
from typer.testing import CliRunner

from infra.local.prometheus import free_port
from mora_platform.cli import app
from mora_platform.registry import ModelRegistry
from mora_platform.registry.recent_history import RecentHistory
from serve.model_slots import ModelLoader

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


def _plain_answer(loader: ModelLoader, slot: Any, service: str) -> dict[str, Any]:
    (result,) = loader.answer(slot, [{"service": service}])
    assert result["status"] == 200, result
    return dict(result["recommendation"])


def test_cycle_collects_retrains_what_changed_and_serves_newer_rows(
    cycle_stack: CycleStack,
    object_store: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
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
        assert row["new_rows"] >= 2 * 288, row  # two days at 5 minutes
    assert first["collection"]["step_seconds"] == 300 and stack.token not in json.dumps(first)
    assert {d["service"]: d["retrain"] for d in first["decisions"]} == {api: True, db: True}
    outcomes = {row["service"]: row for row in first["services"]}
    assert {s: o["status"] for s, o in outcomes.items()} == {api: "published", db: "published"}
    assert first["skipped"] == []

    registry = ModelRegistry(object_store)
    v1 = {service: registry.latest_version(service) for service in (api, db)}
    assert v1 == {service: outcomes[service]["version"] for service in (api, db)}
    manifest = registry.read_manifest(api, v1[api] or "")
    assert manifest.extra["dataset"] == dataset and manifest.extra["run_id"] == first["run_id"]

    # -- what a Serve replica answers to {"service": api}, rows read afresh every time (cache age 0) --
    loader = ModelLoader(registry, tmp_path / "cache", recent=RecentHistory(object_store, max_age_s=0))
    slot = loader.load(api)
    answer1 = _plain_answer(loader, slot, api)
    assert answer1["model_version"] == v1[api]
    assert answer1["history"]["source"] == f"dataset:{dataset}"
    newest1 = pd.Timestamp(answer1["history"]["newest"])
    boundary = pd.Timestamp(stack.timeline.boundary, unit="s", tz="UTC")
    assert boundary - pd.Timedelta("5min") <= newest1 <= boundary + pd.Timedelta("10min")  # gauges stay 5 min

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
    assert collected[api]["start"] == newest1.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert collected[api]["new_rows"] >= 3 * 12 - 2, output2[-5000:]  # ~3 h at 5 minutes
    assert collected[db]["new_rows"] == 0, collected[db]
    decisions = {d["service"]: d for d in second["decisions"]}
    assert decisions[api]["retrain"] and decisions[api]["trained_through"] is not None
    assert not decisions[db]["retrain"] and decisions[db]["reason"].startswith("unchanged"), decisions[db]
    assert [row["service"] for row in second["services"]] == [api]
    assert second["services"][0]["status"] == "published"
    assert second["skipped"] == [db] and second["counts"]["skipped"] == 1
    assert "CYCLE RESULT: collected" in output2 and "1 skipped; exit 0" in output2, output2[-2000:]

    v2 = registry.latest_version(api)
    assert v2 is not None and v2 != v1[api] and v2 == second["services"][0]["version"]
    assert registry.latest_version(db) == v1[db]  # unchanged: not retrained

    # -- the replica picks up version 2 and answers on the newer rows ------------------------------
    assert loader.refresh(slot)
    answer2 = _plain_answer(loader, slot, api)
    assert answer2["model_version"] == v2
    newest2 = pd.Timestamp(answer2["history"]["newest"])
    assert newest2 > newest1 + pd.Timedelta("2h"), (newest1, newest2)
    assert answer2["recommendations"]["cpu_cores"] > answer1["recommendations"]["cpu_cores"]
    loader.close()

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
