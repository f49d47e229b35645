"""Workload states on the real S3 server: round trip, absent, damaged, beside the dataset's rows."""

from __future__ import annotations

import re
import secrets

import pandas as pd
import pytest

from mora_platform.recommend.workload import ContainerState, HpaState, WorkloadState
from mora_platform.storage.datasets import DatasetStore
from mora_platform.storage.object_store import ObjectStore
from mora_platform.storage.workloads import (
    WorkloadFormatError,
    list_workloads,
    read_workload,
    workload_key,
    write_workload,
)

pytestmark = pytest.mark.integration


def test_workload_round_trip_beside_the_dataset(object_store: ObjectStore) -> None:
    dataset = "wl-" + secrets.token_hex(3)
    datasets = DatasetStore(object_store)
    datasets.write(
        dataset,
        pd.DataFrame(
            {
                "timestamp": pd.date_range("2026-01-01", periods=3, freq="30s", tz="UTC"),
                "experiment_id": "e",
                "service": "cart",
                "cpu_cores_value": [0.1, 0.2, 0.3],
            }
        ),
    )
    state = WorkloadState(
        service="cart",
        namespace="shop",
        collected_at="2026-01-01T00:01:00Z",
        pods=3,
        replicas=3,
        containers=[
            ContainerState(name="app", cpu_request_cores=0.5, memory_request_bytes=2.0**28, cpu_share=0.8,
                           memory_share=0.75, oom_kills=1, oom_memory_bytes=3.29e8),
            ContainerState(name="proxy", cpu_limit_cores=0.2, memory_limit_bytes=2.0**27, cpu_share=0.2),
        ],
        hpa=HpaState(name="cart", min_replicas=2, max_replicas=6, target_cpu_utilization=0.7),
        missing=["memory limit of app: not set (no series)"],
    )  # fmt: skip

    assert read_workload(object_store, dataset, "cart") is None
    key = write_workload(object_store, dataset, state)
    assert key == f"datasets/{dataset}/_workloads/cart.json"
    assert read_workload(object_store, dataset, "cart") == state
    assert list_workloads(object_store, dataset) == ["cart"]
    # rewriting replaces; the dataset's rows and services are untouched by the JSON beside them
    write_workload(object_store, dataset, state.model_copy(update={"pods": 4}))
    again = read_workload(object_store, dataset, "cart")
    assert again is not None and again.pods == 4
    assert datasets.list_services(dataset) == ["cart"] and len(datasets.read(dataset)) == 3
    assert datasets.list_parts(dataset, "cart") == ["part-00000"]

    object_store.put_bytes(
        workload_key(dataset, "ads"), b'{"service": "ads", "containers": [{"name": "A_B"}]}'
    )
    with pytest.raises(WorkloadFormatError, match=re.escape(f"datasets/{dataset}/_workloads/ads.json")):
        read_workload(object_store, dataset, "ads")

    # deleting the dataset deletes its workload states too
    datasets.delete(dataset)
    assert read_workload(object_store, dataset, "cart") is None
