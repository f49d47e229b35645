"""Min-max scaling fitted on the training part only, stored as JSON (never pickle)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class MinMaxScaler:
    """Per-column ``(x - min) / (max - min)``; a constant column scales to 0 (span treated as 1)."""

    columns: list[str]
    minimum: np.ndarray
    span: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, columns: Sequence[str]) -> MinMaxScaler:
        """Learn min and span per column from ``values`` (n, len(columns)); NaNs are ignored."""
        values = np.asarray(values, dtype="float64")
        if values.ndim != 2 or values.shape[1] != len(columns):
            raise ValueError(f"expected an (n, {len(columns)}) array, got shape {values.shape}")
        if values.shape[0] == 0:
            raise ValueError("cannot fit a scaler on zero rows")
        with np.errstate(all="ignore"):
            lo = np.nanmin(values, axis=0)
            hi = np.nanmax(values, axis=0)
        lo = np.where(np.isfinite(lo), lo, 0.0)
        hi = np.where(np.isfinite(hi), hi, lo)
        span = hi - lo
        span = np.where(span > 0, span, 1.0)
        return cls(list(columns), lo, span)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale; the last axis must be the columns."""
        return (np.asarray(values, dtype="float64") - self.minimum) / self.span

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Undo ``transform``."""
        return np.asarray(values, dtype="float64") * self.span + self.minimum

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "minimum": [float(v) for v in self.minimum],
            "span": [float(v) for v in self.span],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MinMaxScaler:
        """Rebuild from ``to_dict`` output; raises ``ValueError`` on malformed input."""
        try:
            columns = [str(c) for c in data["columns"]]
            lo = np.asarray(data["minimum"], dtype="float64")
            span = np.asarray(data["span"], dtype="float64")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed scaler: {exc}") from exc
        if not (len(columns) == lo.shape[0] == span.shape[0]) or np.any(span <= 0):
            raise ValueError("malformed scaler: columns, minimum and span disagree or span <= 0")
        return cls(columns, lo, span)
