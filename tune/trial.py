"""One Tune trial: train the LSTM member with a trial's config, score the fused validation forecast.

The search space describes the LSTM (``TUNED_MEMBER``); the other members of the base config (any
registered member: Prophet by default, the level member, ...) do not depend on anything searched
here except their fusion weights, so they are fitted once per service (``prepare_reference``, in the
driver) and their validation forecasts are shared with every trial through the object store. A trial
then fits only the LSTM, on the training rows, and scores the fusion of every member with the
trial's weights (``TrainingConfig.weights``; the fusion rule of ``EnsembleForecaster.fuse``) on the
validation rows: the mean over targets of MAE divided by the mean absolute actual value (scale-free,
so CPU cores and memory bytes weigh alike).

ASHA needs intermediate results: a trial reports after epochs 1, 2, 4, ... up to ``max_epochs``
(its rungs), so a poor configuration is stopped after its cheapest rungs. One fit serves every rung
(``LSTMForecaster``'s epoch hook scores the network of that moment); when early stopping ends the fit
before a rung, the final network's score stands for the rungs left. A configuration with one network
per target (``multi_output`` false) has no single network to score mid-fit and refits per rung.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mora_platform.recommend.types import TARGETS
from tune.search_space import METRIC, trial_to_config

#: The member the search space describes (fitted per trial); the others are fitted once.
TUNED_MEMBER = "lstm"
#: Per member, per target fusion weights; or a float: the legacy Prophet weight ``w`` (LSTM ``1 - w``).
Weights = Mapping[str, Mapping[str, float]] | float


@dataclass
class ValidationReference:
    """A service's prepared rows, split labels and the fixed members' validation forecasts (shared by
    trials): member name -> (n_validation, 3) in TARGETS order."""

    service: str
    prepared: pd.DataFrame
    train_mask: np.ndarray
    validation_mask: np.ndarray
    actual: np.ndarray  # (n_validation, 3) in TARGETS order
    members: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def prophet(self) -> np.ndarray | None:
        """Prophet's validation forecasts, if it is a fixed member."""
        return self.members.get("prophet")


def epoch_rungs(max_epochs: int) -> list[int]:
    """Epoch budgets of successive reports: 1, 2, 4, ... and ``max_epochs`` last."""
    rungs, epochs = [], 1
    while epochs < max_epochs:
        rungs.append(epochs)
        epochs *= 2
    rungs.append(max(1, int(max_epochs)))
    return rungs


def fuse(predictions: Mapping[str, np.ndarray], weights: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """Row-wise weighted mean over the members that answered (finite), per target column; equal
    weights where the answering members' weights sum to 0; NaN where none answered."""
    names = list(predictions)
    values = np.stack([np.asarray(predictions[n], dtype="float64") for n in names])  # (m, n, 3)
    finite = np.isfinite(values)
    w = np.array([[float(weights.get(n, {}).get(t, 0.0)) for t in TARGETS] for n in names])[:, None, :]
    w = w * finite
    total = w.sum(axis=0)
    equal = finite / np.maximum(finite.sum(axis=0), 1)
    w = np.where(total > 0, w / np.where(total > 0, total, 1), equal)
    fused = (np.where(finite, values, 0.0) * w).sum(axis=0)
    return np.where(finite.any(axis=0), fused, np.nan)


def fused_nmae(
    actual: np.ndarray, predictions: Mapping[str, np.ndarray], weights: Mapping[str, Mapping[str, float]]
) -> float:
    """Mean over targets of MAE / mean |actual| of the fused forecast (``fuse``)."""
    actual = np.asarray(actual, dtype="float64")
    fused = fuse(predictions, weights)
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


def member_weights(reference: ValidationReference, weights: Weights) -> dict[str, dict[str, float]]:
    """``weights`` over the reference's members and the tuned one (a float: the legacy Prophet weight)."""
    from mora_platform.models.members import resolve_weights

    names = [*reference.members, TUNED_MEMBER]
    if isinstance(weights, int | float):
        return resolve_weights(names, dict.fromkeys(TARGETS, float(weights)))
    resolved = resolve_weights(names)  # a member the mapping lacks keeps its registered default
    resolved.update({n: {t: float(w) for t, w in weights[n].items()} for n in names if n in weights})
    return resolved


def prepare_reference(frame: pd.DataFrame, service: str, base_config: dict[str, Any]) -> ValidationReference:
    """Split ``frame`` as training does, fit every configured member but the tuned one on the training
    rows (a member that fails is left out, as the ensemble would), forecast the validation rows."""
    from mora_platform.features import prepare_frame, split_frame
    from mora_platform.features.split import Split
    from mora_platform.features.targets import target_matrix
    from mora_platform.models.members import build_members
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
    fixed = [name for name in config.member_names if name != TUNED_MEMBER]
    forecasts: dict[str, np.ndarray] = {}
    for name, member in build_members(config, fixed).items():
        try:
            member.fit(prepared[train_mask])
        except Exception:  # the trained ensemble would leave it out too
            continue
        forecasts[name] = member.predict(prepared)[list(TARGETS)].to_numpy(dtype="float64")[validation_mask]
    return ValidationReference(
        service=service,
        prepared=prepared,
        train_mask=train_mask,
        validation_mask=validation_mask,
        actual=target_matrix(prepared)[validation_mask],
        members=forecasts,
    )


def score_predictions(
    reference: ValidationReference, predict: Callable[[pd.DataFrame], pd.DataFrame], weight: Weights
) -> float:
    """The fused validation score of the tuned member's predictions with the fixed members'."""
    predictions = predict(reference.prepared)[list(TARGETS)].to_numpy(dtype="float64")
    members = {**reference.members, TUNED_MEMBER: predictions[reference.validation_mask]}
    return fused_nmae(reference.actual, members, member_weights(reference, weight))


@dataclass
class RungReporter:
    """``LSTMForecaster``'s epoch hook in a trial: scores the network after each rung and reports."""

    reference: ValidationReference
    weight: Weights
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
    weight: Weights,
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
    rungs = epoch_rungs(max_epochs)

    def training_config(epochs: int) -> Any:
        return TrainingConfig.model_validate(
            trial_to_config(config, {**base_config, "cpu_threads": cpu_threads}, epochs=epochs)
        )

    full = training_config(max_epochs)
    weight = full.weights()  # every member's, from the trial's fusion weights over the base config
    reporter = RungReporter(reference, weight, rungs, tune.report)
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
