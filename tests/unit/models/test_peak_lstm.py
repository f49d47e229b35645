"""The peak-quantile candidate's sequence head (``models.peak_lstm``): its inputs read only the past
of a row's own experiment, its NumPy forward pass is the Keras network's, its file is checked when
read, and fused with the regression by a weight chosen on validation it forecasts the held usage's
quantile at least as well as the regression alone on rows neither saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from peak_frames import HORIZON, STEP_SECONDS, held_usage, spiked_frame, split
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import EXPERIMENT_ID, TIMESTAMP
from mora_platform.features.targets import POD_CPU, prepare_frame
from mora_platform.models.base import ModelLoadError
from mora_platform.models.peak import HEAD_WEIGHTS, PeakQuantileConfig, PeakQuantileModel
from mora_platform.models.peak_lstm import (
    CHANNELS,
    SEQUENCE_AHEAD,
    SEQUENCE_PAST,
    PeakHead,
    chunk_rows,
    head_file,
    sequence_inputs,
)

DAY = 288  # rows a day at five minutes


def pinball(usage: np.ndarray, forecast: np.ndarray, q: float) -> float:
    error = usage - forecast[:, None]
    return float(np.mean(np.maximum(q * error, (q - 1) * error)))


@pytest.fixture(scope="module")
def prepared() -> pd.DataFrame:
    return spiked_frame(days=10.0)


@pytest.fixture(scope="module")
def both(prepared: pd.DataFrame) -> tuple[PeakQuantileModel, PeakQuantileModel]:
    """The regression alone and the regression fused with its head, on the same rows."""
    train, validation, _ = split(prepared)
    fit = {"horizon_steps": HORIZON, "coverage": 0.95, "targets": ("cpu",)}
    alone = PeakQuantileModel.fit(
        prepared, train, validation, config=PeakQuantileConfig(quantile=0.9, lstm=False), **fit
    )
    fused = PeakQuantileModel.fit(
        prepared, train, validation, config=PeakQuantileConfig(quantile=0.9, lstm=True, lstm_epochs=15), **fit
    )
    return alone, fused


def test_inputs_read_only_the_rows_before_and_the_same_experiment() -> None:
    frame = synthetic_service_frame(days=4.0, step_seconds=STEP_SECONDS, seed=5, experiments=2)
    prepared = prepare_frame(frame)
    values = prepared[POD_CPU].to_numpy()
    experiments = prepared[EXPERIMENT_ID].to_numpy()
    stamps = pd.DatetimeIndex(prepared[TIMESTAMP]).as_unit("ns").asi8
    level = np.full(len(values), float(np.mean(values)))
    ask = {"horizon": HORIZON, "day": DAY, "time_of_day": True}
    x = sequence_inputs(values, experiments, stamps, level, **ask)
    assert x.shape == (len(values), SEQUENCE_PAST + SEQUENCE_AHEAD, CHANNELS)
    c = chunk_rows(HORIZON)
    boundary = int(np.flatnonzero(experiments == experiments[-1])[0])
    # a row needs its own experiment's past chunks: none at the start of either experiment
    assert (
        np.isnan(x[: SEQUENCE_PAST * c]).all() and np.isnan(x[boundary : boundary + SEQUENCE_PAST * c]).all()
    )
    assert np.isfinite(x[SEQUENCE_PAST * c : boundary]).all()
    # changing the usage from a row on changes nothing of that row's input
    row = boundary + DAY + 40
    later = values.copy()
    later[row:] *= 7.0
    np.testing.assert_array_equal(sequence_inputs(later, experiments, stamps, level, **ask)[row], x[row])
    # the first experiment's usage changes nothing of the second's inputs
    louder = values.copy()
    louder[:boundary] *= 100.0
    np.testing.assert_array_equal(
        sequence_inputs(louder, experiments, stamps, level, **ask)[boundary:], x[boundary:]
    )
    # yesterday is there once a day of the row's own experiment lies before it, and not before
    assert x[boundary + DAY + SEQUENCE_PAST * c, :, 3].all()
    # (a chunk of yesterday starting before the experiment did is not)
    first = x[boundary + DAY - 1, :, 3]
    assert first[SEQUENCE_PAST] == 0 and first[SEQUENCE_PAST + 1 :].all() and not first[:SEQUENCE_PAST].any()
    # the held chunks ahead carry no usage, only their flag
    assert (x[row, SEQUENCE_PAST:, 0] == 0).all() and (x[row, SEQUENCE_PAST:, 1] == 1).all()


def test_fused_forecast_is_no_worse_than_the_regression_on_unseen_rows(
    prepared: pd.DataFrame, both: tuple[PeakQuantileModel, PeakQuantileModel]
) -> None:
    alone, fused = both
    fitted = fused.targets["cpu"]
    assert fitted.fusion is not None and set(fitted.fusion["pinball"]) == {f"{w:g}" for w in HEAD_WEIGHTS}
    chosen = min(fitted.fusion["pinball"].values())
    assert fitted.fusion["pinball"][f"{fitted.lstm_weight:g}"] == chosen
    assert fitted.head is not None
    _, _, test = split(prepared)
    values = prepared[POD_CPU].to_numpy()
    rows, usage = held_usage(values, np.flatnonzero(test), HORIZON)
    q = fused.config.quantile
    fused_loss = pinball(usage, fused.predict(prepared)["cpu"].to_numpy()[rows], q)
    alone_loss = pinball(usage, alone.predict(prepared)["cpu"].to_numpy()[rows], q)
    assert fused_loss <= 1.02 * alone_loss
    # the head alone learned the shape: better than the training rows' quantile all day, and it
    # forecasts more for the hours that hold the daily spike
    weight = fitted.lstm_weight
    try:
        fitted.lstm_weight = 1.0
        head_only = fused.predict(prepared)["cpu"].to_numpy()[rows]
    finally:
        fitted.lstm_weight = weight
    train = split(prepared)[0]
    constant = np.full(len(rows), float(np.quantile(values[train], q)))
    assert pinball(usage, head_only, q) < pinball(usage, constant, q)
    spiked = usage.max(axis=1) > 2.0  # the held hour holds the daily spike
    assert spiked.any() and head_only[spiked].mean() > 1.2 * head_only[~spiked].mean()
    # the training-time head-room is calibrated on the fused forecast
    assert fitted.head_room is not None and fitted.head_room.source == "validation"


def test_numpy_forward_pass_is_the_keras_networks(both: tuple[PeakQuantileModel, PeakQuantileModel]) -> None:
    head = both[1].targets["cpu"].head
    assert head is not None and head.model is not None
    x = np.random.default_rng(0).uniform(0, 3, size=(64, SEQUENCE_PAST + SEQUENCE_AHEAD, CHANNELS))
    keras_out = np.asarray(head.model(x.astype("float32"), training=False))[:, 0]
    np.testing.assert_allclose(head.forward(x), keras_out, rtol=1e-4, atol=1e-5)
    x[3, 2, 1] = np.nan  # a row without an input gets no forecast, the others theirs
    out = head.forward(x)
    assert np.isnan(out[3]) and np.isfinite(np.delete(out, 3)).all()


def test_a_damaged_or_foreign_head_file_is_refused_by_name(
    both: tuple[PeakQuantileModel, PeakQuantileModel], tmp_path: Path
) -> None:
    model = both[1]
    weight = model.targets["cpu"].lstm_weight
    try:
        model.targets["cpu"].lstm_weight = 0.5  # saved with a weight, whatever validation gave it
        model.save(tmp_path)
    finally:
        model.targets["cpu"].lstm_weight = weight
    name = head_file("cpu")
    assert PeakHead.load(tmp_path, "cpu").units == model.config.lstm_units
    (tmp_path / name).write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match=name):
        PeakQuantileModel.load(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(ModelLoadError, match="file missing"):
        PeakQuantileModel.load(tmp_path)
    import keras

    other = keras.Sequential(
        [keras.Input(shape=(SEQUENCE_PAST + SEQUENCE_AHEAD, CHANNELS)), keras.layers.Dense(1)]
    )
    other.save(tmp_path / name)
    with pytest.raises(ModelLoadError, match=name):
        PeakQuantileModel.load(tmp_path)


def test_short_training_data_trains_no_head() -> None:
    prepared = spiked_frame(days=1.5)
    train, validation, _ = split(prepared)
    model = PeakQuantileModel.fit(
        prepared,
        train,
        validation,
        horizon_steps=HORIZON,
        coverage=0.95,
        targets=("cpu",),
        config=PeakQuantileConfig(lstm=True),
    )
    fitted = model.targets["cpu"]
    assert fitted.head is None and fitted.lstm_weight == 0 and fitted.fusion is None
    assert model.file_names() == ["peak_quantile.json"]
