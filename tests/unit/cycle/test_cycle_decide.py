"""Which services the rightsizing cycle retrains, where each one's collection resumes, and from what it decides."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from jobs.retrain_fleet import build_parser as retrain_parser
from jobs.rightsize_cycle import build_parser, min_new_data, model_states, newest_rows, retrain_argv
from mora_platform.collect.checkpoint import Checkpoint, ChunkRecord
from mora_platform.cycle import ServiceState, decide, resume_point, trim_checkpoint
from mora_platform.registry import ModelRegistry
from mora_platform.registry.backend import LocalBlobBackend

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def state(**fields: object) -> ServiceState:
    values: dict[str, object] = {
        "service": "api",
        "newest_row": T,
        "model_version": "20260301T000000Z-abcdef",
        "trained_through": T,
        "model_dataset": "shop",
    }
    values.update(fields)
    return ServiceState(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "retrain", "reason"),
    [
        ({}, False, "unchanged: no row after 2026-03-01T12:00:00Z"),
        ({"newest_row": T - timedelta(hours=1)}, False, "unchanged"),
        ({"newest_row": T + timedelta(minutes=5)}, True, "new rows through 2026-03-01T12:05:00Z after"),
        ({"model_version": None, "trained_through": None}, True, "no published model yet"),
        ({"model_dataset": "imported"}, True, "was trained on dataset 'imported'"),
        ({"model_dataset": None, "newest_row": T + timedelta(minutes=5)}, True, "new rows"),
        ({"trained_through": None}, True, "records no data window"),
        ({"error": "ArtifactIntegrityError: bad"}, True, "could not be read"),
        ({"newest_row": None}, False, "no rows in dataset 'shop'"),
        ({"newest_row": None, "model_version": None}, False, "no rows"),
    ],
)
def test_a_service_is_retrained_when_its_rows_are_newer_than_its_model(
    fields: dict[str, object], retrain: bool, reason: str
) -> None:
    (decision,) = decide([state(**fields)], "shop")
    assert decision.retrain is retrain
    assert reason in decision.reason, decision.reason


def test_naive_and_string_timestamps_compare_in_utc() -> None:
    naive_newest = state(newest_row=datetime(2026, 3, 1, 12, 0), trained_through="2026-03-01T12:00:00+00:00")
    later = state(
        newest_row=pd.Timestamp("2026-03-01T13:00:01+01:00"), trained_through="2026-03-01T12:00:00Z"
    )
    assert [d.retrain for d in decide([naive_newest, later], "shop")] == [False, True]


def test_retrain_all_takes_every_service_with_rows() -> None:
    states = [state(service="b"), state(service="a"), state(service="c", newest_row=None)]
    decisions = decide(states, "shop", retrain_all=True)
    assert [(d.service, d.retrain) for d in decisions] == [("a", True), ("b", True), ("c", False)]
    assert decisions[0].reason == "--retrain all"


def test_min_new_data_waits_for_enough_newer_rows() -> None:
    a_little = state(newest_row=T + timedelta(hours=3))
    a_day = state(service="db", newest_row=T + timedelta(hours=24))
    no_model = state(service="new", model_version=None, newest_row=T)
    decisions = decide([a_little, a_day, no_model], "shop", min_new_data=timedelta(hours=24))
    by_service = {d.service: d for d in decisions}
    assert not by_service["api"].retrain and "3h of new rows" in by_service["api"].reason
    assert "retrains after 1d" in by_service["api"].reason
    assert by_service["db"].retrain and by_service["new"].retrain
    assert by_service["api"].newest_row == "2026-03-01T15:00:00Z"
    assert by_service["api"].trained_through == "2026-03-01T12:00:00Z"


def test_min_new_data_parses_durations_and_zero() -> None:
    assert min_new_data("0") == timedelta(0)
    assert min_new_data("24h") == timedelta(hours=24)
    with pytest.raises(ValueError):
        min_new_data("soon")


def test_collection_resumes_from_the_newest_row_but_not_before_since() -> None:
    since = T - timedelta(days=7)
    assert resume_point(None, since) == (since, False)
    assert resume_point(T, since) == (T, True)
    assert resume_point(pd.Timestamp(T - timedelta(days=30)), since) == (since, True)


def test_trimming_the_checkpoint_requeries_from_the_resume_point() -> None:
    checkpoint = Checkpoint("shop", "api", "ns", 300, 10_000, "f")
    checkpoint.chunks = {
        "old": ChunkRecord(first=0, last=1_000, rows=4, missing_points=0, gaps=0),
        "holding": ChunkRecord(first=2_000, last=9_000, rows=20, missing_points=3, gaps=1),
        "after": ChunkRecord(first=10_000, last=12_000, rows=0, missing_points=7, gaps=1),
    }
    assert trim_checkpoint(checkpoint, 6_000)
    assert set(checkpoint.chunks) == {"old", "holding"}
    assert checkpoint.chunks["old"].last == 1_000  # before the resume point: untouched
    assert (checkpoint.chunks["holding"].first, checkpoint.chunks["holding"].last) == (2_000, 6_000)
    assert checkpoint.chunks["holding"].rows == 20  # the part still holds them
    assert not checkpoint.covers("holding", 6_000, 9_000)  # the collector queries the chunk again
    assert not trim_checkpoint(checkpoint, 6_000)  # idempotent


class PartStore:
    """The slice of ObjectStore that DatasetStore's listing and the timestamp reads use; counts reads."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.reads: list[str] = []

    def put(self, key: str, stamps: list[str]) -> None:
        buffer = io.BytesIO()
        frame = pd.DataFrame({"timestamp": pd.to_datetime(stamps, utc=True), "cpu_cores_value": 1.0})
        frame.to_parquet(buffer, engine="pyarrow")
        self.objects[key] = buffer.getvalue()

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(key for key in self.objects if key.startswith(prefix))

    def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        return sorted(
            {prefix + key[len(prefix) :].split(delimiter)[0] + delimiter for key in self.list_keys(prefix)}
        )

    def has_prefix(self, prefix: str) -> bool:
        return bool(self.list_keys(prefix))

    def get_bytes(self, key: str) -> bytes:
        self.reads.append(key)
        return self.objects[key]


def test_newest_rows_read_only_the_newest_collected_parts() -> None:
    store = PartStore()
    base = "datasets/shop/service="
    store.put(
        f"{base}api/part-20260101T000000Z-20260104T110500Z.parquet", ["2026-01-02T00:00", "2026-01-04T11:05"]
    )
    store.put(f"{base}api/part-20260104T111000Z-20260107T221500Z.parquet", ["2026-01-05T00:00"])
    store.put(f"{base}db/part-00000.parquet", ["2026-02-01T00:00", "2026-02-03T00:00"])  # imported
    store.put(f"{base}db/part-20260104T111000Z-20260107T221500Z.parquet", ["2026-01-05T00:00"])

    newest = newest_rows(store, "shop")  # type: ignore[arg-type]
    assert newest == {
        "api": pd.Timestamp("2026-01-05T00:00", tz="UTC"),
        "db": pd.Timestamp("2026-02-03T00:00", tz="UTC"),
    }
    # api's older part ends before the newest row found: not read; db's collected part ends before its
    # imported rows: not read either.
    assert store.reads == [
        f"{base}api/part-20260104T111000Z-20260107T221500Z.parquet",
        f"{base}db/part-00000.parquet",
    ]
    assert newest_rows(store, "other") == {}  # type: ignore[arg-type]
    assert newest_rows(store, "shop", ["db"]) == {"db": newest["db"]}  # type: ignore[arg-type]


def test_model_states_read_the_latest_manifest(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalBlobBackend(tmp_path / "blobs"))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text("{}")
    version = registry.publish(
        "api",
        bundle,
        metadata={
            "data_window": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-05T00:00:00+00:00"},
            "dataset": "shop",
        },
    )
    newest = {"api": pd.Timestamp("2026-01-06", tz="UTC"), "db": pd.Timestamp("2026-01-06", tz="UTC")}
    api, db = model_states(registry, ["api", "db"], newest)
    assert api == ServiceState(
        "api", newest["api"], version, pd.Timestamp("2026-01-05", tz="UTC"), "shop", None
    )
    assert db == ServiceState("db", newest["db"])
    decisions = decide([api, db], "shop")
    assert [d.retrain for d in decisions] == [True, True]
    assert decisions[0].model_version == version and decisions[1].reason == "no published model yet"


def test_the_retrain_step_is_the_fleet_job_with_this_cycles_run_id() -> None:
    args = build_parser().parse_args(
        ["--dataset", "shop", "--namespace", "ns", "--epochs", "3", "--no-tuned", "--backend", "local"]
    )
    fleet = retrain_parser().parse_args(retrain_argv(args, ["api", "db"], "cycle-x"))
    assert fleet.dataset == "shop" and fleet.services == "api,db" and fleet.run_id == "cycle-x"
    assert fleet.epochs == 3 and fleet.no_tuned and fleet.backend == "local" and fleet.max_calls == 3
