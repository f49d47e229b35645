"""Plug MODELS' training into the backtest: ``train_service`` on the past, ``ServiceModel`` to answer.

Imported only when the platform method is used; TensorFlow and Prophet load inside MODELS' code.
The training budget is deliberately small (few epochs, one small LSTM layer, one CPU thread) so a
backtest that refits many times still runs in minutes; ``overrides`` (a ``TrainingConfig`` dict,
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
}
HISTORY_TAIL_ROWS = 2_000
_RESOURCE_FIELDS = {"cpu": "cpu_cores", "memory": "memory_bytes"}


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
    """A loaded ``ServiceModel`` answering the backtest's ``PlatformModel.predict``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, history: pd.DataFrame, horizon: pd.Timedelta) -> PlatformForecast:
        recommendation = self.model.recommend(history=history.tail(HISTORY_TAIL_ROWS))
        requests = {
            resource: float(getattr(recommendation.recommendations, field))
            for resource, field in _RESOURCE_FIELDS.items()
        }
        return PlatformForecast(requests=requests, forecasts=fused_point_forecast(recommendation))


def fused_point_forecast(recommendation: Any) -> dict[str, float | None]:
    """Weighted mean of the members' point forecasts (weights renormalised over the members that answered)."""
    out: dict[str, float | None] = {}
    for resource, field in _RESOURCE_FIELDS.items():
        pairs = [
            (float(c.weight), float(getattr(c, field)))
            for c in recommendation.contributions.values()
            if getattr(c, field) is not None and np.isfinite(getattr(c, field))
        ]
        total = sum(w for w, _ in pairs)
        out[resource] = sum(w * v for w, v in pairs) / total if total > 0 else None
    return out


class ServiceModelTrainer:
    """``PlatformTrainer`` over MODELS: train on the rows before the origin, load the bundle, answer."""

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self.config_dict = budget_config(overrides)

    def __call__(self, frame: pd.DataFrame, service: str) -> ServiceModelAdapter:
        from mora_platform.training.config import TrainingConfig
        from mora_platform.training.service_trainer import train_service

        config = TrainingConfig.model_validate(self.config_dict)
        service_model = _service_model_class()
        directory = Path(tempfile.mkdtemp(prefix="mora-backtest-"))
        try:
            train_service(frame, service, config, directory)
            model = service_model.load(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return ServiceModelAdapter(model)
