"""Rolling origin: what each method sees, and no look-ahead."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from backtest_fixtures import daily_series

from mora_platform.backtest.baselines import Recommender, Suggestion, baseline_names, create_recommender
from mora_platform.backtest.engine import BacktestConfig, BacktestSeries, replay_series


class ProbeRecommender(Recommender):
    """Records the newest history timestamp it was shown at each origin; fails on request."""

    name = "probe"
    default_margins = {"cpu": 1.0, "memory": 1.0}

    def __init__(self, fail_after: pd.Timestamp | None = None) -> None:
        super().__init__()
        self.seen: list[tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp | None]] = []
        self.fail_after = fail_after

    def _suggest(self, history, resource, origin, horizon, frame):  # type: ignore[no-untyped-def]
        if self.fail_after is not None and origin > self.fail_after:
            raise RuntimeError("boom")
        newest_frame = None if frame is None or frame.empty else frame["timestamp"].max()
        self.seen.append((origin, history.index[-1], newest_frame))
        return Suggestion(base=float(history.iloc[-1]), forecast=float(history.iloc[-1]))


def baselines() -> list[Recommender]:
    return [create_recommender(n) for n in baseline_names()]


def test_origins_windows_and_history_cutoff(small_config: BacktestConfig) -> None:
    series = daily_series(days=3)
    series.frame = pd.DataFrame(
        {"timestamp": series.usage["cpu"].index, "cpu_cores_value": series.usage["cpu"].to_numpy()}
    )
    probe = ProbeRecommender()
    replay = replay_series(series, [probe], small_config)
    cpu = replay.resources["cpu"]
    start = series.usage["cpu"].index[0]
    assert cpu.origins[0] == start + pd.Timedelta(hours=24)
    assert ((cpu.origins[1:] - cpu.origins[:-1]) == pd.Timedelta(hours=2)).all()
    # each window holds the 6 ten-minute samples of [t, t + 1 h)
    assert np.bincount(cpu.window_ids).tolist() == [6] * len(cpu.origins)
    for origin, newest, newest_frame in probe.seen:
        assert newest < origin and newest == origin - pd.Timedelta(minutes=10)
        assert newest_frame is not None and newest_frame < origin


def test_no_method_anticipates_a_future_spike(small_config: BacktestConfig) -> None:
    calm = daily_series(days=4, seed=3)
    spiky = daily_series(days=4, seed=3)
    spike_at = calm.usage["cpu"].index[0] + pd.Timedelta(days=3, hours=1)
    for resource in ("cpu", "memory"):
        spiky.usage[resource] = spiky.usage[resource].copy()
        spiky.usage[resource].loc[spike_at] *= 1000.0
    a = replay_series(calm, [*baselines(), ProbeRecommender()], small_config)
    b = replay_series(spiky, [*baselines(), ProbeRecommender()], small_config)
    for resource in ("cpu", "memory"):
        origins = a.resources[resource].origins
        before = origins <= spike_at
        assert before.sum() > 5 and (~before).sum() > 5
        for name in a.resources[resource].traces:
            base_a = a.resources[resource].traces[name].base
            base_b = b.resources[resource].traces[name].base
            np.testing.assert_array_equal(
                base_a[before], base_b[before], err_msg=f"{name} {resource} saw the future"
            )
        # once the spike is in the past, the max rule does see it
        after = ~before
        assert (
            b.resources[resource].traces["max"].base[after][0]
            > 100 * a.resources[resource].traces["max"].base[after][0]
        )
        # and the spike is under-provisioned by everyone at the origin that holds it
        holding = np.flatnonzero(origins <= spike_at)[-1]
        for name, trace in b.resources[resource].traces.items():
            assert trace.requests()[holding] < spiky.usage[resource].loc[spike_at], name


def test_failing_method_is_isolated(small_config: BacktestConfig) -> None:
    series = daily_series(days=3)
    failing = ProbeRecommender(fail_after=series.usage["cpu"].index[0] + pd.Timedelta(hours=30))
    replay = replay_series(series, [failing, create_recommender("max")], small_config)
    trace = replay.resources["cpu"].traces["probe"]
    assert not trace.ok and "RuntimeError" in (trace.error or "") and "boom" in (trace.error or "")
    assert replay.resources["cpu"].traces["max"].ok
    assert np.isfinite(replay.resources["cpu"].traces["max"].base).all()
    assert any("probe" in e for e in replay.errors)


def test_too_short_series_is_reported(small_config: BacktestConfig) -> None:
    series = daily_series(days=0.5)
    replay = replay_series(series, baselines(), small_config)
    assert not replay.resources
    assert any("too short" in e for e in replay.errors)


def test_gaps_skip_origins_without_samples(small_config: BacktestConfig) -> None:
    series = daily_series(days=3)
    memory = series.usage["memory"]
    gap = (memory.index >= memory.index[0] + pd.Timedelta(hours=30)) & (
        memory.index < memory.index[0] + pd.Timedelta(hours=40)
    )
    series.usage["memory"] = memory[~gap]
    replay = replay_series(series, baselines(), small_config)
    assert len(replay.resources["memory"].origins) < len(replay.resources["cpu"].origins)
    assert all(np.isfinite(t.base).all() for t in replay.resources["memory"].traces.values())


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="positive"):
        BacktestConfig(step=pd.Timedelta(0))
    with pytest.raises(ValueError, match="margins"):
        BacktestConfig(margins=(0.0,))
    assert isinstance(BacktestSeries(name="x", usage={}), BacktestSeries)
