"""RecentHistory: a service's newest rows, read once per interval, failures remembered, age stated."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from mora_platform.registry.recent_history import RecentHistory, history_used
from mora_platform.storage.errors import StorageUnavailableError


class FakeStore:
    """The slice of ObjectStore that DatasetStore.read uses, in memory; counts reads."""

    def __init__(self, frames: dict[str, pd.DataFrame]) -> None:
        self.frames = frames
        self.reads = 0
        self.down = False

    def list_keys(self, prefix: str = "") -> list[str]:
        if self.down:
            raise StorageUnavailableError("S3 is down")
        return [key for key in self.frames if key.startswith(prefix)]

    def read_parquet(self, key: str) -> pd.DataFrame:
        self.reads += 1
        return self.frames[key].copy()

    def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        return sorted(
            {prefix + key[len(prefix) :].split(delimiter)[0] + delimiter for key in self.list_keys(prefix)}
        )

    def has_prefix(self, prefix: str) -> bool:
        return bool(self.list_keys(prefix))


def rows(n: int, service: str = "svc") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-03-01", periods=n, freq="15s", tz="UTC"),
            "experiment_id": "e1",
            "service": service,
            "cpu_cores_value": range(n),
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(n: int = 50, **options: Any) -> tuple[RecentHistory, FakeStore, Clock]:
    store = FakeStore({"datasets/shop/service=svc/part-00000.parquet": rows(n)})
    clock = Clock()
    return RecentHistory(store, clock=clock, **options), store, clock  # type: ignore[arg-type]


def test_newest_rows_are_read_once_per_interval() -> None:
    recent, store, clock = make(50, rows=20, max_age_s=60)
    first = recent.get("svc", "shop")
    assert first.frame is not None and first.rows == 20
    assert list(first.frame["cpu_cores_value"]) == list(range(30, 50))  # the newest, in order
    assert recent.get("svc", "shop") is first and store.reads == 1
    assert recent.peek("svc", "shop") is first
    clock.now += 61
    assert recent.peek("svc", "shop") is None  # stale: peek never reads
    assert store.reads == 1
    again = recent.get("svc", "shop")
    assert again is not first and store.reads == 2 and again.fetched_at == clock.now


def test_failures_are_remembered_for_the_interval_and_named() -> None:
    recent, store, clock = make(10, max_age_s=30)
    store.down = True
    failed = recent.get("svc", "shop")
    assert failed.frame is None and "S3 is down" in (failed.error or "")
    store.down = False
    assert recent.get("svc", "shop") is failed  # no read storm while S3 is down
    clock.now += 31
    assert recent.get("svc", "shop").frame is not None
    missing = recent.get("svc", "other-dataset")
    assert missing.frame is None and "other-dataset" in (missing.error or "")
    assert "names no dataset" in (recent.get("svc", None).error or "")


def test_history_used_states_source_count_and_age() -> None:
    frame = rows(8)
    now = pd.Timestamp("2026-03-01T01:00:00Z")
    used = history_used("dataset:shop", frame, now=now)
    assert used.source == "dataset:shop" and used.rows == 8
    assert pd.Timestamp(used.newest) == frame["timestamp"].max()
    assert used.age_seconds == pytest.approx(3600 - 7 * 15)
    assert history_used("model", None).rows == 0 and history_used("model", None).age_seconds is None


def test_rows_and_age_are_checked() -> None:
    with pytest.raises(ValueError, match="rows"):
        make(rows=0)
    with pytest.raises(ValueError, match="max_age_s"):
        make(max_age_s=-1)
