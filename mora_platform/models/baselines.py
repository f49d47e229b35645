"""Baseline forecasters: a robust percentile level and the naive last value.

``PercentileForecaster`` is also Prophet's fallback for a target (saved as
``percentile_{target}.json``); ``LastValueForecaster`` is the yardstick the report compares against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from mora_platform.data.schema import EXPERIMENT_ID
from mora_platform.features.targets import TARGET_COLUMNS
from mora_platform.models.base import Forecaster, ModelLoadError, read_json, write_json
from mora_platform.recommend.types import TARGETS


@dataclass
class PercentileLevel:
    """One target's level: the ``percentile`` of its training values."""

    target: str
    percentile: float
    value: float
    reason: str = ""

    @classmethod
    def fit(cls, values: np.ndarray, target: str, percentile: float, reason: str = "") -> PercentileLevel:
        finite = np.asarray(values, dtype="float64")
        finite = finite[np.isfinite(finite)]
        value = float(np.percentile(finite, percentile)) if finite.size else 0.0
        return cls(target, float(percentile), value, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "percentile",
            "target": self.target,
            "percentile": self.percentile,
            "value": self.value,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> PercentileLevel:
        try:
            level = cls(
                str(data["target"]),
                float(data["percentile"]),
                float(data["value"]),
                str(data.get("reason", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: malformed percentile model ({exc})") from exc
        if level.target not in TARGETS or not np.isfinite(level.value):
            raise ModelLoadError(f"{source}: bad target {level.target!r} or value {level.value!r}")
        return level


class PercentileForecaster(Forecaster):
    """Predicts a fixed percentile of each target's training values (default: the median)."""

    name = "percentile"

    def __init__(self, percentile: float = 50.0) -> None:
        super().__init__()
        self.percentile = percentile
        self.levels: dict[str, PercentileLevel] = {}

    def _fit(self, frame: pd.DataFrame) -> None:
        self.levels = {
            t: PercentileLevel.fit(frame[TARGET_COLUMNS[t]].to_numpy(), t, self.percentile) for t in TARGETS
        }

    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {t: np.full(len(frame), self.levels[t].value) for t in TARGETS}, index=frame.index
        )

    def _forecast_next(self, history: pd.DataFrame, context: dict[str, float | str]) -> dict[str, float]:
        return {t: self.levels[t].value for t in TARGETS}

    def _save(self, directory: Path) -> list[str]:
        return [write_json(directory / f"percentile_{t}.json", self.levels[t].to_dict()) for t in TARGETS]

    @classmethod
    def _load(cls, directory: Path) -> Self:
        levels = {}
        for t in TARGETS:
            path = directory / f"percentile_{t}.json"
            levels[t] = PercentileLevel.from_dict(read_json(path), path.name)
        model = cls(levels["cpu"].percentile)
        model.levels = levels
        return model


class LastValueForecaster(Forecaster):
    """Naive persistence: the next value equals the last one seen in the same experiment."""

    name = "naive"

    def _fit(self, frame: pd.DataFrame) -> None:
        return None

    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        columns = [TARGET_COLUMNS[t] for t in TARGETS]
        shifted = frame.groupby(EXPERIMENT_ID, sort=False)[columns].shift(1)
        shifted.columns = list(TARGETS)
        return shifted

    def _forecast_next(self, history: pd.DataFrame, context: dict[str, float | str]) -> dict[str, float]:
        last = history.iloc[-1]
        return {t: float(last[TARGET_COLUMNS[t]]) for t in TARGETS}

    def _save(self, directory: Path) -> list[str]:
        return [write_json(directory / "naive.json", {"kind": "naive"})]

    @classmethod
    def _load(cls, directory: Path) -> Self:
        read_json(directory / "naive.json")
        return cls()
