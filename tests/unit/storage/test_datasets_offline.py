"""DatasetStore rules that are checked before any request: names, keys, summaries."""

from __future__ import annotations

import pandas as pd
import pytest

from mora_platform.storage.datasets import DatasetStore, summarize
from mora_platform.storage.errors import DatasetNotFoundError, ServiceNotInDatasetError
from mora_platform.storage.object_store import ObjectStore


@pytest.fixture()
def datasets() -> DatasetStore:
    return DatasetStore(ObjectStore("http://127.0.0.1:1", "mora", "k", "s", max_attempts=1))


def test_keys_follow_the_hive_layout() -> None:
    assert DatasetStore.part_key("boutique", "frontend", "part-00000") == (
        "datasets/boutique/service=frontend/part-00000.parquet"
    )
    assert DatasetStore.service_prefix("b", "svc-01") == "datasets/b/service=svc-01/"


@pytest.mark.parametrize(
    ("name", "service", "part"),
    [
        ("", "web", "p"),
        ("a/b", "web", "p"),
        ("../x", "web", "p"),
        ("ok", "a/b", "p"),
        ("ok", " web", "p"),
        ("ok", "web", "p/q"),
    ],
)
def test_unsafe_names_are_refused(name: str, service: str, part: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        DatasetStore.part_key(name, service, part)


def test_write_refuses_frames_it_cannot_split(datasets: DatasetStore) -> None:
    with pytest.raises(ValueError, match="no 'service' column"):
        datasets.write("d", pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="empty"):
        datasets.write("d", pd.DataFrame({"service": pd.Series([], dtype=str)}))
    with pytest.raises(ValueError, match="1 row\\(s\\) have no service"):
        datasets.write("d", pd.DataFrame({"service": ["a", None]}))


def test_summarize_counts_rows_experiments_and_span() -> None:
    rows = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2026-01-02T00:00Z", "2026-01-01T00:00Z", "2026-01-03T00:00Z"]),
            "experiment_id": ["a", "a", "b"],
        }
    )
    summary = summarize("web", rows)
    assert (summary.rows, summary.experiments) == (3, 2)
    assert summary.start == pd.Timestamp("2026-01-01", tz="UTC")
    assert summary.end == pd.Timestamp("2026-01-03", tz="UTC")


def test_error_messages_name_the_dataset_and_service() -> None:
    assert "import it with `mora data import PATH --dataset boutique`" in str(
        DatasetNotFoundError("boutique")
    )
    message = str(ServiceNotInDatasetError("boutique", "db", ["web", "cart"]))
    assert message == "service 'db' not in dataset 'boutique' (services: web, cart)"
