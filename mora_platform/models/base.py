"""The forecaster contract shared by every member and by the ensemble.

A forecaster works on a *prepared* frame (``features.prepare_frame``: sorted by experiment and
time, with ``target_*`` columns). ``fit(train)`` learns from the training rows only.
``predict(frame)`` returns, for every row, a one-step-ahead forecast of the three targets that
uses only earlier rows of the same experiment (NaN where the member cannot answer).
``forecast_next(history, context)`` is the serving path: the forecast for the step after the
end of ``history``. The public methods validate and delegate to ``_fit`` / ``_predict`` /
``_forecast_next``; ``save(dir)`` writes JSON / ``.keras`` files only, ``load(dir)`` reads them.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from mora_platform.data.schema import EXPERIMENT_ID, LOAD_USERS, REPLICA_COUNT, TIMESTAMP
from mora_platform.features.targets import TARGET_COLUMNS
from mora_platform.recommend.types import TARGETS

Context = Mapping[str, float | str]


class ModelError(RuntimeError):
    """A forecaster could not be fitted or asked."""


class NotFittedError(ModelError):
    """``predict`` / ``save`` before ``fit``."""


class ModelLoadError(ModelError):
    """A saved file is missing or cannot be parsed; the message names the file."""


def read_json(path: Path) -> Any:
    """Parse a JSON file or raise ``ModelLoadError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path.name}: file missing in {path.parent}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path.name}: cannot parse ({exc})") from exc


def write_json(path: Path, data: Any) -> str:
    """Write compact JSON; returns the file name (bundles list their files)."""
    path.write_text(json.dumps(data, separators=(",", ":"), allow_nan=False), encoding="utf-8")
    return path.name


def empty_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """An all-NaN prediction frame aligned with ``frame``."""
    return pd.DataFrame(np.nan, index=frame.index, columns=list(TARGETS), dtype="float64")


def check_prepared(frame: pd.DataFrame, *, need_rows: bool = True) -> None:
    """Raise ``ValueError`` if ``frame`` is not a prepared frame."""
    missing = [c for c in (TIMESTAMP, EXPERIMENT_ID, *TARGET_COLUMNS.values()) if c not in frame.columns]
    if missing:
        raise ValueError(f"not a prepared frame (use features.prepare_frame): missing {', '.join(missing)}")
    if need_rows and len(frame) == 0:
        raise ValueError("frame has no rows")


def known_context(frame: pd.DataFrame) -> pd.DataFrame:
    """A prepared ``frame`` (each experiment's rows together, in time order) with the load regressors
    (``load_users``, ``replica_count``) of each row replaced by the previous row's in the same experiment
    (the first row of an experiment keeps its own): what a request without a ``context`` knows when it
    forecasts that row, since ``forecast_next`` reads the last row's."""
    columns = [c for c in (LOAD_USERS, REPLICA_COUNT) if c in frame.columns]
    if not columns or len(frame) == 0:
        return frame
    labels = frame[EXPERIMENT_ID].to_numpy()
    first = np.r_[True, labels[1:] != labels[:-1]]
    lagged = {}
    for column in columns:
        values = frame[column].to_numpy()
        lagged[column] = np.where(first, values, np.r_[values[:1], values[:-1]])
    return frame.assign(**lagged)


class Forecaster(ABC):
    """Base class: public methods validate, subclasses implement the underscored ones."""

    name: ClassVar[str] = "forecaster"
    #: its prediction for a row reads that row's own load regressors (Prophet): a request knows only the
    #: rows before it, so ``EnsembleForecaster.member_predictions(as_asked=True)`` gives it the last ones
    reads_row_context: ClassVar[bool] = False

    def __init__(self) -> None:
        self.fitted = False
        self.fallbacks: list[str] = []

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn from ``frame`` (training rows only); returns self."""
        check_prepared(frame)
        self.fallbacks = []
        self._fit(frame)
        self.fitted = True
        return self

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One-step-ahead forecasts for every row (columns ``TARGETS``, index of ``frame``)."""
        self._require_fitted()
        check_prepared(frame, need_rows=False)
        if len(frame) == 0:
            return empty_predictions(frame)
        out = self._predict(frame)
        return out.reindex(index=frame.index, columns=list(TARGETS))

    def forecast_next(self, history: pd.DataFrame, context: Context | None = None) -> dict[str, float]:
        """Forecast of each target for the step after the last row of ``history`` (NaN if unknown)."""
        self._require_fitted()
        check_prepared(history)
        return self._forecast_next(history, dict(context or {}))

    def save(self, directory: Path) -> list[str]:
        """Write this forecaster's files into ``directory``; returns the file names."""
        self._require_fitted()
        directory.mkdir(parents=True, exist_ok=True)
        return self._save(directory)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Rebuild a fitted forecaster from ``save`` output; ``ModelLoadError`` names a bad file."""
        if not directory.is_dir():
            raise ModelLoadError(f"{directory}: not a directory")
        model = cls._load(directory)
        model.fitted = True
        return model

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(f"{self.name}: call fit() first")

    @abstractmethod
    def _fit(self, frame: pd.DataFrame) -> None: ...

    @abstractmethod
    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame: ...

    @abstractmethod
    def _forecast_next(self, history: pd.DataFrame, context: dict[str, float | str]) -> dict[str, float]: ...

    @abstractmethod
    def _save(self, directory: Path) -> list[str]: ...

    @classmethod
    @abstractmethod
    def _load(cls, directory: Path) -> Self: ...
