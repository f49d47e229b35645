"""Recent-residual head-room: holding windows, coverage on fresh data, the cheapest candidate wins."""

from __future__ import annotations

import numpy as np
import pytest

from mora_platform.models.recent import (
    RECENT_P95,
    RECENT_PEAK,
    RECENT_RULES,
    choose_recent,
    holding_windows,
    levels_before,
    like_now,
    rolling_peak,
    rolling_quantile,
    rule_predictions,
)


def test_holding_windows_pair_each_prediction_with_the_usage_it_must_cover() -> None:
    usage = np.arange(6.0)
    predicted = np.array([np.nan, 1.0, 2.0, 3.0, 4.0, 5.0])
    windows, starts = holding_windows(usage, predicted, 3)
    assert starts.tolist() == [1.0, 2.0, 3.0]  # row 0 has no prediction; rows 4, 5 no complete window
    assert windows.tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    with pytest.raises(ValueError, match="differ in shape"):
        holding_windows(usage, predicted[:3], 3)


def test_request_covers_each_held_step_with_the_promised_probability() -> None:
    rng = np.random.default_rng(0)
    level = 10.0
    usage = level + rng.normal(0, 1, 3_000)
    choice = choose_recent(usage, {"flat": (np.full(3_000, level), level)}, steps=12, coverage=0.95)
    assert choice is not None and choice.candidate == "flat" and choice.origins == 3_000 - 11
    fresh = level + np.random.default_rng(1).normal(0, 1, 20_000)
    assert abs(np.mean(fresh <= choice.request) - 0.95) < 0.01


def test_the_candidate_that_wastes_least_is_chosen_and_a_silent_one_never() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(2_000)
    usage = 10 + 3 * np.sin(2 * np.pi * t / 200) + rng.normal(0, 0.2, t.size)
    tracking = np.r_[np.nan, usage[:-1]]  # last value: follows the cycle
    flat = np.full(t.size, 10.0)  # ignores it: needs a head-room as wide as the cycle
    candidates = {"flat": (flat, 10.0), "tracking": (tracking, float(usage[-1]))}
    choice = choose_recent(usage, candidates, steps=4, coverage=0.95)
    assert choice is not None and choice.candidate == "tracking"
    assert choice.quantile < 2.0 < choose_recent(usage, {"flat": (flat, 10.0)}, 4, 0.95).quantile  # type: ignore[union-attr]
    # a candidate that cannot answer now, or has too few recent windows, is skipped
    assert choose_recent(usage, {"tracking": (tracking, float("nan"))}, 4, 0.95) is None
    assert choose_recent(usage[:30], {"flat": (flat[:30], 10.0)}, 4, 0.95) is None
    with pytest.raises(ValueError, match="coverage"):
        choose_recent(usage, candidates, 4, 1.5)


def test_relative_head_room_follows_the_level() -> None:
    """Noise proportional to the level: the relative head-room is narrow when the level is low."""
    rng = np.random.default_rng(5)
    level = np.where(np.arange(4_000) % 400 < 200, 2.0, 20.0)  # alternating quiet and busy periods
    usage = level * (1 + rng.normal(0, 0.05, level.size))
    candidates = {"level": (level, 2.0)}  # a perfect level forecast; now in a quiet period
    absolute = choose_recent(usage, candidates, steps=1, coverage=0.95)
    relative = choose_recent(usage, candidates, steps=1, coverage=0.95, relative=True)
    assert absolute is not None and relative is not None
    assert relative.request - 2.0 < 0.5 * (absolute.request - 2.0)
    quiet = 2.0 * (1 + np.random.default_rng(6).normal(0, 0.05, 10_000))
    assert abs(np.mean(quiet <= relative.request) - 0.95) < 0.02


def test_rolling_peak_sees_only_the_rows_before_each_row() -> None:
    values = np.array([1.0, 5.0, 2.0, 0.0, 3.0, 9.0])
    peak = rolling_peak(values, 2)
    assert np.isnan(peak[:2]).all()
    # row i: max of rows i-2 and i-1; row 5's own 9.0 is not in its prediction
    assert peak[2:].tolist() == [5.0, 5.0, 2.0, 3.0]
    assert np.isnan(rolling_peak(values, 6)).all()


def test_recent_peak_wins_on_plateaus_a_forecast_cannot_anticipate() -> None:
    """Usage that sits on plateaus and jumps between them (experiments, releases): a last-hour peak
    covers the next hold more cheaply than a forecast whose residuals carry every jump."""
    rng = np.random.default_rng(11)
    levels = rng.choice([1.0, 1.5, 3.0], size=60).repeat(80)
    usage = levels * (1 + rng.normal(0, 0.02, levels.size))
    peak = rolling_peak(usage, 200)
    slow = np.convolve(usage, np.ones(400) / 400, mode="full")[: usage.size]  # a lagging forecast
    choice = choose_recent(
        usage, {"recent-peak": (peak, float(usage[-200:].max())), "slow": (slow, float(slow[-1]))}, 20, 0.95
    )
    assert choice is not None and choice.candidate == "recent-peak"


def test_drift_guard_widens_the_head_room_when_the_last_windows_got_noisier() -> None:
    """A day of quiet usage, then the last 300 rows ten times noisier: calibrated on all rows the
    head-room is the quiet one; the drift guard also calibrates on the last windows alone."""
    rng = np.random.default_rng(12)
    usage = np.r_[10 + rng.normal(0, 0.1, 1_500), 10 + rng.normal(0, 1.0, 300)]
    flat = np.full(usage.size, 10.0)
    plain = choose_recent(usage, {"flat": (flat, 10.0)}, steps=1, coverage=0.95)
    guarded = choose_recent(usage, {"flat": (flat, 10.0)}, steps=1, coverage=0.95, drift_windows=240)
    assert plain is not None and guarded is not None
    noisy = 10 + np.random.default_rng(13).normal(0, 1.0, 20_000)  # what comes next
    assert np.mean(noisy <= plain.request) < 0.8
    assert abs(np.mean(noisy <= guarded.request) - 0.95) < 0.03
    # no drift: the guard changes little (the same quantile, up to sampling)
    quiet = 10 + rng.normal(0, 0.1, 1_800)
    a = choose_recent(quiet, {"flat": (flat, 10.0)}, 1, 0.95)
    b = choose_recent(quiet, {"flat": (flat, 10.0)}, 1, 0.95, drift_windows=240)
    assert a is not None and b is not None and b.quantile >= a.quantile and b.quantile - a.quantile < 0.05


def test_rolling_quantile_sees_only_the_rows_before_each_row() -> None:
    values = np.array([1.0, 5.0, 2.0, 0.0, 3.0, 9.0])
    p50 = rolling_quantile(values, 3, 0.5)
    assert np.isnan(p50[:3]).all()
    # row i: the median of rows i-3 .. i-1; row 5's own 9.0 is not in its prediction
    assert p50[3:].tolist() == [2.0, 2.0, 2.0]
    with_gap = rolling_quantile(np.array([1.0, np.nan, 2.0, 3.0, 4.0]), 2, 0.5)
    assert np.isnan(with_gap[:4]).all() and with_gap[4] == 2.5  # a window with a gap predicts nothing


def test_rules_name_a_statistic_and_a_window_and_answer_now() -> None:
    assert RECENT_RULES[RECENT_PEAK][0] == "max" and 0 < float(RECENT_RULES[RECENT_P95][0]) < 1
    values = np.arange(10.0)
    predicted, now = rule_predictions(values, "max", 4)
    assert now == 9.0 and predicted[4:].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    predicted, now = rule_predictions(values, 0.5, 4)
    assert now == 7.5 and predicted[4] == 1.5
    assert np.isnan(rule_predictions(values[:3], "max", 4)[1])  # too few rows to answer now


def test_a_percentile_rule_beats_the_peak_when_lone_spikes_would_set_the_peak() -> None:
    """Steady usage with a rare one-row spike: the last hour's maximum carries the spike for an hour
    after it; its 95th percentile does not, and at the same coverage it wastes less."""
    rng = np.random.default_rng(21)
    usage = 10 + rng.normal(0, 0.3, 3_000)
    usage[rng.choice(3_000, 15, replace=False)] += 8.0  # 0.5% of rows: under the 1% the request may miss
    window = 240
    offered = {
        name: rule_predictions(usage, RECENT_RULES[name][0], window) for name in (RECENT_PEAK, RECENT_P95)
    }
    both = choose_recent(usage, offered, steps=4, coverage=0.99)
    peak = choose_recent(usage, {RECENT_PEAK: offered[RECENT_PEAK]}, steps=4, coverage=0.99)
    assert both is not None and peak is not None
    assert both.candidate == RECENT_P95 and both.relative_cost < peak.relative_cost


def idle_and_busy(seed: int = 0) -> np.ndarray:
    """Six cycles of 200 idle rows (0.01) then 200 busy ones (1.0 with noise): each return from idle is
    a jump the rows before it never showed."""
    rng = np.random.default_rng(seed)
    cycle = np.r_[np.full(200, 0.01), 1.0 + 0.05 * rng.standard_normal(200)]
    return np.concatenate([cycle + 0.001 * rng.standard_normal(400) for _ in range(6)])


def test_levels_before_and_like_now_read_only_the_rows_before_each_window() -> None:
    usage = np.r_[np.full(8, 1.0), np.full(8, 10.0)]
    before = levels_before(usage, 4)
    assert np.isnan(before[:4]).all() and before[4:9].tolist() == [1.0] * 5 and before[12] == 10.0
    # now (the last four rows) is at 10: windows starting after four rows at 10 are like it, ones
    # starting at 1 are not, and one straddling the step (level 5.5) not within a factor 1.5 either
    like = like_now(usage, np.array([4, 10, 12]), steps=2, band=1.5)
    assert like.tolist() == [False, False, True]


def test_level_band_calibrates_on_windows_that_started_like_now() -> None:
    """Calibrated on every window, the head-room of a busy service carries the jumps out of idle spells
    (the residuals of windows that started idle); on the windows that started busy, like now, it does
    not, and it still covers the busy steps as promised. Asked while idle, the same band keeps those
    jumps: the request covers the load coming back."""
    usage = idle_and_busy()
    busy_now = usage[: 400 * 5 + 300]  # ends 100 rows into a busy stretch
    candidate = {"last": (np.r_[np.nan, busy_now[:-1]], float(busy_now[-1]))}
    plain = choose_recent(busy_now, candidate, steps=10, coverage=0.99)
    banded = choose_recent(busy_now, candidate, steps=10, coverage=0.99, level_band=3.0)
    assert plain is not None and banded is not None
    assert banded.quantile < 0.3 * plain.quantile  # the idle jumps no longer widen it
    # and it still covers the busy steps: the last cycle's busy rows, held 10 steps from the last value
    rows = np.arange(2_201, 2_390)
    held = usage[rows[:, None] + np.arange(10)[None, :]]
    assert np.mean(held <= (usage[rows - 1] + banded.quantile)[:, None]) >= 0.98
    idle_now = usage[: 400 * 5 + 150]  # 150 rows into an idle stretch
    asked_idle = {"last": (np.r_[np.nan, idle_now[:-1]], float(idle_now[-1]))}
    banded_idle = choose_recent(idle_now, asked_idle, steps=10, coverage=0.99, level_band=3.0)
    assert banded_idle is not None and banded_idle.request >= 0.9  # the return from idle is covered
