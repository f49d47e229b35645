"""Recent rows live from Prometheus: where they are read, when the dataset answers instead, and why."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from pydantic import SecretStr
from test_recent_history import Clock, FakeStore, rows

from mora_platform.collect.checkpoint import Checkpoint, CheckpointStore
from mora_platform.collect.client import PrometheusUnavailableError, Series
from mora_platform.collect.live import LiveHistory
from mora_platform.collect.settings import PrometheusSettings
from mora_platform.registry.recent_history import (
    RecentHistory,
    history_from_settings,
    pick_history,
    prometheus_for_history,
)
from mora_platform.settings import MoraSettings
from mora_platform.storage.errors import ObjectNotFoundError


class BlobFakeStore(FakeStore):
    """FakeStore plus the blob calls of the collect checkpoint and workload readers."""

    def __init__(self, frames: dict[str, pd.DataFrame], blobs: dict[str, bytes] | None = None) -> None:
        super().__init__(frames)
        self.blobs = dict(blobs or {})

    def exists(self, key: str) -> bool:
        return key in self.blobs

    def get_bytes(self, key: str) -> bytes:
        if key not in self.blobs:
            raise ObjectNotFoundError(key)
        return self.blobs[key]


def checkpoint_blob(namespace: str = "prod", step: int = 300) -> dict[str, bytes]:
    checkpoint = Checkpoint("shop", "svc", namespace, step, 10_000, "f" * 16)
    return {CheckpointStore(None).key("shop", "svc"): checkpoint.to_json()}  # type: ignore[arg-type]


class FakeLive:
    """What RecentHistory needs of LiveHistory; records the reads."""

    def __init__(self, frame: pd.DataFrame | None = None, failure: Exception | None = None) -> None:
        self.frame = frame if frame is not None else rows(30)
        self.failure = failure
        self.calls: list[tuple[str, str, int, int]] = []
        self.settings = PrometheusSettings(_env_file=None, step="30s")  # type: ignore[call-arg]
        self.display_url = "http://prometheus:9090"

    def read(self, service: str, namespace: str, *, rows: int, step_seconds: int) -> pd.DataFrame:
        self.calls.append((service, namespace, rows, step_seconds))
        if self.failure is not None:
            raise self.failure
        return self.frame.tail(rows)


def make(
    live: FakeLive, blobs: dict[str, bytes] | None = None, **options: Any
) -> tuple[RecentHistory, Clock]:
    store = BlobFakeStore({"datasets/shop/service=svc/part-00000.parquet": rows(50)}, blobs)
    clock = Clock()
    recent = RecentHistory(store, clock=clock, live=live, **options)  # type: ignore[arg-type]
    return recent, clock


def test_live_rows_in_the_datasets_namespace_and_step_are_cached_per_interval() -> None:
    live = FakeLive()
    recent, clock = make(live, checkpoint_blob("prod", 300), rows=20, max_age_s=60)
    window = recent.get("svc", "shop", step_seconds=15)
    assert window.label == "prometheus:prod" and window.rows == 20 and window.notes == ()
    assert live.calls == [("svc", "prod", 20, 300)]  # the dataset's step wins over the model's estimate
    assert recent.get("svc", "shop") is window and recent.peek("svc", "shop") is window
    history, source, notes = pick_history(None, window)
    assert source == "prometheus:prod" and notes == [] and history is window.frame
    clock.now += 61
    assert recent.get("svc", "shop") is not window and len(live.calls) == 2
    assert recent.reads == 1  # the checkpoint is read once, not per window


def test_prometheus_down_falls_back_to_the_dataset_with_a_note_cached_for_the_interval() -> None:
    live = FakeLive(failure=PrometheusUnavailableError("cannot reach http://prometheus:9090: refused"))
    recent, clock = make(live, checkpoint_blob(), rows=20, max_age_s=30)
    window = recent.get("svc", "shop")
    assert window.label == "dataset:shop" and window.rows == 20
    history, source, notes = pick_history(None, window)
    assert source == "dataset:shop" and history is window.frame
    assert len(notes) == 1 and "Prometheus failed: cannot reach" in notes[0] and "dataset 'shop'" in notes[0]
    assert recent.get("svc", "shop") is window and len(live.calls) == 1  # no retry storm
    live.failure = None
    clock.now += 31
    assert recent.get("svc", "shop").label == "prometheus:prod"


def test_no_live_rows_and_no_namespace_are_said() -> None:
    empty = FakeLive(frame=rows(0))
    window = make(empty, checkpoint_blob())[0].get("svc", "shop")
    assert window.label == "dataset:shop" and "Prometheus has no rows of svc" in window.notes[0]

    nowhere = FakeLive()
    window = make(nowhere)[0].get("svc", "shop")  # not collected from Prometheus: no checkpoint
    assert nowhere.calls == [] and window.label == "dataset:shop"
    assert "MORA_SERVE_HISTORY_NAMESPACE" in window.notes[0]

    configured = FakeLive()
    window = make(configured, namespace="prod")[0].get("svc", "shop", step_seconds=15)
    assert window.label == "prometheus:prod" and configured.calls == [("svc", "prod", 2000, 15)]
    assert make(configured, namespace="prod")[0].get("svc", None).label == "prometheus:prod"


def test_both_sources_failing_answer_from_the_stored_tail_saying_why() -> None:
    live = FakeLive(failure=PrometheusUnavailableError("refused"))
    recent, _ = make(live, checkpoint_blob())
    recent.store.down = True  # type: ignore[attr-defined]
    window = recent.get("svc", "shop")
    assert window.frame is None and "refused" in (window.error or "") and "S3 is down" in (window.error or "")
    history, source, notes = pick_history(None, window)
    assert history is None and source == "model" and "no recent rows" in notes[0]


class FakeClient:
    url = "http://user:secret@prometheus:9090"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, int, int, int]] = []
        self.fail = fail

    def query_range(
        self, query: str, start: int, end: int, step: int, *, what: str = "query"
    ) -> list[Series]:
        self.calls.append((query, start, end, step))
        if self.fail:
            raise PrometheusUnavailableError("down")
        if "node_" in query:
            return []
        return [Series({}, [(float(t), 1.0) for t in range(start, end + 1, step)])]


def test_live_history_reads_the_newest_grid_points_as_unified_rows() -> None:
    settings = PrometheusSettings(_env_file=None, timeout_seconds=30, retries=3, context_steps=2)  # type: ignore[call-arg]
    client = FakeClient()
    live = LiveHistory(settings, timeout_s=4, client=client, clock=lambda: 10_000.0)  # type: ignore[arg-type]
    assert live.settings.retries == 0 and live.settings.timeout_seconds == 4
    assert "secret" not in live.display_url
    frame = live.read("svc", "prod", rows=5, step_seconds=300)
    assert len(frame) == 5 and set(frame["service"]) == {"svc"}
    assert [int(t.timestamp()) for t in frame["timestamp"]] == [8700, 9000, 9300, 9600, 9900]
    spans = {(start, end, step) for _, start, end, step in client.calls}
    assert spans == {(8100, 9900, 300)}  # two context steps before the window
    assert all('namespace="prod"' in query for query, *_ in client.calls if "node_" not in query)
    with pytest.raises(PrometheusUnavailableError):
        LiveHistory(settings, client=FakeClient(fail=True)).read("svc", "prod", rows=5, step_seconds=300)  # type: ignore[arg-type]


def settings(**values: Any) -> MoraSettings:
    return MoraSettings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_source_follows_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("MORA_PROMETHEUS_URL", "MORA_PROMETHEUS_BEARER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    env = tmp_path / "stack.env"
    env.write_text("MORA_PROMETHEUS_BEARER_TOKEN=tok-123\nMORA_PROMETHEUS_STEP=1m\n")
    assert prometheus_for_history(settings(), [env]) is None  # auto, no URL: the dataset
    assert (
        prometheus_for_history(settings(prometheus_url="http://p:9090", serve_history_source="dataset"), [])
        is None
    )
    assert prometheus_for_history(settings(prometheus_url="http://p:9090", serve_history_rows=0), []) is None
    with pytest.raises(ValueError, match="MORA_PROMETHEUS_URL"):
        prometheus_for_history(settings(serve_history_source="prometheus"), [env])
    found = prometheus_for_history(settings(prometheus_url="http://p:9090"), [env])
    assert found is not None and found.url == "http://p:9090" and found.step == "1m"
    assert found.bearer_token == SecretStr("tok-123") and "tok-123" not in repr(found)
    monkeypatch.setenv("MORA_PROMETHEUS_URL", "http://from-env:9090")
    from_env = prometheus_for_history(settings(), [])
    assert from_env is not None and from_env.url == "http://from-env:9090"

    store = BlobFakeStore({})
    chosen = settings(serve_history_namespace="prod", serve_history_timeout_s=2, serve_history_max_age_s=5)
    recent = history_from_settings(chosen, store, found)  # type: ignore[arg-type]
    assert recent is not None and isinstance(recent.live, LiveHistory) and recent.namespace == "prod"
    assert recent.live.settings.timeout_seconds == 2 and recent.max_age_s == 5
    plain = history_from_settings(chosen, store, None)  # type: ignore[arg-type]
    assert plain is not None and plain.live is None
    assert history_from_settings(settings(serve_history_rows=0), store, found) is None  # type: ignore[arg-type]
