"""One Tune trial: train the LSTM member with a trial's config, score the fused validation forecast.

Prophet does not depend on anything searched here except the fusion weight, so it is fitted once
per service (``prepare_reference``, in the driver) and its validation forecasts are shared with every
trial through the object store. A trial then fits only the LSTM, on the training rows, and scores
``w * prophet + (1 - w) * lstm`` on the validation rows: the mean over targets of MAE divided by the
mean absolute actual value (scale-free, so CPU cores and memory bytes weigh alike).

ASHA needs intermediate results: a trial reports after epochs 1, 2, 4, ... up to ``max_epochs``
(its rungs), so a poor configuration is stopped after its cheapest rungs. One fit serves every rung
(``LSTMForecaster``'s epoch hook scores the network of that moment); when early stopping ends the fit
before a rung, the final network's score stands for the rungs left. A configuration with one network
per target (``multi_output`` false) has no single network to score mid-fit and refits per rung.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mora_platform.recommend.types import TARGETS
from tune.search_space import METRIC, trial_to_config


@dataclass
class ValidationReference:
    """A service's prepared rows, split labels and Prophet's validation forecasts (shared by trials)."""

    service: str
    prepared: pd.DataFrame
    train_mask: np.ndarray
    validation_mask: np.ndarray
    actual: np.ndarray  # (n_validation, 3) in TARGETS order
    prophet: np.ndarray  # (n_validation, 3)


def epoch_rungs(max_epochs: int) -> list[int]:
    """Epoch budgets of successive reports: 1, 2, 4, ... and ``max_epochs`` last."""
    rungs, epochs = [], 1
    while epochs < max_epochs:
        rungs.append(epochs)
        epochs *= 2
    rungs.append(max(1, int(max_epochs)))
    return rungs


def fused_nmae(actual: np.ndarray, prophet: np.ndarray, lstm: np.ndarray, weight: float) -> float:
    """Mean over targets of MAE / mean |actual| of the fused forecast; Prophet alone where the LSTM is NaN."""
    actual = np.asarray(actual, dtype="float64")
    prophet = np.asarray(prophet, dtype="float64")
    lstm = np.asarray(lstm, dtype="float64")
    fused = np.where(np.isfinite(lstm), weight * prophet + (1.0 - weight) * lstm, prophet)
    scores = []
    for column in range(actual.shape[1]):
        ok = np.isfinite(actual[:, column]) & np.isfinite(fused[:, column])
        if not ok.any():
            continue
        scale = max(float(np.mean(np.abs(actual[ok, column]))), 1e-9)
        scores.append(float(np.mean(np.abs(fused[ok, column] - actual[ok, column]))) / scale)
    if not scores:
        return math.inf
    return float(np.mean(scores))


def prepare_reference(frame: pd.DataFrame, service: str, base_config: dict[str, Any]) -> ValidationReference:
    """Split ``frame`` as training does, fit Prophet on the training rows, forecast the validation rows."""
    from mora_platform.features import prepare_frame, split_frame
    from mora_platform.features.split import Split
    from mora_platform.features.targets import target_matrix
    from mora_platform.models.prophet_model import ProphetForecaster
    from mora_platform.training.config import TrainingConfig

    config = TrainingConfig.model_validate(base_config)
    prepared = prepare_frame(frame).reset_index(drop=True)
    # split exactly as training does (split_by included), so a trial is scored on the validation rows
    # the published model is calibrated on
    labels = split_frame(
        prepared, config.validation_fraction, config.test_fraction, config.split_by
    ).to_numpy()
    train_mask = labels == Split.TRAIN.value
    validation_mask = labels == Split.VALIDATION.value
    if train_mask.sum() < 2 or validation_mask.sum() < 1:
        raise ValueError(
            f"tune {service}: {int(train_mask.sum())} training and {int(validation_mask.sum())} validation rows; "
            "too few to tune on"
        )
    prophet = ProphetForecaster(config.prophet).fit(prepared[train_mask])
    forecasts = prophet.predict(prepared)[list(TARGETS)].to_numpy(dtype="float64")
    return ValidationReference(
        service=service,
        prepared=prepared,
        train_mask=train_mask,
        validation_mask=validation_mask,
        actual=target_matrix(prepared)[validation_mask],
        prophet=forecasts[validation_mask],
    )


def score_predictions(
    reference: ValidationReference, predict: Callable[[pd.DataFrame], pd.DataFrame], weight: float
) -> float:
    """The fused validation score of an LSTM's predictions over the reference rows."""
    predictions = predict(reference.prepared)[list(TARGETS)].to_numpy(dtype="float64")
    return fused_nmae(reference.actual, reference.prophet, predictions[reference.validation_mask], weight)


@dataclass
class RungReporter:
    """``LSTMForecaster``'s epoch hook in a trial: scores the network after each rung and reports."""

    reference: ValidationReference
    weight: float
    epochs: list[int]
    report: Callable[[dict[str, Any]], None]
    reported: list[int] = field(default_factory=list)

    def __call__(self, epoch: int, predict: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
        self.send(epoch, score_predictions(self.reference, predict, self.weight))

    def send(self, epoch: int, score: float) -> None:
        self.report({METRIC: score if math.isfinite(score) else 1e9, "epochs": epoch})
        self.reported.append(epoch)


def score_lstm(
    reference: ValidationReference,
    training_config: Any,
    weight: float,
    cpu_threads: int,
    reporter: RungReporter | None = None,
) -> float:
    """Fit the LSTM member on the training rows with ``training_config`` and score the fused forecast
    (``reporter``, if given, reports the rungs the fit passes on the way)."""
    from mora_platform.models.lstm import LSTMForecaster

    lstm = LSTMForecaster(
        training_config.lstm,
        seq_len=training_config.seq_len,
        seed=training_config.seed,
        cpu_threads=cpu_threads,
        epoch_hook=reporter,
    )
    lstm.fit(reference.prepared[reference.train_mask])
    score = score_predictions(reference, lstm.predict, weight)
    _release_keras_state()
    return score


def run_trial(
    config: dict[str, Any],
    *,
    reference: ValidationReference,
    base_config: dict[str, Any],
    max_epochs: int,
    cpu_threads: int = 1,
) -> None:
    """The Tune trainable: one report per epoch rung (lower ``METRIC`` is better)."""
    from ray import tune

    from mora_platform.models.tf_runtime import cap_compute_threads
    from mora_platform.training.config import TrainingConfig

    cap_compute_threads(cpu_threads)
    weight = float(config["fusion_weight"])
    rungs = epoch_rungs(max_epochs)
    reporter = RungReporter(reference, weight, rungs, tune.report)

    def training_config(epochs: int) -> Any:
        return TrainingConfig.model_validate(
            trial_to_config(config, {**base_config, "cpu_threads": cpu_threads}, epochs=epochs)
        )

    full = training_config(max_epochs)
    if full.lstm.multi_output:
        final = score_lstm(reference, full, weight, cpu_threads, reporter)
        for epoch in rungs:
            if epoch not in reporter.reported:  # early stopping ended the fit before this rung
                reporter.send(epoch, final)
        return
    for epochs in rungs:
        reporter.send(epochs, score_lstm(reference, training_config(epochs), weight, cpu_threads))


def _release_keras_state() -> None:
    try:
        import keras

        keras.backend.clear_session()
    except Exception:  # pragma: no cover - best effort
        pass
