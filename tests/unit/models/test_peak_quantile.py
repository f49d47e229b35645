"""The peak-quantile candidate: it forecasts the usage over the held steps at the asked quantile, round
trips through JSON, never reads across experiments, and the recent choice can pick it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from peak_frames import HORIZON, STEP_SECONDS, held_usage, spiked_frame, split
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import EXPERIMENT_ID, TIMESTAMP
from mora_platform.features.split import split_frame
from mora_platform.features.targets import POD_CPU, POD_MEMORY, prepare_frame
from mora_platform.models.base import ModelLoadError
from mora_platform.models.peak import (
    PEAK_FILE,
    PeakQuantileConfig,
    PeakQuantileModel,
)
from mora_platform.models.peak_features import (
    Windows,
    epoch_index,
    feature_names,
    forward_windows,
    peak_features,
    solve_quantile_regression,
)
from mora_platform.models.recent import (
    PEAK_QUANTILE,
    RECENT_CANDIDATES,
    RECENT_PEAK,
    choose_recent,
    rolling_peak,
)


@pytest.fixture(scope="module")
def prepared() -> pd.DataFrame:
    return spiked_frame()


REGRESSION = PeakQuantileConfig(lstm=False)  # the linear regression alone (the default)


@pytest.fixture(scope="module")
def fused(prepared: pd.DataFrame) -> PeakQuantileModel:
    """The regression and its sequence head, fused at half each whatever weight validation gave the
    head (a few epochs: these tests are about what the fused forecast reads and keeps)."""
    train, validation, _ = split(prepared)
    model = PeakQuantileModel.fit(
        prepared,
        train,
        validation,
        horizon_steps=HORIZON,
        coverage=0.95,
        config=PeakQuantileConfig(lstm=True, lstm_epochs=4),
    )
    for fitted in model.targets.values():
        assert fitted.head is not None
        fitted.lstm_weight = 0.5
    return model


@pytest.mark.parametrize("quantile", [0.8, 0.95])
def test_forecast_covers_each_held_step_at_about_the_asked_quantile_out_of_sample(
    prepared: pd.DataFrame, quantile: float
) -> None:
    train, validation, test = split(prepared)
    model = PeakQuantileModel.fit(
        prepared,
        train,
        validation,
        horizon_steps=HORIZON,
        coverage=0.95,
        config=PeakQuantileConfig(quantile=quantile, draws=8, lstm=False),
        targets=("cpu",),
    )
    assert model.features == feature_names({"seasonal": True, "time_of_day": True})
    assert model.windows == Windows(HORIZON, 12, 288)
    predicted = model.predict(prepared)["cpu"].to_numpy()
    values = prepared[POD_CPU].to_numpy()
    rows, usage = held_usage(values, np.flatnonzero(test), HORIZON)
    covered = float(np.mean(usage <= predicted[rows, None]))
    assert abs(covered - quantile) < 0.05
    # it saw the spike coming: ahead of 14:00 it forecasts far more than at night
    stamps = pd.to_datetime(prepared[TIMESTAMP], utc=True)
    before_spike = (stamps.dt.hour == 13) & (stamps.dt.minute == 45)
    night = (stamps.dt.hour == 3) & (stamps.dt.minute == 0)
    assert predicted[(before_spike & test).to_numpy()].min() > 2 * predicted[(night & test).to_numpy()].max()


def test_peak_target_covers_the_peak_over_the_held_steps(prepared: pd.DataFrame) -> None:
    train, validation, test = split(prepared)
    model = PeakQuantileModel.fit(
        prepared,
        train,
        validation,
        horizon_steps=HORIZON,
        coverage=0.95,
        config=PeakQuantileConfig(quantile=0.9, target="peak", lstm=False),
        targets=("cpu",),
    )
    predicted = model.predict(prepared)["cpu"].to_numpy()
    peak = forward_windows(prepared[POD_CPU].to_numpy(), prepared[EXPERIMENT_ID].to_numpy(), HORIZON)
    ok = test & np.isfinite(peak)
    assert abs(float(np.mean(peak[ok] <= predicted[ok])) - 0.9) < 0.06
    # the training-time head-room covers the peak on validation with the promised probability
    head = model.targets["cpu"].head_room
    assert head is not None and head.n > 100 and head.source == "validation"
    requests = predicted + head.quantile
    assert float(np.mean(peak[ok] <= requests[ok])) >= 0.9
    assert model.validation_request("cpu", 2.0) == pytest.approx(2.0 + head.quantile)


def test_save_and_load_give_identical_predictions(
    prepared: pd.DataFrame, fused: PeakQuantileModel, tmp_path: Path
) -> None:
    train = split(prepared)[0]
    model = fused
    assert set(model.targets) == {"cpu", "memory"}
    assert model.save(tmp_path) == PEAK_FILE
    heads = [f"peak_lstm_{t}.keras" for t, m in model.targets.items() if m.lstm_weight > 0]
    assert heads and model.file_names() == [PEAK_FILE, *heads]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(model.file_names())
    assert json.loads((tmp_path / PEAK_FILE).read_text())["kind"] == PEAK_QUANTILE  # plain JSON
    loaded = PeakQuantileModel.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.predict(prepared), model.predict(prepared))
    assert loaded.forecast_next(prepared) == model.forecast_next(prepared)
    assert loaded.train_until == model.train_until and loaded.data_end == model.data_end
    np.testing.assert_array_equal(loaded.unseen(prepared), model.unseen(prepared))
    assert not model.unseen(prepared)[train].any() and model.unseen(prepared)[~train].all()
    # a damaged file is refused by name
    data = json.loads((tmp_path / PEAK_FILE).read_text())
    data["targets"]["cpu"]["coefficients"] = data["targets"]["cpu"]["coefficients"][:-1]
    (tmp_path / PEAK_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=PEAK_FILE):
        PeakQuantileModel.load(tmp_path)


def test_forecasting_only_the_last_rows_gives_those_rows_the_same_forecast(
    prepared: pd.DataFrame, fused: PeakQuantileModel
) -> None:
    whole = fused.predict(prepared)
    last = fused.predict(prepared, last=500)
    pd.testing.assert_frame_equal(last.tail(500), whole.tail(500))
    assert last.iloc[:-500].isna().all().all() and whole.iloc[:-500].notna().any().all()


def test_forecast_next_is_the_forecast_for_the_row_after_the_history(
    prepared: pd.DataFrame, fused: PeakQuantileModel
) -> None:
    model = fused
    predicted = model.predict(prepared)
    for cut in (2_000, 2_500):
        now = model.forecast_next(prepared.iloc[:cut])
        for target in ("cpu", "memory"):
            assert now[target] == pytest.approx(predicted[target].iloc[cut], rel=1e-9)


def test_no_window_spans_two_experiments() -> None:
    """Features read the rows before a row in its own experiment only, targets the rows after it in
    its own experiment only: a second experiment at a hundred times the level changes nothing."""
    frame = synthetic_service_frame(days=6.0, step_seconds=STEP_SECONDS, seed=8, experiments=2)
    prepared = prepare_frame(frame)
    experiments = prepared[EXPERIMENT_ID].to_numpy()
    second = experiments == experiments[-1]
    boundary = int(np.flatnonzero(second)[0])
    train, validation, _ = split(prepared)
    model = PeakQuantileModel.fit(
        prepared,
        train,
        validation,
        horizon_steps=HORIZON,
        coverage=0.95,
        config=PeakQuantileConfig(lstm=True, lstm_epochs=3),
    )
    alone = model.predict(prepared[second].reset_index(drop=True))
    together = model.predict(prepared)
    np.testing.assert_allclose(together[second].to_numpy(), alone.to_numpy(), equal_nan=True)
    # the first rows of an experiment have too little of their own history to be forecast
    assert together.iloc[boundary : boundary + model.config.min_rows].isna().all().all()
    # scaling the first experiment's usage by 100 leaves the second's forecasts as they were
    louder = prepared.copy()
    louder.loc[~second, [POD_CPU, POD_MEMORY]] *= 100
    np.testing.assert_allclose(model.predict(louder)[second].to_numpy(), alone.to_numpy(), equal_nan=True)
    # the held-steps target stops where its experiment stops
    peak = forward_windows(prepared[POD_CPU].to_numpy(), experiments, HORIZON)
    assert np.isnan(peak[boundary - HORIZON + 1 : boundary]).all() and np.isfinite(peak[boundary - HORIZON])
    # and every feature of the second experiment's rows ignores the first one's values
    windows = Windows(HORIZON, 12, 288)
    options = {"seasonal": True, "time_of_day": True, "long_quantiles": True}
    stamps = pd.DatetimeIndex(prepared[TIMESTAMP]).asi8
    x, level = peak_features(prepared[POD_CPU].to_numpy(), experiments, stamps, windows, options, 5, 1e-9)
    values = prepared[POD_CPU].to_numpy().copy()
    values[~second] *= 100
    x2, level2 = peak_features(values, experiments, stamps, windows, options, 5, 1e-9)
    np.testing.assert_allclose(x2[second], x[second], equal_nan=True)
    np.testing.assert_allclose(level2[second], level[second], equal_nan=True)


def test_the_linear_programme_solves_a_quantile_regression_exactly() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(2_000), rng.uniform(0, 10, 2_000)])
    y = 1.0 + 2.0 * x[:, 1] + rng.standard_normal(2_000)
    beta = solve_quantile_regression(x, y, 0.9)
    assert beta[1] == pytest.approx(2.0, abs=0.1)
    assert float(np.mean(y <= x @ beta)) == pytest.approx(0.9, abs=0.01)


def test_the_recent_choice_picks_it_where_it_wastes_less(prepared: pd.DataFrame) -> None:
    """Against the recent peak, which must carry the daily spike's head-room all day, the forecast
    that knows when the spike comes is cheaper at the same coverage, and is chosen."""
    assert PEAK_QUANTILE in RECENT_CANDIDATES and RECENT_PEAK in RECENT_CANDIDATES
    train, validation, _ = split(prepared)
    model = PeakQuantileModel.fit(
        prepared, train, validation, horizon_steps=HORIZON, coverage=0.95, targets=("cpu",), config=REGRESSION
    )
    usage = prepared[POD_CPU].to_numpy()
    recent = slice(len(usage) - 1_440, len(usage))
    unseen = model.unseen(prepared)[recent]
    predicted = np.where(unseen, model.predict(prepared)["cpu"].to_numpy()[recent], np.nan)
    now = model.forecast_next(prepared)["cpu"]
    peak = rolling_peak(usage[recent], 12)
    candidates = {RECENT_PEAK: (peak, float(usage[-12:].max())), PEAK_QUANTILE: (predicted, now)}
    choice = choose_recent(usage[recent], candidates, HORIZON, 0.95)
    alone = choose_recent(usage[recent], {RECENT_PEAK: candidates[RECENT_PEAK]}, HORIZON, 0.95)
    assert choice is not None and alone is not None
    assert choice.candidate == PEAK_QUANTILE and choice.relative_cost < alone.relative_cost


def idle_then_back_frame() -> pd.DataFrame:
    """Flat CPU at 0.5 cores for ten days at five minutes, except an idle spell (2 millicores) from
    day 8.0 to 8.4: a day after it, the same-time-yesterday peak is hundreds of times the level
    before it, a ratio the training rows (the first eight days) never had."""
    frame = synthetic_service_frame(days=10.0, step_seconds=STEP_SECONDS, seed=4, noise=0.0)
    stamps = pd.to_datetime(frame[TIMESTAMP], utc=True)
    day = ((stamps - stamps.iloc[0]) / pd.Timedelta(days=1)).to_numpy()
    cpu = 0.5 + 0.03 * np.random.default_rng(4).standard_normal(len(frame))
    cpu[(day >= 8.0) & (day < 8.4)] = 0.002
    frame = frame.assign(cpu_cores_value=cpu, replica_count_value=1.0, replica_count=1)
    return prepare_frame(frame)


def test_a_feature_outside_its_training_range_is_read_at_the_edge_of_it() -> None:
    """The failure this guards against, as it happened on the idle-periods preset: the ratio of
    yesterday's peak to the idle level before it (416) times a small negative coefficient took the
    forecast to 0 while the usage held at 0.5 cores. Every feature is now clipped into the range its
    training rows had (and the ratio read up to ``RISE_CAP``), so the forecast stays near the level."""
    prepared = idle_then_back_frame()
    labels = split_frame(prepared, 0.1, 0.1).to_numpy()
    model = PeakQuantileModel.fit(
        prepared,
        labels == "train",
        labels == "validation",
        horizon_steps=HORIZON,
        coverage=0.99,
        config=REGRESSION,
    )
    fitted = model.targets["cpu"]
    assert fitted.bounds is not None and len(fitted.bounds) == len(model.features)
    rise = model.features.index("yesterday_rise")
    assert fitted.bounds[rise][1] < 2.0  # no idle spell in training: yesterday looked like today
    # the coefficient the failing model had on the ratio
    fitted.coefficients = [*fitted.coefficients[:rise], -0.16, *fitted.coefficients[rise + 1 :]]
    day = (pd.DatetimeIndex(prepared[TIMESTAMP]) - prepared[TIMESTAMP].iloc[0]) / pd.Timedelta(days=1)
    history = prepared.iloc[: int(np.searchsorted(day, 9.4))]  # a day after the load came back
    level = float(history[POD_CPU].tail(HORIZON).mean())
    clipped = model.forecast_next(history)["cpu"]
    assert 0.8 * level < clipped < 2.0 * level
    fitted.bounds = None  # as a file written before the bounds were kept reads: the ratio counts in full
    assert model.forecast_next(history)["cpu"] < 0.5 * clipped


def test_feature_bounds_round_trip_and_malformed_ones_are_refused(
    prepared: pd.DataFrame, tmp_path: Path
) -> None:
    train, validation, _ = split(prepared)
    model = PeakQuantileModel.fit(
        prepared, train, validation, horizon_steps=HORIZON, coverage=0.95, config=REGRESSION
    )
    model.save(tmp_path)
    loaded = PeakQuantileModel.load(tmp_path)
    assert loaded.targets["cpu"].bounds == model.targets["cpu"].bounds is not None
    data = json.loads((tmp_path / PEAK_FILE).read_text())
    data["targets"]["cpu"]["bounds"][1] = [2.0, 1.0]
    (tmp_path / PEAK_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="feature bounds"):
        PeakQuantileModel.load(tmp_path)
    del data["targets"]["cpu"]["bounds"]  # a file written before they were kept: loaded, no clipping
    (tmp_path / PEAK_FILE).write_text(json.dumps(data))
    assert PeakQuantileModel.load(tmp_path).targets["cpu"].bounds is None


def test_timestamps_at_any_resolution_give_the_same_forecast(
    prepared: pd.DataFrame, fused: PeakQuantileModel
) -> None:
    """pandas 3 parses text (a history sent as JSON) at microseconds and loads files at nanoseconds;
    the features read the time of day the same from both, so the endpoint forecasts as training did."""
    model = fused
    assert "sin_day" in model.features
    micro = prepared.assign(**{TIMESTAMP: prepared[TIMESTAMP].dt.as_unit("us")})
    assert str(micro[TIMESTAMP].dtype) == "datetime64[us, UTC]" != str(prepared[TIMESTAMP].dtype)
    pd.testing.assert_frame_equal(model.predict(micro), model.predict(prepared))
    assert model.forecast_next(micro.iloc[:2_000]) == model.forecast_next(prepared.iloc[:2_000])
    # the time-of-day harmonic goes once round the circle in a day of rows (288 at five minutes)
    day = micro.iloc[:288]
    stamps = epoch_index(day[TIMESTAMP]).asi8
    x, _ = peak_features(
        day[POD_CPU].to_numpy(),
        day[EXPERIMENT_ID].to_numpy(),
        stamps,
        Windows(HORIZON, 12, 288),
        {"time_of_day": True},
        5,
        1e-9,
    )
    sin_day = x[:, feature_names({"time_of_day": True}).index("sin_day")]
    assert np.nanmax(sin_day) > 0.99 and np.nanmin(sin_day) < -0.99
