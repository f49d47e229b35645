"""Synthetic presets: each shows its feature, is deterministic per seed, and keeps the canonical frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mora_platform.data.loaders import load_frame
from mora_platform.data.schema import CPU_BUSIEST_POD, MEM_BUSIEST_POD, POD_COLUMNS, STEP, UNIFIED_COLUMNS
from mora_platform.data.synthetic import PRESETS, generate_fleet, preset_names

STEP_SECONDS = 300
HOUR_STEPS = 3600 // STEP_SECONDS
DAY_STEPS = 24 * HOUR_STEPS
SEEDS = (0, 1, 2)


def fleet(preset: str | None, days: float = 14, seed: int = 0, n: int = 3) -> pd.DataFrame:
    return generate_fleet(n, days, step_seconds=STEP_SECONDS, seed=seed, preset=preset)


def per_service(frame: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    return {str(s): g[column].to_numpy() for s, g in frame.groupby("service")}


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2], strict=True))


@pytest.mark.parametrize("preset", preset_names())
def test_each_preset_is_deterministic_per_seed_and_canonical(preset: str) -> None:
    first = fleet(preset, days=3, seed=4, n=2)
    again = fleet(preset, days=3, seed=4, n=2)
    other = fleet(preset, days=3, seed=5, n=2)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["cpu_cores_value"], other["cpu_cores_value"])
    assert list(first.columns) == [*UNIFIED_COLUMNS, STEP, *POD_COLUMNS]
    assert (first["experiment_id"] == f"{preset}-" + first["service"]).all()
    assert (first["cpu_cores_value"] > 0).all()
    # a service does not depend on the fleet's size
    larger = fleet(preset, days=3, seed=4, n=3)
    pd.testing.assert_frame_equal(
        first[first["service"] == "svc-01"].reset_index(drop=True),
        larger[larger["service"] == "svc-01"].reset_index(drop=True),
    )
    assert load_frame(first, clean=False).issues == [] or preset == "cpu-only"


def test_presets_are_registered_and_unknown_names_refused() -> None:
    assert preset_names() == tuple(PRESETS)
    assert set(PRESETS) >= {
        "regime-shift",
        "flash-crowd",
        "slow-drift",
        "idle-periods",
        "heavy-tailed-bursts",
        "weekly-change",
        "memory-leak",
        "cpu-only",
    }
    with pytest.raises(ValueError, match="unknown preset"):
        generate_fleet(1, 1, preset="nope")


@pytest.mark.parametrize("seed", SEEDS)
def test_regime_shift_changes_the_level_for_good(seed: int) -> None:
    # 10 days from a Monday: days 0-2 and 7-9 are both Monday to Wednesday; the shift is in days 4-6
    frame = fleet("regime-shift", days=10, seed=seed)
    for service, cpu in per_service(frame, "cpu_cores_value").items():
        before, after = cpu[: 3 * DAY_STEPS].mean(), cpu[7 * DAY_STEPS :].mean()
        ratio = after / before
        assert ratio >= 1.6 or ratio <= 1 / 1.6, (service, ratio)
    load = per_service(frame, "load_users")
    plain = per_service(fleet(None, days=10, seed=seed), "load_users")
    for service, values in load.items():
        factor = values / plain[service]
        assert np.allclose(factor[: 4 * DAY_STEPS], 1.0)  # nothing changes before the shift
        assert np.unique(np.round(factor, 9)).size == 2  # one step, held to the end


@pytest.mark.parametrize("seed", SEEDS)
def test_flash_crowds_are_large_and_short(seed: int) -> None:
    frame, plain = fleet("flash-crowd", seed=seed), fleet(None, seed=seed)
    for service, values in per_service(frame, "load_users").items():
        ratio = values / per_service(plain, "load_users")[service]
        assert ratio.min() >= 1.0 - 1e-9
        assert ratio.max() >= 4.0, service  # at least 4x the usual load
        crowds = runs(ratio >= 2.0)
        assert crowds
        assert all(end - start <= 3 * HOUR_STEPS for start, end in crowds)  # bounded in time
        assert np.mean(ratio > 1.01) < 0.15  # rare
        cpu = per_service(frame, "cpu_cores_value")[service]
        assert cpu.max() > 2.5 * np.median(cpu)


@pytest.mark.parametrize("seed", SEEDS)
def test_slow_drift_changes_the_level_week_over_week(seed: int) -> None:
    frame = fleet("slow-drift", seed=seed)
    for service, load in per_service(frame, "load_users").items():
        daily = load.reshape(14, DAY_STEPS).mean(axis=1)
        week_over_week = daily[7:] / daily[:7]  # the same weekday, a week later
        assert (week_over_week > 1.0).all() or (week_over_week < 1.0).all(), (service, week_over_week)
        assert abs(np.log(week_over_week).mean()) >= np.log(1.15)
        steps = np.abs(np.diff(np.log(daily[:5])))  # weekdays: no jump from one day to the next
        assert steps.max() < np.log(1.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_idle_periods_are_long_and_near_zero(seed: int) -> None:
    frame = fleet("idle-periods", seed=seed)
    for service, group in frame.groupby("service"):
        cpu = group["cpu_cores_value"].to_numpy()
        threshold = 0.03
        idle = runs(cpu <= threshold)
        longest = max((end - start for start, end in idle), default=0)
        assert longest >= 6 * HOUR_STEPS - 2, service  # a stretch of hours, not a dip
        active = cpu[cpu > threshold]
        assert np.median(active) > 4 * threshold
        start, end = max(idle, key=lambda r: r[1] - r[0])
        replicas = group["replica_count"].to_numpy()
        assert replicas[start + 2 : end].max() == replicas.min()  # scaled in while idle
        load = group["load_users"].to_numpy()
        assert np.median(load[start:end]) < 0.01 * np.median(load[cpu > threshold])  # no traffic
        assert np.mean(cpu <= threshold) < 0.6


@pytest.mark.parametrize("seed", SEEDS)
def test_heavy_tailed_bursts_have_a_few_far_above_the_rest(seed: int) -> None:
    frame, plain = fleet("heavy-tailed-bursts", seed=seed), fleet(None, seed=seed)
    for service, values in per_service(frame, "load_users").items():
        ratio = values / per_service(plain, "load_users")[service]
        assert ratio.min() >= 1.0 - 1e-9
        bursts = runs(ratio > 1.01)
        assert len(bursts) >= 20, service
        peaks = np.array([ratio[start:end].max() - 1.0 for start, end in bursts])
        assert peaks.max() >= 5 * np.median(peaks), (service, peaks.max(), np.median(peaks))
        assert ratio.max() >= 3.0


@pytest.mark.parametrize("seed", SEEDS)
def test_weekly_change_moves_the_daily_peak(seed: int) -> None:
    frame = fleet("weekly-change", days=28, seed=seed)
    plain = fleet(None, days=28, seed=seed)
    for service, load in per_service(frame, "load_users").items():
        hourly = load.reshape(28, 24, HOUR_STEPS).mean(axis=2)
        first, last = np.median(hourly[:7], axis=0), np.median(hourly[-7:], axis=0)
        moved = abs(int(first.argmax()) - int(last.argmax()))
        assert min(moved, 24 - moved) >= 3, (service, first.argmax(), last.argmax())
        ratio = load / per_service(plain, "load_users")[service]
        assert np.allclose(ratio[: 9 * DAY_STEPS], 1.0)  # the old pattern until the change


@pytest.mark.parametrize("seed", SEEDS)
def test_memory_leak_saw_tooth_resets_at_restarts(seed: int) -> None:
    days = 7
    frame = fleet("memory-leak", days=days, seed=seed)
    for service, group in frame.groupby("service"):
        counter = group["pod_restarts_value"].to_numpy()
        memory = group["mem_bytes_value"].to_numpy() / group["replica_count"].to_numpy()
        increments = np.diff(counter)
        assert (increments >= 0).all()
        at = np.flatnonzero(increments > 0) + 1
        assert at.size >= days, service  # at least one restart a day
        drops = 1.0 - memory[at] / memory[at - 1]
        assert np.median(drops) >= 0.3, (service, np.median(drops))
        # between restarts the memory per pod climbs
        start, end = at[0], at[1]
        assert memory[end - 3 : end].mean() > 1.5 * memory[start : start + 3].mean()


def test_cpu_only_has_no_memory() -> None:
    frame = fleet("cpu-only", days=3)
    assert frame["mem_bytes_value"].isna().all()
    assert frame[MEM_BUSIEST_POD].isna().all()
    assert frame["cpu_cores_value"].notna().all() and frame[CPU_BUSIEST_POD].notna().all()
    assert frame["node_mem_util_value"].between(0, 100).all()
    plain = fleet(None, days=3)
    np.testing.assert_allclose(frame["cpu_cores_value"], plain["cpu_cores_value"])


def test_busiest_pod_is_skewed_and_never_above_the_total() -> None:
    frame = fleet("regime-shift", days=3)
    for total, busiest in (("cpu_cores_value", CPU_BUSIEST_POD), ("mem_bytes_value", MEM_BUSIEST_POD)):
        spread = frame[total] / frame["replica_count_value"]
        assert (frame[busiest] >= spread - 1e-9).all()
        assert (frame[busiest] <= frame[total] + 1e-9).all()
        many = frame["replica_count"] > 1
        assert (frame.loc[many, busiest] > frame.loc[many, total] / frame.loc[many, "replica_count"]).all()
        one = frame["replica_count"] == 1
        np.testing.assert_allclose(frame.loc[one, busiest], frame.loc[one, total])
    assert list(fleet(None, days=1).columns) == [*UNIFIED_COLUMNS, STEP]
    with_pods = generate_fleet(1, 1, step_seconds=STEP_SECONDS, busiest_pod=True)
    assert set(POD_COLUMNS) <= set(with_pods.columns)
