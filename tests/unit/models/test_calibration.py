"""Calibration: horizon peaks inside one experiment, horizon head-room, JSON round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mora_platform.models.calibration import (
    FUSED,
    Calibration,
    calibrate,
    forward_peak,
    horizon_actual,
)
from mora_platform.models.ensemble import EnsembleForecaster
from mora_platform.recommend.types import TARGETS


def test_forward_peak_stays_inside_each_experiment() -> None:
    values = pd.Series([1.0, 5.0, 2.0, 9.0, 3.0, 4.0])
    groups = pd.Series(["a", "a", "a", "b", "b", "b"])
    assert forward_peak(values, groups, 2).tolist() == [5.0, 5.0, 2.0, 9.0, 4.0, 4.0]
    assert forward_peak(values, groups, 1).tolist() == values.tolist()


def _noisy(seed: int, n: int = 20_000) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    actual = pd.DataFrame({t: 1.0 + rng.normal(0, 0.1, n) for t in TARGETS})
    predicted = pd.DataFrame({t: np.ones(n) for t in TARGETS})
    experiments = pd.Series(np.repeat(np.arange(n // 100), 100))
    return actual, predicted, experiments


def test_horizon_head_room_covers_the_peak_of_the_next_steps() -> None:
    actual, predicted, experiments = _noisy(0)
    one = calibrate(actual, {FUSED: predicted}, 0.95)
    held = calibrate(horizon_actual(actual, experiments, 12), {FUSED: predicted}, 0.95, horizon_steps=12)
    assert held.horizon_steps == 12 and one.horizon_steps == 1
    for t in TARGETS:
        assert held.modes[FUSED][t].quantile > one.modes[FUSED][t].quantile + 0.05
    # fresh data: the held request covers the 12-step peak about 95% of the time, the one-step one not
    fresh, _, _ = _noisy(1)
    peak = horizon_actual(fresh, experiments, 12)["cpu"].to_numpy()
    assert abs(np.mean(1.0 + held.modes[FUSED]["cpu"].quantile >= peak) - 0.95) < 0.03
    assert np.mean(1.0 + one.modes[FUSED]["cpu"].quantile >= peak) < 0.8


def test_calibration_round_trip_keeps_horizon_and_next_step() -> None:
    actual, predicted, experiments = _noisy(2, 400)
    held = calibrate(horizon_actual(actual, experiments, 5), {FUSED: predicted}, 0.9, horizon_steps=5)
    held.next_step = calibrate(actual, {FUSED: predicted}, 0.9).modes
    again = Calibration.from_dict(held.to_dict())
    assert again.horizon_steps == 5
    assert again.for_mode(FUSED)["cpu"].quantile == held.modes[FUSED]["cpu"].quantile
    assert again.for_mode("lstm", next_step=True)["cpu"].quantile == held.next_step[FUSED]["cpu"].quantile
    # files written before horizons existed are one-step calibrations
    legacy = held.to_dict()
    legacy.pop("horizon_steps"), legacy.pop("next_step")
    old = Calibration.from_dict(legacy)
    assert old.horizon_steps == 1 and old.for_mode(FUSED, next_step=True) == old.for_mode(FUSED)
    with pytest.raises(ValueError, match="horizon_steps"):
        Calibration.from_dict({**held.to_dict(), "horizon_steps": 0})


def test_choose_weights_over_three_members_finds_the_level() -> None:
    rng = np.random.default_rng(3)
    actual = pd.DataFrame({t: 5.0 + rng.normal(0, 0.1, 300) for t in TARGETS})
    predictions = {
        "prophet": actual + 1.0,
        "lstm": actual + 2.0,
        "naive": actual + rng.normal(0, 0.01, (300, len(TARGETS))),
    }
    ensemble = EnsembleForecaster({"prophet": None, "lstm": None, "naive": None})
    ensemble.choose_weights(actual, predictions)
    for t in TARGETS:
        assert ensemble.weights["naive"][t] >= 0.9
        assert sum(ensemble.weights[m][t] for m in predictions) == pytest.approx(1.0)


def test_relative_head_room_follows_the_level() -> None:
    """Noise proportional to the level: relative head-room covers ~95% at a low and a high level
    alike, while one absolute head-room over-covers the low one and under-covers the high one."""
    rng = np.random.default_rng(4)
    level = np.where(np.arange(20_000) % 2 == 0, 1.0, 10.0)
    actual = pd.DataFrame({t: level * (1 + rng.normal(0, 0.1, level.size)) for t in TARGETS})
    predicted = pd.DataFrame({t: level for t in TARGETS})
    relative = calibrate(actual, {FUSED: predicted}, 0.95, relative=True).modes[FUSED]["cpu"]
    absolute = calibrate(actual, {FUSED: predicted}, 0.95).modes[FUSED]["cpu"]
    assert relative.relative and relative.scale_floor > 0 and not absolute.relative
    y = actual["cpu"].to_numpy()
    for low in (True, False):
        rows = (level == 1.0) == low
        covered = np.mean(level[rows] + relative.head_room(level[rows]) >= y[rows])
        assert abs(covered - 0.95) < 0.02
        plain = np.mean(level[rows] + absolute.head_room(level[rows]) >= y[rows])
        assert (plain > 0.99) if low else (plain < 0.95)
    assert relative.request(2.0) == pytest.approx(2.0 * (1 + relative.quantile))
    assert (
        Calibration.from_dict(Calibration(0.95, {FUSED: dict.fromkeys(TARGETS, relative)}).to_dict()).modes[
            FUSED
        ]["cpu"]
        == relative
    )


def test_head_room_covers_the_usage_not_the_inflated_target() -> None:
    """Members forecast usage x 1.2; calibrated against the usage, the request is not inflated twice."""
    rng = np.random.default_rng(3)
    usage = pd.DataFrame({t: 1.0 + rng.normal(0, 0.05, 5_000) for t in TARGETS})
    target = usage * 1.2
    forecast = pd.DataFrame({t: np.full(5_000, 1.2) for t in TARGETS})  # perfect forecast of the target level
    on_target = calibrate(target, {FUSED: forecast}, 0.95).modes[FUSED]["cpu"]
    on_usage = calibrate(target, {FUSED: forecast}, 0.95, covered=usage).modes[FUSED]["cpu"]
    assert on_target.confidence == on_usage.confidence  # confidence still measures the forecast
    assert on_usage.quantile < 0 < on_target.quantile
    fresh = 1.0 + np.random.default_rng(4).normal(0, 0.05, 5_000)
    request = on_usage.request(1.2)
    assert abs(np.mean(fresh <= request) - 0.95) < 0.02  # covers the usage as promised
    assert request < 1.2  # and less than the target forecast itself
