"""The collector's orchestration: resume without duplicates, failure isolation, clear reasons.

Prometheus is replaced by a small in-memory fake here; the real server is exercised by
tests/integration/collect/.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pandas as pd
import pytest

from mora_platform.collect.checkpoint import CheckpointStore
from mora_platform.collect.client import (
    PrometheusAuthError,
    PrometheusClient,
    PrometheusTimeoutError,
    PrometheusUnavailableError,
    Series,
)
from mora_platform.collect.collector import Collector
from mora_platform.collect.settings import PrometheusSettings
from mora_platform.data import schema

T0 = datetime(2026, 1, 5, tzinfo=UTC)


class MemoryBlobs:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def get_bytes(self, key: str) -> bytes:
        return self.objects[key]

    def exists(self, key: str) -> bool:
        return key in self.objects


class MemoryDatasets:
    """Parts keyed like DatasetStore: (dataset, service, part) -> frame; rewriting replaces."""

    def __init__(self) -> None:
        self.parts: dict[tuple[str, str, str], pd.DataFrame] = {}
        self.writes = 0

    def write(self, name: str, frame: pd.DataFrame, *, part: str = "part-00000") -> object:
        for service, rows in frame.groupby(schema.SERVICE):
            self.parts[(name, str(service), part)] = rows.reset_index(drop=True)
        self.writes += 1
        return None

    def rows(self, name: str) -> pd.DataFrame:
        frames = [f for (n, _, _), f in sorted(self.parts.items(), key=lambda kv: kv[0]) if n == name]
        return pd.concat(frames, ignore_index=True)


class FakePrometheus:
    """Answers range queries with value = t / 1000 for known services; scripted failures per service."""

    def __init__(self, services: set[str], failures: dict[str, Exception] | None = None) -> None:
        self.services = services
        self.failures = failures or {}
        self.calls = 0

    def query_range(self, query: str, start: int, end: int, step: int, *, what: str = "") -> list[Series]:
        self.calls += 1
        match = re.search(r'pod=~"([a-z]+)|deployment="([a-z]+)"', query)
        service = next((g for g in match.groups() if g), None) if match else None
        if service in self.failures:
            raise self.failures[service]
        if service is None:  # node-level queries: shared by everyone
            return [Series({}, [(float(t), 50.0) for t in range(start, end + 1, step)])]
        if service not in self.services:
            return []
        return [Series({}, [(float(t), t / 1000.0) for t in range(start, end + 1, step)])]

    def label_values(self, label: str, selector: str, start: int, end: int) -> list[str]:
        return sorted(f"{s}-abcde12-xyz12" for s in self.services)


def _collector(
    fake: FakePrometheus, datasets: MemoryDatasets, blobs: MemoryBlobs, **kwargs: Any
) -> Collector:
    settings = PrometheusSettings.load(points_per_chunk=20, context_steps=2)
    return Collector(cast(PrometheusClient, fake), datasets, CheckpointStore(blobs), settings, **kwargs)


def test_interrupted_run_resumes_to_the_same_rows_without_duplicates() -> None:
    end = T0 + timedelta(hours=1)
    full_ds, full_blobs = MemoryDatasets(), MemoryBlobs()
    full = _collector(FakePrometheus({"cart", "shop"}), full_ds, full_blobs).collect(
        "full", "ns", ["cart", "shop"], T0, end
    )
    assert [s.status for s in full.services] == ["ok", "ok"]
    assert full.services[0].rows == 121 and full.services[0].chunks_written == 7

    ds, blobs = MemoryDatasets(), MemoryBlobs()
    first = _collector(FakePrometheus({"cart", "shop"}), ds, blobs, max_chunks=9).collect(
        "resumed", "ns", ["cart", "shop"], T0, end
    )
    assert first.interrupted
    assert [s.status for s in first.services] == ["ok", "interrupted"]
    assert first.services[1].rows == 40 and first.services[1].chunks_written == 2
    fake = FakePrometheus({"cart", "shop"})
    second = _collector(fake, ds, blobs).collect("resumed", "ns", ["cart", "shop"], T0, end)
    assert not second.interrupted
    assert second.services[0].chunks_skipped == 7 and second.services[0].chunks_written == 0
    assert second.services[1].chunks_skipped == 2 and second.services[1].chunks_written == 5
    resumed = ds.rows("resumed")
    assert not resumed.duplicated([schema.SERVICE, schema.TIMESTAMP]).any()
    pd.testing.assert_frame_equal(resumed, full_ds.rows("full"))

    # a third run finds nothing to do and asks Prometheus nothing
    fake3 = FakePrometheus({"cart", "shop"})
    third = _collector(fake3, ds, blobs).collect("resumed", "ns", ["cart", "shop"], T0, end)
    assert fake3.calls == 0 and all(s.chunks_written == 0 for s in third.services)


def test_extending_the_range_rewrites_only_the_open_chunk() -> None:
    ds, blobs = MemoryDatasets(), MemoryBlobs()
    fake = FakePrometheus({"cart"})
    _collector(fake, ds, blobs).collect("d", "ns", ["cart"], T0, T0 + timedelta(minutes=25))
    report = _collector(fake, ds, blobs).collect("d", "ns", ["cart"], T0, T0 + timedelta(minutes=40))
    result = report.services[0]
    assert result.chunks_skipped == 2 and result.chunks_written == 3  # open chunk redone, two new ones
    rows = ds.rows("d")
    assert len(rows) == 81 and not rows.duplicated([schema.TIMESTAMP]).any()
    assert result.rows == 81 and result.new_rows == 30


def test_one_failing_service_does_not_stop_the_others() -> None:
    failures: dict[str, Exception] = {
        "locked": PrometheusAuthError(
            "query cpu_cores_value: Prometheus refused the request (HTTP 401 Unauthorized)"
        ),
        "slow": PrometheusTimeoutError("query cpu_cores_value: Prometheus did not answer within 1s"),
    }
    fake = FakePrometheus({"cart", "locked", "slow"}, failures)
    report = _collector(fake, MemoryDatasets(), MemoryBlobs()).collect(
        "d", "ns", ["locked", "ghost", "slow", "cart"], T0, T0 + timedelta(minutes=10)
    )
    by_name = {s.service: s for s in report.services}
    assert by_name["locked"].status == "failed" and "HTTP 401" in by_name["locked"].message
    assert by_name["slow"].status == "failed" and "did not answer within 1s" in by_name["slow"].message
    assert by_name["ghost"].status == "no data"
    assert "no pod in namespace 'ns' matches" in by_name["ghost"].message
    assert by_name["cart"].status == "ok" and by_name["cart"].rows == 21
    assert [s.service for s in report.failed] == ["locked", "slow"]


def test_unreachable_server_stops_the_run_with_one_message() -> None:
    error = PrometheusUnavailableError("Prometheus at http://127.0.0.1:1 is unreachable: connection refused")
    fake = FakePrometheus({"cart", "shop"}, {"cart": error})
    report = _collector(fake, MemoryDatasets(), MemoryBlobs()).collect(
        "d", "ns", ["cart", "shop"], T0, T0 + timedelta(minutes=10)
    )
    assert [s.status for s in report.services] == ["failed", "not attempted"]
    assert "connection refused" in report.services[1].message


def test_changed_step_on_an_existing_dataset_is_refused() -> None:
    ds, blobs = MemoryDatasets(), MemoryBlobs()
    fake = FakePrometheus({"cart"})
    _collector(fake, ds, blobs).collect("d", "ns", ["cart"], T0, T0 + timedelta(minutes=10))
    settings = PrometheusSettings.load(points_per_chunk=20, context_steps=2, step="60s")
    report = Collector(cast(PrometheusClient, fake), ds, CheckpointStore(blobs), settings).collect(
        "d", "ns", ["cart"], T0, T0 + timedelta(minutes=10)
    )
    assert report.services[0].status == "failed"
    assert "step 30s (now 60s)" in report.services[0].message


def test_unaggregated_query_is_reported_not_summed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePrometheus({"cart"})
    original = fake.query_range

    def two_series(query: str, start: int, end: int, step: int, *, what: str = "") -> list[Series]:
        series = original(query, start, end, step, what=what)
        return series * 2 if "container_memory_working_set_bytes" in query else series

    monkeypatch.setattr(fake, "query_range", two_series)
    report = _collector(fake, MemoryDatasets(), MemoryBlobs()).collect(
        "d", "ns", ["cart"], T0, T0 + timedelta(minutes=5)
    )
    assert report.services[0].status == "failed"
    assert "mem_bytes_value returned 2 series" in report.services[0].message
