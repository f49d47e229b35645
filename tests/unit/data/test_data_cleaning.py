"""Cleaning: imputation, collection gaps, outlier bounds, counters and the derived metrics of the seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mora_platform.data.cleaning import (
    CLIPPED_METRICS,
    add_derived_metrics,
    clean_frame,
    outlier_bounds,
    restart_increments,
)
from mora_platform.data.loaders import LoadResult, load_frame
from mora_platform.data.schema import DERIVED_METRICS, METRIC_COLUMNS


def series_frame(experiments: dict[str, int], service: str = "svc") -> pd.DataFrame:
    """A canonical frame of a few experiments with smooth, valid values (seeded)."""
    rng = np.random.default_rng(7)
    rows = []
    for experiment, length in experiments.items():
        for step in range(length):
            rows.append(
                {
                    "timestamp": f"t_{step}",
                    "experiment_id": experiment,
                    "service": service,
                    "scenario": "steady",
                    "replica_count": 2,
                    "load_users": 10.0,
                    "cpu_cores_value": 0.1 + 0.01 * rng.random(),
                    "mem_bytes_value": 2e8 + 1e6 * rng.random(),
                    "net_rx_bytes_value": 100.0 + rng.random(),
                    "net_tx_bytes_value": 1e7 + 1e4 * rng.random(),
                    "pod_restarts_value": 0.0,
                    "replica_count_value": 2.0,
                    "node_cpu_util_value": 20.0 + rng.random(),
                    "node_mem_util_value": 50.0 + rng.random(),
                }
            )
    return load_frame(pd.DataFrame(rows), clean=False).frame


def test_median_imputation_per_experiment_then_per_service() -> None:
    frame = series_frame({"a": 30, "b": 30})
    in_a = frame.index[frame["experiment_id"] == "a"]
    in_b = frame.index[frame["experiment_id"] == "b"]
    frame.loc[in_a[[3, 10]], "cpu_cores_value"] = np.nan
    frame.loc[in_b, "node_cpu_util_value"] = np.nan  # a whole experiment without node data
    expected_cpu = frame.loc[in_a, "cpu_cores_value"].median()
    expected_node = frame.loc[in_a, "node_cpu_util_value"].median()  # the service's median = a's values
    cleaned = clean_frame(frame)
    assert cleaned[list(METRIC_COLUMNS)].notna().all().all()
    assert cleaned.loc[in_a[[3, 10]], "cpu_cores_value"].tolist() == pytest.approx([expected_cpu] * 2)
    assert cleaned.loc[in_b, "node_cpu_util_value"].tolist() == pytest.approx([expected_node] * 30)


def test_memory_zero_is_a_gap_and_imputed() -> None:
    frame = series_frame({"a": 30})
    frame.loc[5, ["mem_bytes_value", "net_tx_bytes_value"]] = 0.0
    cleaned = clean_frame(frame)
    assert cleaned.loc[5, "mem_bytes_value"] == pytest.approx(frame["mem_bytes_value"].drop(5).median())
    assert cleaned.loc[5, "net_tx_bytes_value"] > 0
    assert 0.0 <= cleaned.loc[5, "resource_pressure_value"] <= 1.0


def test_outliers_clipped_but_bursts_kept() -> None:
    frame = series_frame({"a": 40})
    frame.loc[10, "cpu_cores_value"] = 1.0  # a 10x burst: real, must stay
    frame.loc[20, "mem_bytes_value"] = 1e15  # a glitch no container produces
    bound = outlier_bounds(frame).loc["svc", "mem_bytes_value"]
    cleaned = clean_frame(frame)
    assert cleaned.loc[10, "cpu_cores_value"] == pytest.approx(1.0)
    assert cleaned.loc[20, "mem_bytes_value"] == pytest.approx(bound)
    assert bound < 1e11


def test_real_bursts_in_the_shared_data_survive(shared_raw: LoadResult, shared_clean: pd.DataFrame) -> None:
    raw = shared_raw.frame
    for column in CLIPPED_METRICS:
        assert shared_clean[column].max() == pytest.approx(raw[column].max()), column
    assert (shared_clean.groupby("service")["cpu_cores_value"].max()).equals(
        raw.groupby("service")["cpu_cores_value"].max()
    )


def test_restart_counter_increments_handle_resets() -> None:
    frame = series_frame({"a": 6, "b": 3})
    frame["pod_restarts_value"] = [3.0, 3.0, 5.0, 0.0, 1.0, 1.0, 7.0, 8.0, 8.0]
    assert restart_increments(frame).tolist() == [0.0, 0.0, 2.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    derived = add_derived_metrics(frame.drop(columns=["service_stability_value"]))
    assert derived["service_stability_value"].tolist() == pytest.approx(
        [1.0, 1.0, 1 / 3, 1.0, 0.5, 1.0, 1.0, 0.5, 1.0]
    )


def test_counter_gaps_are_filled_forward_not_with_a_median() -> None:
    frame = series_frame({"a": 6})
    frame["pod_restarts_value"] = [np.nan, 2.0, np.nan, np.nan, 4.0, np.nan]
    cleaned = clean_frame(frame)
    assert cleaned["pod_restarts_value"].tolist() == [2.0, 2.0, 2.0, 2.0, 4.0, 4.0]


def test_implausible_derived_values_are_recomputed() -> None:
    frame = series_frame({"a": 30})
    frame["pod_restarts_value"] = 1.0
    frame.loc[7, "service_stability_value"] = np.inf
    frame.loc[8, "service_stability_value"] = -0.5
    frame.loc[9, "node_cpu_util_value"] = -175.0
    cleaned = clean_frame(frame)
    assert cleaned.loc[[7, 8], "service_stability_value"].tolist() == [1.0, 1.0]
    assert 0.0 <= cleaned.loc[9, "node_cpu_util_value"] <= 100.0
    assert np.isfinite(cleaned[list(METRIC_COLUMNS)].to_numpy()).all()


def test_derived_metrics_match_the_shipped_values(shared_raw: LoadResult) -> None:
    raw = shared_raw.frame
    computed = add_derived_metrics(raw.drop(columns=list(DERIVED_METRICS)))
    counter_dropped = raw.groupby("experiment_id")["pod_restarts_value"].diff() < 0
    checks = {
        "processing_intensity_value": raw["processing_intensity_value"].notna(),
        "network_activity_rate_value": raw["network_activity_rate_value"].notna(),
        "resource_pressure_value": raw["resource_pressure_value"].notna(),
        # the seed divided by the raw counter difference; it agrees wherever the counter did not drop
        "service_stability_value": np.isfinite(raw["service_stability_value"]) & ~counter_dropped,
    }
    for column, usable in checks.items():
        assert usable.sum() > 0.75 * len(raw), column  # most rows carry the shipped value
        np.testing.assert_allclose(
            computed.loc[usable, column], raw.loc[usable, column], rtol=1e-9, atol=1e-12, err_msg=column
        )


def test_derived_metrics_never_overwrite_present_values() -> None:
    frame = series_frame({"a": 5})
    frame["processing_intensity_value"] = 42.0
    frame.loc[2, "processing_intensity_value"] = np.nan
    derived = add_derived_metrics(frame)
    assert derived["processing_intensity_value"].tolist() == pytest.approx(
        [42.0, 42.0, frame.loc[2, "cpu_cores_value"], 42.0, 42.0]
    )


def test_network_activity_rate_may_be_negative_and_starts_at_zero() -> None:
    frame = series_frame({"a": 4})
    frame["net_rx_bytes_value"] = [3000.0, 1000.0, 4000.0, 4000.0]
    derived = add_derived_metrics(frame.drop(columns=["network_activity_rate_value"]))
    assert derived["network_activity_rate_value"].tolist() == pytest.approx([0.0, -2.0, 3.0, 0.0])
