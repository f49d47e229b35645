"""DatasetStore.write checks every name before the first object (issue 14 item 7): no half-written dataset."""

from __future__ import annotations

import pandas as pd
import pytest

from mora_platform.data.validation import InvalidNameError
from mora_platform.storage.datasets import DatasetStore


class RecordingStore:
    """Stands in for the ObjectStore: remembers every key written."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def write_parquet(self, key: str, frame: pd.DataFrame) -> None:
        self.written.append(key)


def frame(services: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "service": services,
            "experiment_id": [f"e-{i}" for i in range(len(services))],
            "timestamp": pd.date_range("2026-01-01", periods=len(services), freq="30s", tz="UTC"),
        }
    )


@pytest.mark.parametrize("bad", ["a/b", "..", ".", "", "Web", "x_y", "service=.."])
def test_a_bad_service_name_writes_nothing(bad: str) -> None:
    store = RecordingStore()
    datasets = DatasetStore(store)  # type: ignore[arg-type]
    services = ["api", "cart", "db", "frontend", "web", bad]  # the bad one sorts anywhere among them
    with pytest.raises(InvalidNameError, match="invalid service name") as caught:
        datasets.write("shop", frame(services))
    assert repr(bad) in str(caught.value) and "dataset 'shop'" in str(caught.value)
    assert store.written == []


@pytest.mark.parametrize("bad", ["a/b", "..", "Shop", "shop_1", ""])
def test_a_bad_dataset_name_writes_nothing(bad: str) -> None:
    store = RecordingStore()
    with pytest.raises(ValueError, match="invalid dataset name"):
        DatasetStore(store).write(bad, frame(["web"]))  # type: ignore[arg-type]
    assert store.written == []


def test_good_names_are_written() -> None:
    store = RecordingStore()
    summaries = DatasetStore(store).write("shop.v2", frame(["web", "cart-1"]))  # type: ignore[arg-type]
    assert [s.service for s in summaries] == ["cart-1", "web"]
    assert store.written == [
        "datasets/shop.v2/service=cart-1/part-00000.parquet",
        "datasets/shop.v2/service=web/part-00000.parquet",
    ]


@pytest.mark.parametrize("bad", [".", "..", "a\\b"])
def test_read_keys_refuse_dot_names(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid service name"):
        DatasetStore.service_prefix("shop", bad)
