"""`mora collect` with per-pod columns and workload states, against the real Prometheus and S3 server.

``checkout`` has two containers, three pods with skewed usage, requests/limits (one pod on an older
cpu request), an HPA (plus a StatefulSet's decoy HPA of the same name) and one OOM kill of a
container without a memory limit; ``recs`` has cAdvisor series only. Both are in the session's
backfilled Prometheus (``collect_promdata``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from collect_promdata import (
    CHECKOUT,
    HPA_CPU_PERCENT,
    HPA_MAX,
    HPA_MIN,
    LIMITS,
    MI,
    NAMESPACE,
    RECS,
    REQUESTS,
    SCRAPE,
    BackfilledPrometheus,
    WorkloadService,
    exact_rows,
    oom_memory,
    workload_cpu_rate,
    workload_memory,
)
from typer.testing import CliRunner

from mora_platform.cli import app
from mora_platform.data import schema
from mora_platform.settings import MoraSettings
from mora_platform.storage.datasets import DatasetStore
from mora_platform.storage.object_store import ObjectStore
from mora_platform.storage.workloads import list_workloads, read_workload

pytestmark = pytest.mark.integration


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _s3_env(s3_settings: MoraSettings) -> dict[str, str]:
    """The CLI's environment for the session's S3 server."""
    key, secret = s3_settings.s3_credentials()
    return {
        "MORA_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url,
        "MORA_S3_BUCKET": s3_settings.s3_bucket,
        "MORA_S3_ACCESS_KEY": key or "",
        "MORA_S3_SECRET_KEY": secret or "",
        "MORA_S3_REGION": s3_settings.s3_region,
        "COLUMNS": "200",
    }


def _pod_sums(service: WorkloadService, value: Callable[..., float], *args: int) -> np.ndarray:
    """Per pod, the containers summed: ``value(service, pod, container, *args)``."""
    return np.array(
        [sum(value(service, p, c, *args) for c in service.containers) for p in range(len(service.pods))]
    )


def test_busiest_pod_columns_and_workload_states(
    backfilled_prometheus: BackfilledPrometheus, s3_settings: MoraSettings, object_store: ObjectStore
) -> None:
    prom = backfilled_prometheus
    timeline = prom.timeline
    dataset = f"collect-workloads-{uuid.uuid4().hex[:8]}"
    env = _s3_env(s3_settings)
    result = CliRunner().invoke(
        app,
        [
            "collect", "--namespace", NAMESPACE, "--dataset", dataset, "--prometheus", prom.url,
            "--since", _iso(timeline.start), "--until", _iso(timeline.end), "--step", f"{SCRAPE}s",
            "--services", "checkout,recs",
        ],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert (
        "checkout: workload: containers app, proxy; pods 3, replicas 3; 1 OOM kill(s); HPA checkout 2..6"
        in out
    )
    assert "checkout: workload missing: memory limit of app" in out
    assert "recs: workload: containers server; pods 2, replicas -" in out
    assert "recs: workload missing: " in out and "cpu requests" in out and "hpa" in out
    assert "recs: partial: no series for: pod_restarts_value, replica_count_value" in out

    # -- rows: the totals as before, plus the busiest pod's usage -------------------------------------
    stored = DatasetStore(object_store).read(dataset)
    for service in (CHECKOUT, RECS):
        rows = stored[stored[schema.SERVICE] == service.name].reset_index(drop=True)
        assert len(rows) == (timeline.end - timeline.start) // SCRAPE + 1
        seconds = ((rows[schema.TIMESTAMP] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy()
        exact = exact_rows(timeline, seconds)
        segments = timeline.segment(seconds - SCRAPE)
        cpu = np.array([_pod_sums(service, workload_cpu_rate, int(j)) for j in segments])
        memory = np.array([_pod_sums(service, workload_memory, int(t), timeline.start) for t in seconds])
        np.testing.assert_allclose(rows.loc[exact, schema.CPU_BUSIEST_POD], cpu.max(axis=1)[exact], rtol=1e-6)
        np.testing.assert_allclose(rows.loc[exact, "cpu_cores_value"], cpu.sum(axis=1)[exact], rtol=1e-6)
        np.testing.assert_allclose(rows[schema.MEM_BUSIEST_POD], memory.max(axis=1), rtol=1e-9)
        np.testing.assert_allclose(rows["mem_bytes_value"], memory.sum(axis=1), rtol=1e-9)
        pods = len(service.pods)  # skewed: the busiest pod uses more than an even share
        assert (rows.loc[exact, schema.CPU_BUSIEST_POD] > rows.loc[exact, "cpu_cores_value"] / pods).all()
        assert (rows[schema.MEM_BUSIEST_POD] > rows["mem_bytes_value"] / pods).all()

    # -- workload states, stored beside the dataset ----------------------------------------------------
    assert list_workloads(object_store, dataset) == ["checkout", "recs"]
    checkout = read_workload(object_store, dataset, "checkout")
    assert checkout is not None
    assert checkout.namespace == NAMESPACE and checkout.collected_at == _iso(timeline.end)
    assert (checkout.pods, checkout.replicas) == (3, 3)
    assert [c.name for c in checkout.containers] == ["app", "proxy"]
    app_state, proxy = checkout.containers
    # requests and limits: the max over the pods (pod 2 still has the older cpu request)
    assert app_state.cpu_request_cores == max(REQUESTS[("app", "cpu")]) == 0.5
    assert (
        app_state.memory_request_bytes == 256 * MI and app_state.cpu_limit_cores == LIMITS[("app", "cpu")][0]
    )
    assert app_state.memory_limit_bytes is None
    assert (proxy.cpu_request_cores, proxy.memory_request_bytes) == (0.1, 64 * MI)
    assert (proxy.cpu_limit_cores, proxy.memory_limit_bytes) == (0.2, 128 * MI)
    # shares of the usage over the window: the counters' increase and the mean working set
    window = timeline.times[(timeline.times >= timeline.start) & (timeline.times <= timeline.end)]
    cpu_increase = {
        c: sum(workload_cpu_rate(CHECKOUT, p, c, int(timeline.segment(int(t) - SCRAPE))) for t in window[1:] for p in range(3))
        for c in CHECKOUT.containers
    }  # fmt: skip
    mem_mean = {
        c: sum(np.mean([workload_memory(CHECKOUT, p, c, int(t), timeline.start) for t in window]) for p in range(3))
        for c in CHECKOUT.containers
    }  # fmt: skip
    assert app_state.cpu_share == pytest.approx(cpu_increase["app"] / sum(cpu_increase.values()), rel=1e-6)
    assert proxy.cpu_share == pytest.approx(cpu_increase["proxy"] / sum(cpu_increase.values()), rel=1e-6)
    assert app_state.memory_share == pytest.approx(mem_mean["app"] / sum(mem_mean.values()), rel=1e-6)
    # one OOM kill; no memory limit, so the level is the last working set before it
    assert app_state.oom_kills == 1 and app_state.oom_memory_bytes == pytest.approx(
        oom_memory(timeline.start)
    )
    assert proxy.oom_kills == 0 and proxy.oom_memory_bytes is None
    assert checkout.hpa is not None and checkout.hpa.name == "checkout"  # not the StatefulSet's
    assert (checkout.hpa.min_replicas, checkout.hpa.max_replicas) == (HPA_MIN, HPA_MAX)
    assert checkout.hpa.target_cpu_utilization == pytest.approx(HPA_CPU_PERCENT / 100)
    assert checkout.missing == ["memory limit of app: not set (no series)"]

    recs = read_workload(object_store, dataset, "recs")
    assert recs is not None
    assert [c.name for c in recs.containers] == ["server"] and recs.pods == 2 and recs.replicas is None
    server = recs.containers[0]
    assert server.cpu_share == 1.0 and server.memory_share == 1.0
    assert server.cpu_request_cores is None and server.memory_limit_bytes is None and recs.hpa is None
    facts = sorted(entry.split(": ", 1)[0] for entry in recs.missing)
    assert facts == sorted(
        ["cpu requests", "memory requests", "cpu limits", "memory limits", "replicas", "oom kills", "hpa"]
    ), recs.missing


TINY = {
    "seq_len": 8,
    "lstm": {"units": [4], "dense_units": 0, "epochs": 1, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 16},
    "seed": 0,
}


def test_collected_deployment_is_recommended_per_container_against_what_is_set(
    backfilled_prometheus: BackfilledPrometheus,
    s3_settings: MoraSettings,
    object_store: ObjectStore,
    tmp_path: Path,
) -> None:
    """collect -> train -> recommend: per container, current -> recommended, the HPA's replicas left
    alone, memory above the OOM level, and a patch that names the real containers (issue 12)."""
    import json

    import yaml

    prom = backfilled_prometheus
    timeline = prom.timeline
    dataset = f"collect-recommend-{uuid.uuid4().hex[:8]}"
    service = f"checkout-{uuid.uuid4().hex[:4]}"  # the registry is shared with other tests
    env = {**_s3_env(s3_settings), "MORA_HOME": str(tmp_path / "home"), "MORA_REGISTRY_DIR": ""}
    runner = CliRunner()
    collected = runner.invoke(
        app,
        [
            "collect", "--namespace", NAMESPACE, "--dataset", dataset, "--prometheus", prom.url,
            "--since", _iso(timeline.start), "--until", _iso(timeline.end), "--step", f"{SCRAPE}s",
            "--services", "checkout",
        ],
        env=env,
    )  # fmt: skip
    assert collected.exit_code == 0, collected.output
    # publish under a unique name: copy the rows and the workload state to it
    from mora_platform.storage.workloads import write_workload

    rows = DatasetStore(object_store).read(dataset)
    rows[schema.SERVICE] = service
    DatasetStore(object_store).write(dataset, rows)
    state = read_workload(object_store, dataset, "checkout")
    assert state is not None
    write_workload(object_store, dataset, state.model_copy(update={"service": service}))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    trained = runner.invoke(
        app, ["train", "--dataset", dataset, "--service", service, "--config", str(config)], env=env
    )
    assert trained.exit_code == 0, trained.output

    answer = runner.invoke(app, ["recommend", service, "--output", "json"], env=env)
    assert answer.exit_code == 0, answer.output
    rec = json.loads(answer.output)[0]
    assert "per container, per pod" in rec["units"] and rec["namespace"] == NAMESPACE
    names = [c["name"] for c in rec["containers"]]
    assert names == ["app", "proxy"]
    app_rec, proxy_rec = rec["containers"]
    # what is set now, from kube-state-metrics
    assert (
        app_rec["current"]["cpu_request_millicores"] == 500
        and app_rec["current"]["memory_request_mib"] == 256
    )
    assert proxy_rec["current"]["memory_limit_mib"] == 128
    # the HPA owns the replica count
    assert rec["recommendations"]["replicas"] is None
    assert rec["replica_decision"]["managed_by"] == "hpa/checkout" and rec["replica_decision"]["current"] == 3
    # after the OOM kill, the app container's memory sits above the level it died at
    level_mib = oom_memory(timeline.start) / MI
    assert app_rec["recommended"]["memory_request_mib"] >= max(1.2 * level_mib, level_mib + 100)
    assert any("OOM-killed at" in r for r in app_rec["reasons"])
    # the busiest pod was collected, so no even-spread caveat
    assert not any("busiest pod was not collected" in r for r in rec["reasons"])
    # the pod's requests are its containers' sum; CPU split by the containers' usage shares
    pod = rec["recommendations"]
    assert pod["cpu_millicores"] == sum(c["recommended"]["cpu_request_millicores"] for c in rec["containers"])
    assert (
        app_rec["recommended"]["cpu_request_millicores"] > proxy_rec["recommended"]["cpu_request_millicores"]
    )

    table = runner.invoke(app, ["recommend", service, "--output", "table"], env=env)
    assert table.exit_code == 0, table.output
    app_line = next(line for line in table.output.splitlines() if "│" in line and " app " in line)
    assert "500m -> " in app_line and "256Mi -> " in app_line
    assert "3 (hpa/checkout)" in app_line
    assert f"namespace {NAMESPACE}: all pods' requests:" in table.output

    patch = runner.invoke(app, ["recommend", service, "--output", "k8s-patch"], env=env)
    assert patch.exit_code == 0, patch.output
    document = yaml.safe_load(patch.output)
    assert "replicas" not in document["spec"]  # left to the HPA
    containers = document["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app", "proxy"]
    assert (
        containers[0]["resources"]["requests"]["memory"]
        == f"{app_rec['recommended']['memory_request_mib']}Mi"
    )
    assert "cpu" not in containers[0]["resources"].get("limits", {})  # no CPU limit by default
