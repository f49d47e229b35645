"""`mora collect` against a real Prometheus (backfilled with promtool) into the real S3 server."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from collect_promdata import (
    CHECKOUT,
    NAMESPACE,
    PROXY_TOKEN,
    SCRAPE,
    SERVICES,
    BackfilledPrometheus,
    exact_rows,
    expected_raw,
)
from typer.testing import CliRunner

from infra.local.prometheus import free_port
from mora_platform.cli import app
from mora_platform.collect.chunks import plan_chunks
from mora_platform.data import schema
from mora_platform.data.cleaning import add_derived_metrics
from mora_platform.settings import MoraSettings
from mora_platform.storage.datasets import DatasetStore
from mora_platform.storage.object_store import ObjectStore

pytestmark = pytest.mark.integration

CONTEXT_STEPS = 10  # the settings default


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _env(s3: MoraSettings, **extra: str) -> dict[str, str]:
    key, secret = s3.s3_credentials()
    env = {
        "MORA_S3_ENDPOINT_URL": s3.s3_endpoint_url,
        "MORA_S3_BUCKET": s3.s3_bucket,
        "MORA_S3_ACCESS_KEY": key or "",
        "MORA_S3_SECRET_KEY": secret or "",
        "MORA_S3_REGION": s3.s3_region,
        "COLUMNS": "200",
    }
    env.update(extra)
    return env


def _collect(
    prom: BackfilledPrometheus, s3: MoraSettings, dataset: str, *args: str, env: dict[str, str] | None = None
):
    timeline = prom.timeline
    command = [
        "collect",
        "--namespace", NAMESPACE,
        "--dataset", dataset,
        "--since", _iso(timeline.start),
        "--until", _iso(timeline.end),
        "--step", f"{SCRAPE}s",
        *args,
    ]  # fmt: skip
    if "--prometheus" not in args:
        command += ["--prometheus", prom.url]
    return CliRunner().invoke(app, command, env={**_env(s3), **(env or {})})


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _expected(prom: BackfilledPrometheus, service_index: int, points_per_chunk: int) -> pd.DataFrame:
    """What the collector must store: exact raw values, derived per chunk as the data layer does."""
    timeline = prom.timeline
    service = SERVICES[service_index]
    step = SCRAPE
    parts = []
    windows = plan_chunks(
        datetime.fromtimestamp(timeline.start, UTC),
        datetime.fromtimestamp(timeline.end, UTC),
        step,
        points_per_chunk,
    )
    for window in windows:
        times = np.arange(window.first - CONTEXT_STEPS * step, window.last + 1, step, dtype=np.int64)
        raw = expected_raw(service, timeline, times)
        raw.insert(1, schema.EXPERIMENT_ID, f"prometheus-{NAMESPACE}-{service.name}")
        raw.insert(2, schema.SERVICE, service.name)
        derived = add_derived_metrics(raw)
        keep = times >= window.first
        parts.append(derived.loc[keep].reset_index(drop=True))
    return pd.concat(parts, ignore_index=True)


def test_collected_values_equal_the_values_put_in(
    backfilled_prometheus: BackfilledPrometheus, s3_settings: MoraSettings, object_store: ObjectStore
) -> None:
    prom = backfilled_prometheus
    dataset = _name("collect-values")
    began = time.monotonic()
    result = _collect(
        prom, s3_settings, dataset, "--services", "frontend,cart,ads", "--points-per-chunk", "1000"
    )
    seconds = time.monotonic() - began
    assert result.exit_code == 0, result.output
    print(
        f"backfill {prom.backfill_seconds:.2f}s, prometheus start {prom.start_seconds:.2f}s, collect {seconds:.2f}s"
    )

    stored = DatasetStore(object_store).read(dataset)
    assert sorted(stored[schema.SERVICE].unique()) == ["ads", "cart", "frontend"]
    points = (prom.timeline.end - prom.timeline.start) // SCRAPE + 1
    for index, name in enumerate(("frontend", "cart", "ads")):
        got = stored[stored[schema.SERVICE] == name].reset_index(drop=True)
        want = _expected(prom, index, 1000)
        assert len(got) == points, f"{name}: {len(got)} rows, expected {points}"
        got_seconds = (got[schema.TIMESTAMP] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        want_seconds = (want[schema.TIMESTAMP] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        assert (got_seconds.to_numpy() == want_seconds.to_numpy()).all()
        exact = exact_rows(prom.timeline, got_seconds.to_numpy())
        assert exact.sum() > 0.8 * points
        for metric in schema.METRIC_COLUMNS:
            np.testing.assert_allclose(
                got.loc[exact, metric].to_numpy(), want.loc[exact, metric].to_numpy(), rtol=1e-6, atol=1e-9,
                err_msg=f"{name}: {metric}",
            )  # fmt: skip
        # gauges are exact at every step, not only away from rate changes
        for metric in ("mem_bytes_value", "pod_restarts_value", "replica_count_value", "node_mem_util_value"):
            np.testing.assert_allclose(got[metric], want[metric], rtol=1e-9, err_msg=f"{name}: {metric}")
        assert (got[schema.REPLICA_COUNT] == want["replica_count_value"].astype(int)).all()
        assert set(got[schema.SCENARIO]) == {"collected"} and (got[schema.LOAD_USERS] == 0.0).all()
    assert "frontend" in result.output and "ok" in result.output


def _parts(object_store: ObjectStore, dataset: str) -> pd.DataFrame:
    keys = [k for k in object_store.list_keys(f"datasets/{dataset}/") if k.endswith(".parquet")]
    return pd.concat([pd.read_parquet(BytesIO(object_store.get_bytes(k))) for k in keys], ignore_index=True)


def test_interrupted_collection_resumes_to_the_same_dataset(
    backfilled_prometheus: BackfilledPrometheus, s3_settings: MoraSettings, object_store: ObjectStore
) -> None:
    prom = backfilled_prometheus
    args = ("--services", "frontend,cart", "--points-per-chunk", "60")  # 30-minute chunks: 7 per service
    whole, resumed = _name("collect-whole"), _name("collect-resumed")
    assert _collect(prom, s3_settings, whole, *args).exit_code == 0

    first = _collect(prom, s3_settings, resumed, *args, "--max-chunks", "4")
    assert first.exit_code == 0, first.output
    assert "interrupted" in first.output
    checkpoint = json.loads(object_store.get_bytes(f"checkpoints/collect/{resumed}/frontend.json"))
    assert len(checkpoint["chunks"]) == 4
    assert not object_store.exists(f"checkpoints/collect/{resumed}/cart.json")

    second = _collect(prom, s3_settings, resumed, *args)
    assert second.exit_code == 0, second.output
    third = _collect(prom, s3_settings, resumed, *args)  # nothing left: every chunk skipped
    assert third.exit_code == 0, third.output

    store = DatasetStore(object_store)
    pd.testing.assert_frame_equal(store.read(resumed), store.read(whole))
    raw_rows = _parts(object_store, resumed)  # every stored row, before any read-side dedup
    assert not raw_rows.duplicated([schema.SERVICE, schema.TIMESTAMP]).any()
    assert len(raw_rows) == len(_parts(object_store, whole)) == 2 * 361


def test_failures_are_explained_and_the_others_still_collected(
    backfilled_prometheus: BackfilledPrometheus, s3_settings: MoraSettings, object_store: ObjectStore,
    auth_proxy: str, tmp_path: Path,
) -> None:  # fmt: skip
    prom = backfilled_prometheus
    settings_file = tmp_path / "prometheus.yaml"
    settings_file.write_text("retries: 1\nbackoff_seconds: 0.05\n", encoding="utf-8")
    dataset = _name("collect-failures")
    began = time.monotonic()
    result = _collect(
        prom, s3_settings, dataset,
        "--prometheus", auth_proxy,
        "--services", "locked,ghost,slow,cart",
        "--settings", str(settings_file),
        "--timeout", "1",
        env={"MORA_PROMETHEUS_BEARER_TOKEN": PROXY_TOKEN},
    )  # fmt: skip
    assert time.monotonic() - began < 30
    assert result.exit_code == 1, result.output
    out = result.output
    assert "locked: failed:" in out and "HTTP 401 Unauthorized" in out
    assert "slow: failed:" in out and "did not answer within 1s" in out
    assert "ghost: no data: no series for any query" in out
    assert "no pod in namespace 'shop' matches" in out
    assert PROXY_TOKEN not in out
    assert DatasetStore(object_store).list_services(dataset) == ["cart"]


def test_wrong_token_is_a_clear_401_and_never_printed(
    backfilled_prometheus: BackfilledPrometheus, s3_settings: MoraSettings, auth_proxy: str
) -> None:
    result = _collect(
        backfilled_prometheus, s3_settings, _name("collect-401"),
        "--prometheus", auth_proxy, "--services", "cart",
        env={"MORA_PROMETHEUS_BEARER_TOKEN": "wrong-token-8e2f"},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "HTTP 401 Unauthorized" in result.output and "MORA_PROMETHEUS_BEARER_TOKEN" in result.output
    assert "wrong-token-8e2f" not in result.output


def test_prometheus_down_is_a_clear_error(
    backfilled_prometheus: BackfilledPrometheus, s3_settings: MoraSettings
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _collect(
        backfilled_prometheus, s3_settings, _name("collect-down"),
        "--prometheus", url, "--services", "cart",
        env={"MORA_PROMETHEUS_RETRIES": "1", "MORA_PROMETHEUS_BACKOFF_SECONDS": "0.05"},
    )  # fmt: skip
    assert result.exit_code == 2
    assert f"Prometheus at {url} is unreachable: connection refused" in result.output


def test_all_discovers_the_deployments(
    backfilled_prometheus: BackfilledPrometheus, s3_settings: MoraSettings, object_store: ObjectStore
) -> None:
    dataset = _name("collect-all")
    timeline = backfilled_prometheus.timeline
    result = _collect(
        backfilled_prometheus, s3_settings, dataset, "--all",
        "--since", _iso(timeline.end - 600),  # later flags win: just the last 10 minutes
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # checkout has kube-state-metrics' replicas series, recs (cAdvisor only) cannot be discovered
    expected = sorted([*(s.name for s in SERVICES), CHECKOUT.name])
    assert DatasetStore(object_store).list_services(dataset) == expected
