"""Building unified rows from Prometheus samples of one service and chunk."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mora_platform.collect.frame import build_chunk_frame, count_missing
from mora_platform.data import schema

STEP = 30
T0 = 1_767_571_200  # 2026-01-05T00:00:00Z


def _samples(values: dict[str, list[float]], start: int = T0) -> dict[str, list[tuple[float, float]]]:
    return {
        m: [(float(start + i * STEP), v) for i, v in enumerate(vs) if not math.isnan(v)]
        for m, vs in values.items()
    }


def _full(n: int, start: int = T0) -> dict[str, list[tuple[float, float]]]:
    rng = np.random.default_rng(0)
    return _samples(
        {
            "cpu_cores_value": list(rng.uniform(0.1, 0.5, n)),
            "mem_bytes_value": list(rng.uniform(1e8, 2e8, n)),
            "net_rx_bytes_value": [1000.0 * (i + 1) for i in range(n)],
            "net_tx_bytes_value": [500.0] * n,
            "pod_restarts_value": [0.0] * (n // 2) + [2.0] * (n - n // 2),
            "replica_count_value": [2.0] * n,
            "node_cpu_util_value": [30.0] * n,
            "node_mem_util_value": [60.0] * n,
        },
        start,
    )


def test_rows_have_the_unified_schema_and_context() -> None:
    chunk = build_chunk_frame(
        _full(10),
        service="cart",
        namespace="shop",
        scenario="collected",
        first=T0,
        last=T0 + 9 * STEP,
        step=STEP,
    )
    frame = chunk.frame
    assert list(frame.columns) == list(schema.UNIFIED_COLUMNS)
    assert len(frame) == 10 and chunk.missing_points == 0 and chunk.gaps == 0
    assert str(frame[schema.TIMESTAMP].dt.tz) == "UTC"
    assert frame[schema.TIMESTAMP].iloc[0] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert set(frame[schema.EXPERIMENT_ID]) == {"prometheus-shop-cart"}
    assert frame[schema.REPLICA_COUNT].dtype == np.int64 and set(frame[schema.REPLICA_COUNT]) == {2}
    assert (frame[schema.LOAD_USERS] == 0.0).all()
    assert all(frame[m].dtype == np.float64 for m in schema.METRIC_COLUMNS)
    # queried node utilisation wins over the data layer's fallback; the rest is derived
    assert (frame["node_cpu_util_value"] == 30.0).all()
    assert np.allclose(frame["processing_intensity_value"], frame["cpu_cores_value"])
    assert frame["service_stability_value"].iloc[5] == 1.0 / 3.0  # restart counter 0 -> 2
    assert not frame[list(schema.METRIC_COLUMNS)].isna().any().any()


def test_context_rows_feed_derived_metrics_but_are_dropped() -> None:
    samples = _full(12)
    first = T0 + 2 * STEP
    with_context = build_chunk_frame(
        samples, service="cart", namespace="shop", scenario="c", first=first, last=T0 + 11 * STEP, step=STEP
    ).frame
    assert len(with_context) == 10
    assert with_context[schema.TIMESTAMP].iloc[0] == pd.Timestamp(first, unit="s", tz="UTC")
    # the first returned row has a predecessor, so its network rate is a real difference (1.0), not 0
    assert with_context["network_activity_rate_value"].iloc[0] == 1.0


def test_missing_points_gaps_and_empty_metrics() -> None:
    values = {m: [1.0] * 10 for m in ("cpu_cores_value", "mem_bytes_value")}
    values["cpu_cores_value"][3] = math.nan
    values["mem_bytes_value"][3] = math.nan
    for i in (6, 7):
        values["cpu_cores_value"][i] = values["mem_bytes_value"][i] = math.nan
    samples = _samples(values)
    samples["net_rx_bytes_value"] = []
    chunk = build_chunk_frame(
        samples, service="s", namespace="n", scenario="c", first=T0, last=T0 + 9 * STEP, step=STEP
    )
    assert len(chunk.frame) == 7
    assert chunk.missing_points == 3 and chunk.gaps == 2
    assert chunk.empty_metrics == ["net_rx_bytes_value"]
    assert chunk.frame["net_rx_bytes_value"].isna().all()


def test_no_samples_at_all_gives_an_empty_frame() -> None:
    chunk = build_chunk_frame(
        {"cpu_cores_value": []},
        service="s",
        namespace="n",
        scenario="c",
        first=T0,
        last=T0 + 4 * STEP,
        step=STEP,
    )
    assert chunk.frame.empty and list(chunk.frame.columns) == list(schema.UNIFIED_COLUMNS)
    assert (chunk.missing_points, chunk.gaps) == (5, 1)


def test_count_missing_counts_runs() -> None:
    present = np.array([0, 30, 120, 150, 240])
    assert count_missing(present, 0, 270, 30) == (5, 3)
    assert count_missing(np.array([], dtype=np.int64), 0, 0, 30) == (1, 1)
