"""Each baseline reproduces its definition on a hand-made series (percentile and margin by hand)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mora_platform.backtest.baselines import (
    REQUEST_QUANTA,
    VPA_MEMORY_MIN_BYTES,
    HistoryError,
    Recommender,
    create_recommender,
    finalize_requests,
    registered_recommenders,
)

ORIGIN = pd.Timestamp("2026-02-01T00:00:00Z")


def hourly(values: list[float] | np.ndarray, end: pd.Timestamp = ORIGIN) -> pd.Series:
    """Hourly samples ending one hour before ``end``."""
    index = pd.date_range(end=end - pd.Timedelta(hours=1), periods=len(values), freq="1h")
    return pd.Series(np.asarray(values, dtype=float), index=index)


def with_old_spike(series: pd.Series, age: pd.Timedelta, value: float) -> pd.Series:
    spike = pd.Series([value], index=[ORIGIN - age])
    return pd.concat([spike, series]).sort_index()


def exact(recommender: Recommender, history: pd.Series, resource: str) -> float:
    """The definition's request before rounding to whole millicores / MiB: max(base x margin, floor)."""
    base = recommender.suggest(history, resource, origin=ORIGIN).base
    margin, floor = recommender.margin_for(resource), recommender.floor(resource)
    return float(finalize_requests(np.array([base]), margin, floor, 0.0)[0])


def test_requests_are_rounded_up_to_whole_millicores_and_mib() -> None:
    history = hourly(np.full(24, 0.00056))  # 0.56 millicores, as some Online Boutique services use
    for name in ("krr", "crane", "max", "reactive"):
        recommender = create_recommender(name)
        assert exact(recommender, history, "cpu") < 0.001
        assert recommender.recommend(history, "cpu", origin=ORIGIN) == pytest.approx(0.001), name
        memory = recommender.recommend(hourly(np.full(24, 10.3 * 2**20)), "memory", origin=ORIGIN)
        assert memory % REQUEST_QUANTA["memory"] == 0 and memory >= 10.3 * 2**20, name


def vpa_bucket_end(value: float, first: float) -> float:
    """End of VPA's exponential bucket (ratio 1.05) holding ``value``, computed by hand."""
    index = math.floor(math.log(value * 0.05 / first + 1) / math.log(1.05))
    return first * (1.05 ** (index + 1) - 1) / 0.05


def test_registry_has_every_baseline() -> None:
    assert {"vpa", "krr", "crane", "max", "reactive"} <= set(registered_recommenders())
    with pytest.raises(ValueError, match="unknown recommender 'nope'"):
        create_recommender("nope")


def test_krr_cpu_p95_without_margin_and_memory_max_times_1_15_over_14_days() -> None:
    history = with_old_spike(hourly(np.arange(100.0)), pd.Timedelta(days=15), 1e6)
    krr = create_recommender("krr")
    # p95 of 0..99 by linear interpolation: position 0.95 * 99 = 94.05
    assert exact(krr, history, "cpu") == pytest.approx(94.05)
    assert exact(krr, history, "memory") == pytest.approx(99 * 1.15)


def test_crane_p99_times_1_15_over_7_days() -> None:
    history = with_old_spike(hourly(np.arange(100.0)), pd.Timedelta(days=8), 1e6)
    crane = create_recommender("crane")
    expected = (98 + 0.01) * 1.15  # position 0.99 * 99 = 98.01
    assert exact(crane, history, "cpu") == pytest.approx(expected)
    assert exact(crane, history, "memory") == pytest.approx(expected)


def test_max_times_1_15_over_14_days() -> None:
    history = with_old_spike(hourly([3.0, 7.0, 5.0]), pd.Timedelta(days=20), 100.0)
    assert exact(create_recommender("max"), history, "cpu") == pytest.approx(7 * 1.15)


def test_reactive_p95_of_last_hour_times_1_15() -> None:
    index = pd.date_range(end=ORIGIN - pd.Timedelta(minutes=1), periods=180, freq="1min")
    values = np.r_[np.full(120, 1000.0), np.arange(1.0, 61.0)]  # the last hour holds 1..60
    history = pd.Series(values, index=index)
    # p95 of 1..60: position 0.95 * 59 = 56.05 -> 57 + 0.05
    assert exact(create_recommender("reactive"), history, "cpu") == pytest.approx(57.05 * 1.15)


def test_vpa_cpu_is_end_of_p90_bucket_times_1_15() -> None:
    history = hourly(np.full(48, 0.5))
    expected = vpa_bucket_end(0.5, 0.01) * 1.15
    assert exact(create_recommender("vpa"), history, "cpu") == pytest.approx(expected)


def test_vpa_cpu_decay_halves_weight_every_24_hours() -> None:
    # 10 samples of 1.0 four days ago weigh 10 / 16; 10 recent samples of 0.1 weigh ~10: p90 falls on 0.1
    old = pd.Series(1.0, index=pd.date_range(end=ORIGIN - pd.Timedelta(days=4), periods=10, freq="1min"))
    recent = pd.Series(
        0.1, index=pd.date_range(end=ORIGIN - pd.Timedelta(minutes=1), periods=10, freq="1min")
    )
    history = pd.concat([old, recent])
    vpa = create_recommender("vpa")
    assert exact(vpa, history, "cpu") == pytest.approx(vpa_bucket_end(0.1, 0.01) * 1.15)
    # without decay (all samples recent) half the samples are 1.0 and p90 falls on 1.0
    flat = pd.Series(
        np.r_[np.full(10, 1.0), np.full(10, 0.1)],
        index=recent.index.append(
            pd.date_range(end=ORIGIN - pd.Timedelta(minutes=11), periods=10, freq="1min")
        ).sort_values(),
    )
    assert exact(vpa, flat, "cpu") == pytest.approx(vpa_bucket_end(1.0, 0.01) * 1.15)


def test_vpa_cpu_minimum_25_millicores() -> None:
    assert create_recommender("vpa").recommend(hourly(np.full(24, 0.001)), "cpu", origin=ORIGIN) == 0.025


def test_vpa_memory_uses_daily_peaks_not_every_sample() -> None:
    # two UTC days of 1 GB with one 4 GB spike on day 1 and a 1.5 GB spike on day 2:
    # peaks weigh ~0.5 (4 GB) and ~1 (1.5 GB); p90 of the peaks -> the 4 GB bucket
    values = np.full(48, 1e9)
    values[10] = 4e9
    values[30] = 1.5e9
    history = hourly(values)
    expected = vpa_bucket_end(4e9, 1e7) * 1.15
    assert exact(create_recommender("vpa"), history, "memory") == pytest.approx(expected)


def test_vpa_memory_minimum_250_mib() -> None:
    history = hourly(np.full(24, 5e6))
    assert exact(create_recommender("vpa"), history, "memory") == VPA_MEMORY_MIN_BYTES


def test_margin_override_scales_every_baseline() -> None:
    history = hourly(np.arange(1.0, 101.0))
    for name in ("krr", "crane", "max", "reactive"):
        base = exact(create_recommender(name, margin=1.0), history, "memory")
        doubled = exact(create_recommender(name, margin=2.0), history, "memory")
        assert doubled == pytest.approx(2 * base), name


def test_history_at_or_after_origin_is_refused() -> None:
    history = hourly([1.0, 2.0])
    with pytest.raises(HistoryError, match="look-ahead"):
        create_recommender("max").recommend(history, "cpu", origin=history.index[-1])
    with pytest.raises(HistoryError, match="empty"):
        create_recommender("max").recommend(pd.Series([np.nan], index=history.index[:1]), "cpu")
