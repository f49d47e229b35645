"""The peak-quantile forecaster's features (``models.peak``), read from the usage column alone.

Per row, from the rows *before* it in its own experiment (no window ever spans two experiments),
relative to the level ``L`` (the mean of the last ``H`` values, at least a floor): the last value, the
highest of the last ``H`` and of the last hour, the mean of the last hour; optionally the last day's
median, 90th and 99th percentile (``long_quantiles``), the highest usage over the ``H`` steps starting
one day earlier as a share of ``L`` and of the level just before it (read up to ``RISE_CAP``) with a
flag saying it is there (``seasonal``), and the first two harmonics of the UTC time of day
(``time_of_day``). Also: the window sizes in rows (``Windows``), the usage ahead of a row
(``forward_windows``), the exact linear-programme quantile regression and the evenly thinned rows the
fit uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mora_platform.models.base import ModelError

HOUR_SECONDS = 3_600
DAY_SECONDS = 86_400
RISE_CAP = 10.0  # the same-time-yesterday peak over the level before it is read up to this share


@dataclass(frozen=True)
class Windows:
    """Window sizes in rows: the held steps, an hour and a day at the training data's spacing."""

    horizon: int
    hour: int
    day: int

    @classmethod
    def for_spacing(cls, horizon_steps: int, step_seconds: float) -> Windows:
        step = max(float(step_seconds), 1e-9)
        return cls(
            max(int(horizon_steps), 1),
            max(round(HOUR_SECONDS / step), 1),
            max(round(DAY_SECONDS / step), 1),
        )


def epoch_index(timestamps: pd.Series) -> pd.DatetimeIndex:
    """UTC timestamps at nanosecond resolution, whatever resolution they were parsed at: the features
    read ``asi8`` as nanoseconds since the epoch. (pandas 3 parses text at microseconds, a loaded
    file is at nanoseconds; read as nanoseconds, microseconds put the time of day a thousand times
    too slow, and a history sent as JSON would have been forecast with features unlike training's.)"""
    return pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True)).as_unit("ns")


def block_starts(experiments: np.ndarray) -> np.ndarray:
    """Indices where a run of equal experiment labels begins (rows of one experiment are contiguous)."""
    labels = np.asarray(experiments)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])


def _blocks(experiments: np.ndarray) -> list[tuple[int, int]]:
    starts = block_starts(experiments)
    ends = np.r_[starts[1:], len(experiments)]
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def _past(
    values: np.ndarray, blocks: list[tuple[int, int]], window: int, stat: str, min_rows: int
) -> np.ndarray:
    """Per row, ``stat`` of the ``window`` values *before* it in its own block (NaN with fewer than
    ``min_rows`` of them)."""
    out = np.full(values.shape, np.nan)
    for a, b in blocks:
        series = pd.Series(values[a:b])
        rolling = series.rolling(window, min_periods=max(min(min_rows, window), 1))
        result = rolling.quantile(float(stat[1:])) if stat.startswith("q") else getattr(rolling, stat)()
        out[a + 1 : b] = result.to_numpy()[:-1]
    return out


def forward_windows(values: np.ndarray, experiments: np.ndarray, steps: int) -> np.ndarray:
    """Per row, the highest of the ``steps`` values from it on in its own block (NaN when the block
    ends before the window does)."""
    out = np.full(len(values), np.nan)
    steps = max(int(steps), 1)
    for a, b in _blocks(experiments):
        if b - a >= steps:
            view = np.lib.stride_tricks.sliding_window_view(values[a:b], steps)
            with np.errstate(invalid="ignore"):
                out[a : b - steps + 1] = np.max(view, axis=1)
    return out


def _seasonal_peak(values: np.ndarray, blocks: list[tuple[int, int]], windows: Windows) -> np.ndarray:
    """Per row ``i``: the highest value over ``[i - day, i - day + H)`` of its block (NaN without a day
    before it); every value used lies before ``i``."""
    out = np.full(values.shape, np.nan)
    day, steps = windows.day, windows.horizon
    if steps > day:
        return out
    forward = forward_windows(values, np.zeros(len(values)), steps)
    for a, b in blocks:
        if b - a > day:
            out[a + day : b] = forward[a : b - day]
    return out


def feature_names(options: Mapping[str, bool]) -> list[str]:
    """The feature columns for the chosen options, in matrix order."""
    names = ["intercept", "last", "max_h", "max_hour", "mean_hour"]
    if options.get("long_quantiles"):
        names += ["q50_day", "q90_day", "q99_day"]
    if options.get("seasonal"):
        names += ["yesterday", "yesterday_rise", "yesterday_seen"]
    if options.get("time_of_day"):
        names += ["sin_day", "cos_day", "sin_half_day", "cos_half_day"]
    return names


def peak_features(
    values: np.ndarray,
    experiments: np.ndarray,
    timestamps_ns: np.ndarray,
    windows: Windows,
    options: Mapping[str, bool],
    min_rows: int,
    level_floor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, L)``: the feature matrix (``feature_names(options)`` columns, relative to ``L``) and the
    level of every row, from the rows before it in its own experiment (see the module docstring)."""
    values = np.asarray(values, dtype="float64")
    blocks = _blocks(np.asarray(experiments))
    h, hour = windows.horizon, windows.hour
    last = _past(values, blocks, 1, "max", 1)
    mean_h = _past(values, blocks, h, "mean", min_rows)
    level = np.maximum(mean_h, level_floor)
    columns = [
        np.ones(len(values)),
        last,
        _past(values, blocks, h, "max", min_rows),
        _past(values, blocks, hour, "max", min_rows),
        _past(values, blocks, hour, "mean", min_rows),
    ]
    if options.get("long_quantiles"):
        columns += [_past(values, blocks, windows.day, f"q{q}", min_rows) for q in (0.5, 0.9, 0.99)]
    relative = [c / level for c in columns[1:]]
    features = [columns[0], *relative]
    if options.get("seasonal"):
        yesterday = _seasonal_peak(values, blocks, windows)
        before = np.full(len(values), np.nan)
        for a, b in blocks:
            if b - a > windows.day:
                before[a + windows.day : b] = mean_h[a : b - windows.day]
        seen = np.isfinite(yesterday) & np.isfinite(before) & (before > 0)
        features += [
            np.where(seen, yesterday / level, 0.0),
            np.where(seen, np.minimum(yesterday / np.where(seen, before, 1.0), RISE_CAP), 0.0),
            seen.astype("float64"),
        ]
    if options.get("time_of_day"):
        seconds = (np.asarray(timestamps_ns, dtype="int64") // 1_000_000_000) % DAY_SECONDS
        angle = 2 * np.pi * seconds / DAY_SECONDS
        features += [np.sin(angle), np.cos(angle), np.sin(2 * angle), np.cos(2 * angle)]
    matrix = np.column_stack(features)
    matrix[~np.isfinite(level)] = np.nan
    return matrix, level


def solve_quantile_regression(
    x: np.ndarray, y: np.ndarray, quantile: float, l1: float = 0.0, weights: np.ndarray | None = None
) -> np.ndarray:
    """``beta`` minimising ``mean(w * pinball_quantile(y - x @ beta)) + l1 * sum|beta[1:]|`` exactly,
    as a linear programme (HiGHS): ``beta = b+ - b-``, residual ``y - x beta = e+ - e-``, all >= 0."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, hstack, identity

    n, p = x.shape
    if n == 0:
        raise ModelError("no rows to fit the quantile regression on")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype="float64")
    w = w / w.sum()
    penalty = np.full(p, float(l1))
    penalty[0] = 0.0
    cost = np.r_[penalty, penalty, quantile * w, (1.0 - quantile) * w]
    design = csr_matrix(x)
    eye = identity(n, format="csr")
    constraints = hstack([design, -design, eye, -eye], format="csr")
    result = linprog(cost, A_eq=constraints, b_eq=y, bounds=(0, None), method="highs")
    if result.status != 0 or result.x is None:
        raise ModelError(f"quantile regression did not solve: {result.message}")
    solution = np.asarray(result.x)
    return np.asarray(solution[:p] - solution[p : 2 * p])


def thin_rows(rows: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` of ``rows``, evenly spaced (deterministic)."""
    if len(rows) <= limit:
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, limit).round().astype(np.int64))]
