"""Forecaster contract: fit / predict / save / load for Prophet, LSTM, baselines and the ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import LOAD_USERS, REPLICA_COUNT, TIMESTAMP
from mora_platform.features import prepare_frame, split_frame
from mora_platform.features.targets import FEATURE_COLUMNS, feature_matrix
from mora_platform.models import ModelLoadError, NotFittedError
from mora_platform.models.baselines import LastValueForecaster, PercentileForecaster
from mora_platform.models.config import LSTMConfig, ProphetConfig
from mora_platform.models.ensemble import EnsembleForecaster, default_weights
from mora_platform.models.lstm import LSTMForecaster
from mora_platform.models.prophet_model import ProphetForecaster
from mora_platform.models.tf_runtime import configure_tensorflow
from mora_platform.recommend.types import TARGETS

TINY_LSTM = LSTMConfig(units=[6, 4], dense_units=4, epochs=2, patience=1, batch_size=64)
SEQ_LEN = 6


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return prepare_frame(synthetic_service_frame(days=2.0, step_seconds=300, seed=5, experiments=2))


@pytest.fixture(scope="module")
def train(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(split_frame(frame, 0.15, 0.15) == "train").to_numpy()]


@pytest.fixture(scope="module")
def prophet(train: pd.DataFrame) -> ProphetForecaster:
    return ProphetForecaster(ProphetConfig(grid_steps=48)).fit(train)


@pytest.fixture(scope="module")
def lstm(train: pd.DataFrame) -> LSTMForecaster:
    return LSTMForecaster(TINY_LSTM, seq_len=SEQ_LEN, seed=1).fit(train)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


def test_prophet_round_trip_and_grid_arithmetic(
    prophet: ProphetForecaster, frame: pd.DataFrame, tmp_path: Path
) -> None:
    before = prophet.predict(frame)
    assert np.isfinite(before.to_numpy()).all()
    prophet.anchor_grid(frame[TIMESTAMP].max())
    files = prophet.save(tmp_path)
    assert {"prophet_cpu.json", "prophet_memory.json", "prophet_grid.json"} <= set(files)
    loaded = ProphetForecaster.load(tmp_path)
    _same(before, loaded.predict(frame))
    # Serving arithmetic equals Prophet.predict at the next step with the context's regressors.
    context = {LOAD_USERS: 55.0, REPLICA_COUNT: 3.0}
    fast = loaded.forecast_next(frame, context)
    next_row = frame.tail(1).copy()
    next_row[TIMESTAMP] = next_row[TIMESTAMP] + pd.Timedelta(seconds=prophet.step_seconds)
    next_row[LOAD_USERS], next_row[REPLICA_COUNT] = 55.0, 3.0
    slow = prophet.predict(next_row).iloc[0]
    for target in ("cpu", "memory"):
        assert fast[target] == pytest.approx(slow[target], rel=1e-6)


def test_prophet_drops_seasonality_on_short_history_and_falls_back(frame: pd.DataFrame) -> None:
    short = frame.head(40).copy()
    short["replica_count_value"] = 2.0
    short["target_replicas"] = 2.0
    model = ProphetForecaster(ProphetConfig(grid_steps=10)).fit(short)
    assert any("daily seasonality dropped" in f for f in model.fallbacks)
    assert any("weekly seasonality dropped" in f for f in model.fallbacks)
    assert "replicas" in model.fallback_levels  # constant target -> percentile level
    assert model.forecast_next(short)["replicas"] == 2.0


def test_prophet_failure_becomes_recorded_percentile(
    frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: ProphetForecaster, frame: pd.DataFrame, target: str) -> None:
        raise RuntimeError("stan exploded")

    monkeypatch.setattr(ProphetForecaster, "_fit_one", boom)
    model = ProphetForecaster(ProphetConfig(grid_steps=5)).fit(frame.head(100))
    assert set(model.fallback_levels) == set(TARGETS)
    assert any("stan exploded" in f for f in model.fallbacks)
    assert np.isfinite(model.predict(frame).to_numpy()).all()


def test_lstm_scaler_fitted_on_its_training_rows(
    lstm: LSTMForecaster, train: pd.DataFrame, frame: pd.DataFrame
) -> None:
    assert lstm.feature_scaler is not None
    scaler = lstm.feature_scaler
    train_values = feature_matrix(train)
    varying = train_values.max(axis=0) > train_values.min(axis=0)
    np.testing.assert_allclose(scaler.minimum, train_values.min(axis=0))
    np.testing.assert_allclose((scaler.minimum + scaler.span)[varying], train_values.max(axis=0)[varying])
    assert len(train) < len(frame)


def test_lstm_numpy_forward_matches_keras(lstm: LSTMForecaster) -> None:
    x = np.random.default_rng(0).random((4, SEQ_LEN, len(FEATURE_COLUMNS)))
    np.testing.assert_allclose(lstm.forward(x), lstm.forward(x, engine="keras"), rtol=1e-4, atol=1e-5)


def test_lstm_round_trip(lstm: LSTMForecaster, frame: pd.DataFrame, tmp_path: Path) -> None:
    before = lstm.predict(frame)
    assert (
        before.notna().all(axis=1).sum() == len(frame) - 2 * SEQ_LEN
    )  # no window for each experiment's start
    lstm.save(tmp_path)
    loaded = LSTMForecaster.load(tmp_path)
    _same(before, loaded.predict(frame))
    assert loaded.forecast_next(frame) == lstm.forecast_next(frame)
    assert all(np.isnan(v) for v in loaded.forecast_next(frame.head(SEQ_LEN - 1)).values())


def test_lstm_refuses_corrupt_model_file(lstm: LSTMForecaster, tmp_path: Path) -> None:
    lstm.save(tmp_path)
    (tmp_path / "lstm.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match=r"lstm\.keras"):
        LSTMForecaster.load(tmp_path)


def test_lstm_single_head_per_target(train: pd.DataFrame, frame: pd.DataFrame, tmp_path: Path) -> None:
    config = TINY_LSTM.model_copy(update={"multi_output": False, "epochs": 1, "units": [3]})
    model = LSTMForecaster(config, seq_len=SEQ_LEN).fit(train)
    assert model.branches == ["branch_cpu", "branch_memory", "branch_replicas"]
    model.save(tmp_path)
    _same(model.predict(frame), LSTMForecaster.load(tmp_path).predict(frame))


def test_lstm_without_windows_fails_clearly(frame: pd.DataFrame) -> None:
    with pytest.raises(Exception, match="training window"):
        LSTMForecaster(TINY_LSTM, seq_len=200).fit(frame.head(150))


def test_baselines_round_trip(train: pd.DataFrame, frame: pd.DataFrame, tmp_path: Path) -> None:
    pct = PercentileForecaster(90).fit(train)
    assert pct.forecast_next(frame)["cpu"] == pytest.approx(np.percentile(train["target_cpu"], 90))
    pct.save(tmp_path)
    _same(pct.predict(frame), PercentileForecaster.load(tmp_path).predict(frame))
    naive = LastValueForecaster().fit(train)
    predicted = naive.predict(frame)
    assert predicted["cpu"].iloc[1] == frame["target_cpu"].iloc[0]
    assert np.isnan(predicted["cpu"].iloc[0])
    with pytest.raises(NotFittedError):
        PercentileForecaster().predict(frame)


def test_ensemble_fuses_round_trips_and_degrades(
    prophet: ProphetForecaster, lstm: LSTMForecaster, train: pd.DataFrame, frame: pd.DataFrame, tmp_path: Path
) -> None:
    weights = default_weights(dict.fromkeys(TARGETS, 0.4))
    ensemble = EnsembleForecaster.from_fitted({"prophet": prophet, "lstm": lstm}, weights)
    parts = ensemble.member_predictions(frame)
    fused = ensemble.predict(frame)
    both = parts["lstm"]["cpu"].notna()
    expected = 0.4 * parts["prophet"]["cpu"] + 0.6 * parts["lstm"]["cpu"]
    np.testing.assert_allclose(fused.loc[both, "cpu"], expected[both])
    np.testing.assert_allclose(fused.loc[~both, "cpu"], parts["prophet"].loc[~both, "cpu"])  # prophet alone
    assert not ensemble.degraded
    ensemble.save(tmp_path)
    loaded = EnsembleForecaster.load(tmp_path)
    _same(fused, loaded.predict(frame))
    assert loaded.explain_next(frame).point == ensemble.explain_next(frame).point

    degraded = EnsembleForecaster(
        {"prophet": ProphetForecaster(ProphetConfig(grid_steps=5)), "lstm": None}
    ).fit(train)
    assert degraded.degraded and degraded.status["lstm"] == "missing"
    answer = degraded.explain_next(frame)
    assert answer.weights["prophet"]["cpu"] == 1.0


def test_ensemble_records_failed_member(train: pd.DataFrame) -> None:
    ensemble = EnsembleForecaster(
        {"prophet": PercentileForecaster(), "lstm": LSTMForecaster(TINY_LSTM, seq_len=10_000 // 20)}
    )
    ensemble.fit(train.head(40))
    assert ensemble.status["lstm"] == "failed"
    assert any("training window" in f for f in ensemble.fallbacks)


def test_configure_tensorflow_twice_is_safe() -> None:
    first = configure_tensorflow(1, seed=0)
    assert configure_tensorflow(1) == first
    assert configure_tensorflow(2) == first  # cannot change after start: warns, keeps the cap


def test_choose_weights_prefers_the_better_member(frame: pd.DataFrame) -> None:
    actual = pd.DataFrame({t: frame[f"target_{t}"].to_numpy() for t in TARGETS})
    good = actual.copy()
    bad = actual * 1.5
    ensemble = EnsembleForecaster.from_fitted(
        {"prophet": PercentileForecaster().fit(frame), "lstm": LastValueForecaster().fit(frame)},
        default_weights(dict.fromkeys(TARGETS, 0.4)),
    )
    ensemble.choose_weights(actual, {"prophet": good, "lstm": bad})
    assert ensemble.weights["prophet"] == dict.fromkeys(TARGETS, 1.0)
    assert ensemble.weights["lstm"] == dict.fromkeys(TARGETS, 0.0)


def test_prophet_leaves_no_temp_files(train: pd.DataFrame) -> None:
    import cmdstanpy

    root = Path(cmdstanpy._TMPDIR)
    before = set(root.iterdir())
    ProphetForecaster(ProphetConfig(grid_steps=5)).fit(train.head(120))
    assert set(root.iterdir()) <= before
