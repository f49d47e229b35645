"""DatasetStore on the real S3 server: layout, idempotent parts, merging parts, clear errors."""

from __future__ import annotations

import secrets

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from mora_platform.storage.datasets import DatasetStore
from mora_platform.storage.errors import DatasetNotFoundError, ServiceNotInDatasetError
from mora_platform.storage.object_store import ObjectStore

pytestmark = pytest.mark.integration


def _frame(services: list[str], rows: int, *, start: str = "2026-01-01", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for service in services:
        for experiment in ("exp-a", "exp-b"):
            parts.append(
                pd.DataFrame(
                    {
                        "timestamp": pd.date_range(start, periods=rows, freq="30s", tz="UTC"),
                        "experiment_id": experiment,
                        "service": service,
                        "cpu_cores_value": rng.random(rows),
                        "step": np.arange(rows, dtype="int64"),
                    }
                )
            )
    # shuffled on purpose: the store sorts
    return pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture()
def datasets(object_store: ObjectStore) -> DatasetStore:
    return DatasetStore(object_store)


def test_write_lays_out_one_object_per_service_and_summarises(datasets: DatasetStore) -> None:
    name = "ds-" + secrets.token_hex(3)
    frame = _frame(["cart", "web"], rows=10)
    summaries = datasets.write(name, frame)

    assert [s.service for s in summaries] == ["cart", "web"]
    assert [s.rows for s in summaries] == [20, 20]
    assert [s.experiments for s in summaries] == [2, 2]
    assert summaries[0].start == pd.Timestamp("2026-01-01", tz="UTC")
    assert summaries[0].end == pd.Timestamp("2026-01-01 00:04:30", tz="UTC")
    assert datasets.store.list_keys(f"datasets/{name}/") == [
        f"datasets/{name}/service=cart/part-00000.parquet",
        f"datasets/{name}/service=web/part-00000.parquet",
    ]
    assert name in datasets.list_datasets()
    assert datasets.list_services(name) == ["cart", "web"]
    assert datasets.has_part(name, "web", "part-00000")
    assert not datasets.has_part(name, "web", "part-00001")

    expected = frame.sort_values(["service", "experiment_id", "timestamp"]).reset_index(drop=True)
    assert_frame_equal(datasets.read(name), expected)
    assert_frame_equal(
        datasets.read(name, "web"), expected[expected["service"] == "web"].reset_index(drop=True)
    )


def test_rewriting_a_part_replaces_it(datasets: DatasetStore) -> None:
    name = "ds-" + secrets.token_hex(3)
    datasets.write(name, _frame(["web"], rows=10, seed=1))
    second = _frame(["web"], rows=6, seed=2)
    datasets.write(name, second)
    assert datasets.list_parts(name, "web") == ["part-00000"]
    assert_frame_equal(
        datasets.read(name),
        second.sort_values(["service", "experiment_id", "timestamp"]).reset_index(drop=True),
    )


def test_parts_merge_and_the_later_part_wins_on_duplicates(datasets: DatasetStore) -> None:
    name = "ds-" + secrets.token_hex(3)
    first = _frame(["web"], rows=10, seed=3)
    overlap = _frame(["web"], rows=15, start="2026-01-01 00:03:00", seed=4)  # rows 6..9 overlap
    datasets.write(name, first, part="part-00000")
    datasets.write(name, overlap, part="part-00001")

    merged = datasets.read(name)
    assert len(merged) == 2 * (6 + 15)
    assert not merged.duplicated(["service", "experiment_id", "timestamp"]).any()
    assert merged["timestamp"].is_monotonic_increasing is False  # two experiments, each sorted
    for _, rows in merged.groupby("experiment_id"):
        assert rows["timestamp"].is_monotonic_increasing
    late = pd.Timestamp("2026-01-01 00:03:00", tz="UTC")
    got = merged[(merged["experiment_id"] == "exp-a") & (merged["timestamp"] == late)][
        "cpu_cores_value"
    ].item()
    want = overlap[(overlap["experiment_id"] == "exp-a") & (overlap["timestamp"] == late)][
        "cpu_cores_value"
    ].item()
    assert got == want


def test_missing_dataset_and_service_are_clear_errors(datasets: DatasetStore) -> None:
    name = "ds-" + secrets.token_hex(3)
    with pytest.raises(DatasetNotFoundError, match=f"dataset '{name}' not found"):
        datasets.read(name)
    with pytest.raises(DatasetNotFoundError):
        datasets.list_services(name)
    datasets.write(name, _frame(["web"], rows=3))
    with pytest.raises(ServiceNotInDatasetError, match=r"service 'db' not in dataset .* \(services: web\)"):
        datasets.read(name, "db")
    assert datasets.delete(name) == 1
    assert name not in datasets.list_datasets()
