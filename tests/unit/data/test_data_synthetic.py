"""Synthetic fleet: determinism, daily cycle, restarts, HPA-like replicas, schema and speed."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from mora_platform.data.loaders import load_frame
from mora_platform.data.schema import METRIC_COLUMNS, STEP, UNIFIED_COLUMNS
from mora_platform.data.synthetic import generate_fleet

STEP_SECONDS = 60
DAY_STEPS = 86_400 // STEP_SECONDS


@pytest.fixture(scope="module")
def fleet() -> pd.DataFrame:
    return generate_fleet(4, 14, step_seconds=STEP_SECONDS, seed=11)


def autocorrelation(values: np.ndarray, lag: int) -> float:
    centred = values - values.mean()
    return float(np.dot(centred[:-lag], centred[lag:]) / np.dot(centred, centred))


def test_same_seed_same_frame_different_seed_different() -> None:
    first = generate_fleet(3, 2, step_seconds=120, seed=5)
    again = generate_fleet(3, 2, step_seconds=120, seed=5)
    other = generate_fleet(3, 2, step_seconds=120, seed=6)
    pd.testing.assert_frame_equal(first, again)
    assert first.shape == other.shape
    assert not np.allclose(first["cpu_cores_value"], other["cpu_cores_value"])


def test_a_service_does_not_depend_on_the_fleet_size() -> None:
    small = generate_fleet(2, 1, step_seconds=300, seed=9)
    large = generate_fleet(5, 1, step_seconds=300, seed=9)
    one = small[small["service"] == "svc-01"].reset_index(drop=True)
    same = large[large["service"] == "svc-01"].reset_index(drop=True)
    pd.testing.assert_frame_equal(one, same)


def test_daily_cycle_is_visible_in_cpu(fleet: pd.DataFrame) -> None:
    for service, group in fleet.groupby("service"):
        cpu = group["cpu_cores_value"].to_numpy()
        one_day = autocorrelation(cpu, DAY_STEPS)
        half_day = autocorrelation(cpu, DAY_STEPS // 2)
        assert one_day > 0.5, (service, one_day)
        assert one_day > half_day + 0.5, (service, one_day, half_day)


def test_weekends_are_quieter(fleet: pd.DataFrame) -> None:
    weekend = fleet["timestamp"].dt.dayofweek >= 5
    by_service = fleet.groupby([fleet["service"], weekend])["load_users"].mean().unstack()
    assert (by_service[True] < 0.9 * by_service[False]).all()


def test_memory_drops_at_restarts_and_the_counter_increments(fleet: pd.DataFrame) -> None:
    restarts_seen = 0
    for _, group in fleet.groupby("service"):
        counter = group["pod_restarts_value"].to_numpy()
        memory = group["mem_bytes_value"].to_numpy()
        replicas = group["replica_count"].to_numpy()
        increments = np.diff(counter)
        assert (increments >= 0).all()  # a cumulative counter
        assert np.allclose(counter, np.round(counter))
        at = np.flatnonzero(increments > 0) + 1
        assert at.size >= 1
        steady = at[replicas[at] == replicas[at - 1]]
        assert (memory[steady] < memory[steady - 1]).all()
        restarts_seen += steady.size
        # between restarts memory grows slowly: later in a restart cycle it is higher on average
        cycle_end = at[0] - 1
        if cycle_end > DAY_STEPS // 2 and (replicas[:cycle_end] == replicas[0]).all():
            assert memory[cycle_end - 10 : cycle_end].mean() > memory[:10].mean()
    assert restarts_seen >= 4


def test_replicas_are_integers_that_follow_load(fleet: pd.DataFrame) -> None:
    assert fleet["replica_count"].dtype == np.int64
    assert (fleet["replica_count"] >= 1).all()
    assert (fleet["replica_count_value"] == fleet["replica_count"]).all()
    for _, group in fleet.groupby("service"):
        assert group["replica_count"].nunique() > 1
        assert group["replica_count"].corr(group["cpu_cores_value"]) > 0.6


def test_schema_is_the_canonical_frame(fleet: pd.DataFrame) -> None:
    assert list(fleet.columns) == [*UNIFIED_COLUMNS, STEP]
    assert fleet[list(METRIC_COLUMNS)].notna().all().all()
    assert sorted(fleet["service"].unique()) == ["svc-00", "svc-01", "svc-02", "svc-03"]
    assert (fleet["experiment_id"] == "synthetic-" + fleet["service"]).all()
    assert fleet["scenario"].eq("synthetic").all()
    assert fleet["timestamp"].iloc[0] == pd.Timestamp("2026-01-05T00:00:00Z")
    assert fleet.groupby("service").size().eq(14 * DAY_STEPS).all()
    assert fleet["node_cpu_util_value"].between(0, 100).all()
    assert fleet["service_stability_value"].between(0, 1, inclusive="right").all()
    result = load_frame(fleet, clean=False)  # passes the loader's own validation unchanged
    assert result.issues == []
    pd.testing.assert_frame_equal(result.frame, fleet)


def test_generation_is_fast() -> None:
    started = time.perf_counter()
    fleet = generate_fleet(10, 14, step_seconds=30, seed=0)
    elapsed = time.perf_counter() - started
    assert len(fleet) == 10 * 14 * 2880
    assert elapsed < 5.0, f"{elapsed:.2f}s for 10 services x 14 days at 30 s"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n_services"):
        generate_fleet(0, 1)
    with pytest.raises(ValueError, match="need at least 2"):
        generate_fleet(1, 0.0001)
