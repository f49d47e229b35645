"""Plug MODELS' training into the backtest: ``train_service`` on the past, ``ServiceModel`` to answer.

The trainer sets ``TrainingConfig.calibration_horizon_steps`` to the rows per backtest horizon. Two
head-rooms can answer at each origin: the one calibrated at training time on validation (what
``ServiceModel.recommend`` serves) and one calibrated on the *recent* rows before the origin
(``ServiceModel.recent_requests``, ``models.recent``), because a request is held across load
changes a validation split may never have seen. ``head_room="auto"`` (the default) keeps the first
while it covers the rows seen since the fit as promised and switches to the second when it does
not; ``"recent"`` and ``"validation"`` force one. ``platform-1step`` is the model's one-step
head-room (``Calibration.next_step``), as a request re-asked every step would be. Each fit also
fits the peak-quantile candidate (``training.peak_candidate``, issue 16: a forecast of the usage over
the held steps, offered beside the fused forecast and the recent peak; ``{"peak": {"enabled":
false}}`` in ``overrides`` leaves it out).

Imported only when the platform method is used; TensorFlow and Prophet load inside MODELS' code.
The training budget is deliberately small (few epochs, one small LSTM layer, one CPU thread) so a
backtest that refits many times still runs in minutes; it adds the level member with fusion
weights chosen on validation (``level_member``, ``fusion="auto"``); ``overrides`` (a ``TrainingConfig`` dict,
merged one level deep) changes it.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mora_platform.backtest.platform import PlatformForecast
from mora_platform.data.schema import CPU_TARGET_FACTOR, MEMORY_TARGET_FACTOR, TIMESTAMP
from mora_platform.models.recent import RECENT_ROWS
from mora_platform.recommend.answering import HEAD_ROOM_MODES as ANSWER_MODES
from mora_platform.recommend.answering import ONE_STEP, WINDOW_SOURCE_ROWS

# Where MODELS keeps ServiceModel (the contract says training/bundle.py "or similar").
_SERVICE_MODEL_MODULES: tuple[str, ...] = (
    "mora_platform.training.bundle",
    "mora_platform.training.service_model",
    "mora_platform.training",
)

BACKTEST_BUDGET: dict[str, Any] = {
    "seed": 0,
    "cpu_threads": 1,
    "lstm": {"units": [16], "dense_units": 8, "epochs": 3, "patience": 2, "lr_patience": 1, "batch_size": 64},
    # the precomputed Prophet grid must reach past the next refit (beyond it Prophet's answer is clipped)
    "prophet": {"grid_steps": 3_000, "max_rows": 6_000},
    # measured on both backtests: anchoring on the last value (fusion weights chosen on validation)
    # brings the point forecast's MASE below 1 and cuts memory under-provisioning
    "level_member": True,
    "fusion": "auto",
    # each held step covered with probability 0.99: the operating point the peers' defaults sit at
    # (their under-provisioning is 0.1-1.5% on both datasets)
    "coverage": 0.99,
}
HISTORY_TAIL_ROWS = WINDOW_SOURCE_ROWS
# what --calibrate-on offers: the answering layer's modes (one-step has its own platform-1step row)
HEAD_ROOM_MODES: tuple[str, ...] = tuple(mode for mode in ANSWER_MODES if mode != ONE_STEP)
_TARGET_FACTORS = {"cpu": CPU_TARGET_FACTOR, "memory": MEMORY_TARGET_FACTOR}


def _service_model_class() -> Any:
    for name in _SERVICE_MODEL_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "ServiceModel"):
            return module.ServiceModel
    raise ImportError(f"ServiceModel not found in {', '.join(_SERVICE_MODEL_MODULES)}")


def check_available() -> None:
    """Raise ImportError if MODELS' training entrypoints are not importable yet."""
    importlib.import_module("mora_platform.training.config")
    importlib.import_module("mora_platform.training.service_trainer")
    _service_model_class()


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def budget_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The TrainingConfig dict used in the backtest (``{"epochs": n}`` is a shortcut for the LSTM's)."""
    extra = dict(overrides or {})
    if "epochs" in extra:
        extra = _merge(extra, {"lstm": {"epochs": int(extra.pop("epochs"))}})
    return _merge(BACKTEST_BUDGET, extra)


class ServiceModelAdapter:
    """A loaded ``ServiceModel`` answering the backtest's ``PlatformModel.predict``.

    With ``head_room="recent"`` the request is ``ServiceModel.recent_requests``: the head-room
    calibrated on the last ``recent_rows`` rows before the origin, over ``horizon_steps`` steps,
    choosing the cheapest of ``RECENT_CANDIDATES`` (the fused and peak-quantile forecasts and the
    no-fit recent rules, ``models.recent``). With ``"validation"`` it takes the same steps as
    ``ServiceModel.recommend(head_room="validation")`` (latest experiment's tail, ensemble's
    next-step forecast, the head-room calibrated on validation at training time). ``"auto"`` (the
    default) is ``ServiceModel.held_requests``, what ``recommend`` serves for a long enough history:
    the recent head-room, unless the validation one, judged on as many unseen windows, kept its
    promise at no higher cost. Each answer records its source (``PlatformForecast.sources``).
    Either way it stops before the serving policy, whose floors and rounding the backtest applies
    itself (``PlatformRecommender``). The point forecast is of the *target* (usage x the seed's
    factor), so it is divided back to usage. No context is passed: the future load is unknown.
    """

    def __init__(
        self,
        model: Any,
        horizon_steps: int = 1,
        head_room: str = "auto",
        recent_rows: int = RECENT_ROWS,
        fitted_until: pd.Timestamp | None = None,
    ) -> None:
        if head_room not in HEAD_ROOM_MODES:
            raise ValueError(f"head_room must be one of {HEAD_ROOM_MODES}, got {head_room!r}")
        self.model = model
        self.horizon_steps = max(int(horizon_steps), 1)
        self.head_room = head_room
        self.recent_rows = max(int(recent_rows), 8 * self.horizon_steps)
        self.fitted_until = fitted_until

    def predict(self, history: pd.DataFrame, horizon: pd.Timedelta) -> PlatformForecast:
        from mora_platform.recommend.answering import answer_request

        answer = answer_request(
            self.model,
            history,
            head_room=self.head_room,
            steps=self.horizon_steps,
            rows=self.recent_rows,
            fitted_until=self.fitted_until,
        )
        forecasts: dict[str, float | None] = {}
        for resource, factor in _TARGET_FACTORS.items():
            # the point is divided back by the seed's target factor (as the members forecast usage x it)
            point = answer.points[resource]
            forecasts[resource] = point / factor if np.isfinite(point) else None
        # a resource the model was trained without (no data: ``ServiceModel.unavailable_targets``) is
        # answered NaN; leaving it out makes the platform decline it instead of scoring a made-up number
        resources = tuple(r for r in _TARGET_FACTORS if np.isfinite(answer.requests[r]))
        return PlatformForecast(
            requests={r: answer.requests[r] for r in resources},
            forecasts=forecasts,
            one_step_requests={r: answer.one_step_requests[r] for r in resources},
            validation_requests={r: answer.validation_requests[r] for r in resources},
            sources={r: answer.sources[r] for r in resources},
        )


class ServiceModelTrainer:
    """``PlatformTrainer`` over MODELS: train on the rows before the origin, load the bundle, answer."""

    def __init__(
        self,
        overrides: Mapping[str, Any] | None = None,
        horizon_steps: int = 1,
        head_room: str = "auto",
        recent_rows: int = RECENT_ROWS,
    ) -> None:
        if head_room not in HEAD_ROOM_MODES:
            raise ValueError(f"head_room must be one of {HEAD_ROOM_MODES}, got {head_room!r}")
        self.config_dict = budget_config(overrides)
        self.horizon_steps = max(int(horizon_steps), 1)
        self.head_room = head_room
        self.recent_rows = recent_rows
        self._last: tuple[tuple[str, int, Any], ServiceModelAdapter] | None = None

    def __call__(self, frame: pd.DataFrame, service: str) -> ServiceModelAdapter:
        """Train (or reuse the model just trained on the same rows: the two platform variants share fits)."""
        from mora_platform.data.schema import TIMESTAMP

        key = (service, len(frame), frame[TIMESTAMP].iloc[-1] if len(frame) else None)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        adapter = self._train(frame, service)
        self._last = (key, adapter)
        return adapter

    def _train(self, frame: pd.DataFrame, service: str) -> ServiceModelAdapter:
        from mora_platform.models.tf_quiet import quiet_tensorflow
        from mora_platform.training.config import TrainingConfig
        from mora_platform.training.peak_candidate import attach_peak_candidate
        from mora_platform.training.service_trainer import train_service

        quiet_tensorflow(import_now=True)  # in the process that trains (a Ray worker's too)
        config = TrainingConfig.model_validate(
            {**self.config_dict, "calibration_horizon_steps": self.horizon_steps}
        )
        service_model = _service_model_class()
        directory = Path(tempfile.mkdtemp(prefix="mora-backtest-"))
        try:
            train_service(frame, service, config, directory)
            # issue 16: the peak-quantile candidate, fitted on the same rows beside the ensemble
            attach_peak_candidate(frame, service, config, directory)
            model = service_model.load(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        fitted_until = pd.Timestamp(frame[TIMESTAMP].max()) if len(frame) else None
        return ServiceModelAdapter(
            model, self.horizon_steps, self.head_room, self.recent_rows, fitted_until=fitted_until
        )
