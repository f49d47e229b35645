"""The peak-quantile forecaster: what a request held ``H`` steps must cover, forecast directly.

The ensemble's members forecast the *next value*; a request is held for ``H`` steps
(``calibration_horizon_steps``) and must cover every one of them, so the point forecast needs a
head-room calibrated for a peak, which is wide where the usage is noisy. This model forecasts the
usage over the held steps itself: for each row ``i`` of a prepared frame, a linear quantile
regression (pinball loss at ``quantile``) of the usage at the steps ``i .. i + H - 1`` on features
of the rows *before* ``i`` of the same experiment, per target (CPU and memory usage per pod, the
columns a request covers). Its forecast is then calibrated like every other candidate: by the
recent head-room (``models.recent``, on the rows before a request) or, at training time, by a
conformal head-room on the validation rows (``head_room``, covering the peak over the ``H`` steps,
as the fused forecast's training-time head-room does).

It is not a member of the one-step ensemble (``models.members``): members forecast the next value
and are averaged by weights; a horizon quantile averaged with a next-value forecast means nothing.
It is a candidate of its own, with its own fusion: per target, the regression and a **sequence
head** (``models.peak_lstm``: a small LSTM over the shape of the recent usage and of the same hours
yesterday, trained with the same pinball loss on the same targets) are averaged by a weight chosen
on the validation rows (of ``HEAD_WEIGHTS``, the least pinball loss of the fused forecast; 0 keeps
the regression alone). The head is trained only with ``lstm_min_days`` of training data (the
seasonal case it is for) and ``MIN_HEAD_ROWS`` rows with a whole input. Saved as
``peak_quantile.json`` (and ``peak_lstm_<target>.keras`` for a head with a weight) beside the
bundle's other files.

**Target** (``target``): ``step`` (default) samples ``draws`` steps ``k < H`` per row and fits the
usage at ``i + k``, so the model estimates the ``quantile`` of the usage over the held period, what
a request covering each held step with that probability needs; ``peak`` fits the highest usage over
the ``H`` steps instead. Only complete holding windows inside one experiment are used: no window,
of features or of targets, ever spans two experiments.

**Features** (all from the usage column itself, so a request needs nothing but the recent history),
relative to the level ``L`` = the mean of the last ``H`` values (at least ``level_floor``), so the
coefficients carry over when the level moves: the last value, the highest of the last ``H`` and of
the last hour, the mean of the last hour, optionally (``long_quantiles``) the median, 90th and 99th
percentile of the last day; with ``seasonal`` and a day of history before the row, the highest
usage over the ``H`` steps starting one day earlier (same time yesterday), as a share of ``L`` and
of the level just before it (at most ``RISE_CAP``: out of an idle spell that share runs into the
hundreds), with a flag saying it is present; with ``time_of_day`` and at least
``MIN_DAYS_FOR_TIME`` days of training data, the first two harmonics of the UTC time of day. The
forecast is ``L * (x @ beta)``, never below 0. A feature needs at least ``min_rows`` earlier rows
in the experiment; before that a row gets NaN (the candidate does not answer there).

(The features, their windows and the quantile regression's solver are ``models.peak_features``.)

**Inside what it learned**: each target keeps the range of every feature over its training rows
(``bounds``), and a row asked about later has its features clipped into it before ``x @ beta``. A
linear model extrapolates without limit; one feature far outside anything it was fitted on (a ratio
of hundreds where training saw two) once took the forecast to 0 while the usage held at 0.5 cores,
and the request calibrated on it starved the service for the next hour.

**Fit**: the rows of the training split whose holding window is complete, evenly thinned so the
programme has at most ``max_rows`` rows (``draws`` per kept row; deterministic), solved exactly as a
linear programme (SciPy's HiGHS) with a small L1 penalty ``l1`` on the non-intercept coefficients.
Measured at 0.17-0.33 s of CPU per target (synthetic services of 12-30 days at 1-5 minutes, Online
Boutique services of ~3,000 rows), against a budget of about 2 s.

**Which rows count as evidence**: ``unseen`` marks the rows the regression never trained on (after
its experiment's last training row, or of an experiment it did not see); the recent choice judges the
candidate on those only, as it judges every fitted candidate on rows after its fit.

Saved as JSON only (coefficients, feature names, window sizes, the validation head-room and each
experiment's last training row).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mora_platform.data.schema import EXPERIMENT_ID, TIMESTAMP
from mora_platform.features.targets import TARGET_SOURCES
from mora_platform.models.base import ModelLoadError, read_json, write_json
from mora_platform.models.calibration import TargetCalibration, confidence_score, conformal_quantile
from mora_platform.models.peak_features import (
    Windows,
    block_starts,
    epoch_index,
    feature_names,
    forward_windows,
    peak_features,
    solve_quantile_regression,
    thin_rows,
)
from mora_platform.models.peak_lstm import SEQUENCE_PAST, PeakHead, chunk_rows, head_file, sequence_inputs
from mora_platform.models.recent import PEAK_QUANTILE

__all__ = ["PEAK_FILE", "PEAK_QUANTILE", "PeakQuantileConfig", "PeakQuantileModel", "peak_features"]

PEAK_FILE = "peak_quantile.json"
PEAK_TARGETS: tuple[str, ...] = ("cpu", "memory")
MIN_DAYS_FOR_TIME = 2.0  # time-of-day terms only with this many days of training data
MIN_SEASONAL_SHARE = 0.2  # the same-time-yesterday terms only when this share of training rows has them
OPTIONS = ("long_quantiles", "seasonal", "time_of_day")  # optional feature groups
MIN_FIT_ROWS = 30  # fewer complete training windows than this: no model for the target
MIN_HEAD_ROWS = 500  # fewer training rows with a whole sequence than this: no sequence head
HEAD_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the sequence head's weights tried on the validation rows
FORMAT = 1


class PeakQuantileConfig(BaseModel):
    """Settings of the peak-quantile candidate (``TrainingConfig.peak``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="fit the peak-quantile candidate with the bundle")
    quantile: float = Field(default=0.99, gt=0.5, lt=1, description="pinball loss quantile")
    target: Literal["step", "peak"] = Field(
        default="step", description="usage at each held step (step) or its peak over the held steps"
    )
    draws: int = Field(default=4, ge=1, le=64, description="held steps sampled per row (target step)")
    seasonal: bool = Field(default=True, description="same-time-yesterday peak as a feature")
    time_of_day: bool = Field(default=True, description="time-of-day harmonics as features")
    long_quantiles: bool = Field(default=False, description="the last day's percentiles as features")
    min_rows: int = Field(default=5, ge=1, description="earlier rows a row needs in its experiment")
    max_rows: int = Field(default=3_000, ge=100, le=100_000, description="rows the programme is solved on")
    l1: float = Field(default=1e-4, ge=0, description="L1 penalty on the non-intercept coefficients")
    lstm: bool = Field(
        default=False,
        description="train the sequence head (models.peak_lstm) and fuse it (off: measured no better, "
        "twice the training time; see the README)",
    )
    lstm_units: int = Field(default=32, ge=2, le=256, description="the sequence head's LSTM units")
    lstm_learning_rate: float = Field(default=1e-3, gt=0, le=1, description="the sequence head's Adam rate")
    lstm_epochs: int = Field(default=40, ge=1, le=500, description="the sequence head's epochs at most")
    lstm_rows: int = Field(default=6_000, ge=100, le=200_000, description="rows the head trains on at most")
    lstm_min_days: float = Field(
        default=2.0, ge=0, description="days of training data the head needs (shorter: the regression alone)"
    )


@dataclass
class TargetModel:
    """One target's fitted regression and its training-time head-room."""

    coefficients: list[float]
    level_floor: float
    rows: int
    head_room: TargetCalibration | None = None
    validation_cost: float | None = None  # mean request / mean usage on the validation rows
    # per feature, [lowest, highest] over the training rows: rows asked about are clipped into it
    # (None in files written before it was kept: no clipping)
    bounds: list[list[float]] | None = None
    # the sequence head (``models.peak_lstm``) and its weight in the fused forecast (0: the
    # regression alone); ``fusion`` records the validation pinball loss at every weight tried
    lstm_weight: float = 0.0
    fusion: dict[str, Any] | None = None
    head: PeakHead | None = field(default=None, repr=False, compare=False)

    def clip(self, x: np.ndarray) -> np.ndarray:
        """``x`` with every feature clipped into its training range (NaN stays NaN)."""
        if self.bounds is None:
            return x
        low, high = np.asarray(self.bounds, dtype="float64").T
        with np.errstate(invalid="ignore"):
            return np.clip(x, low, high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "coefficients": list(self.coefficients),
            "level_floor": self.level_floor,
            "rows": self.rows,
            "head_room": None if self.head_room is None else asdict(self.head_room),
            "validation_cost": self.validation_cost,
            "bounds": self.bounds,
            "lstm_weight": self.lstm_weight,
            "fusion": self.fusion,
        }

    @classmethod
    def from_dict(cls, data: Any) -> TargetModel:
        head = data.get("head_room")
        return cls(
            coefficients=[float(c) for c in data["coefficients"]],
            level_floor=float(data["level_floor"]),
            rows=int(data["rows"]),
            head_room=None if head is None else TargetCalibration(**head),
            validation_cost=None if data.get("validation_cost") is None else float(data["validation_cost"]),
            bounds=None
            if data.get("bounds") is None
            else [[float(low), float(high)] for low, high in data["bounds"]],
            lstm_weight=float(data.get("lstm_weight") or 0.0),
            fusion=data.get("fusion"),
        )


@dataclass
class PeakQuantileModel:
    """The fitted candidate: per target, ``TargetModel``; see the module docstring."""

    config: PeakQuantileConfig
    windows: Windows
    coverage: float
    features: list[str] = field(default_factory=list)
    targets: dict[str, TargetModel] = field(default_factory=dict)
    fitted_until: pd.Timestamp | None = None  # the last training row the regression saw
    data_end: pd.Timestamp | None = None  # the last row of the frame it was trained with
    data_rows: int = 0
    reasons: dict[str, str] = field(default_factory=dict)  # target -> why it has no model
    seconds: float = 0.0
    # experiment -> its last training row: rows up to it are in-sample for the regression
    train_until: dict[str, pd.Timestamp] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, bool]:
        return {
            "long_quantiles": "q50_day" in self.features,
            "seasonal": "yesterday" in self.features,
            "time_of_day": "sin_day" in self.features,
        }

    # ---- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        prepared: pd.DataFrame,
        train: np.ndarray,
        validation: np.ndarray | None,
        *,
        horizon_steps: int,
        coverage: float,
        config: PeakQuantileConfig | None = None,
        step_seconds: float | None = None,
        targets: Iterable[str] = PEAK_TARGETS,
        relative: bool = False,
        cpu_threads: int = 1,
        seed: int = 0,
    ) -> PeakQuantileModel:
        """Fit on the ``train`` rows of a prepared frame; calibrate each target's training-time
        head-room (covering the peak over ``horizon_steps`` with probability ``coverage``) on the
        ``validation`` rows. A target without ``MIN_FIT_ROWS`` complete training windows gets no
        model (``reasons`` says why)."""
        import time

        from mora_platform.features.targets import median_step_seconds

        started = time.process_time()
        config = config or PeakQuantileConfig()
        train = np.asarray(train, dtype=bool)
        step = step_seconds if step_seconds is not None else median_step_seconds(prepared, 60.0)
        windows = Windows.for_spacing(horizon_steps, step)
        stamps = epoch_index(prepared[TIMESTAMP])
        experiments = prepared[EXPERIMENT_ID].astype(str).to_numpy()
        span_days = (
            float((stamps[train].max() - stamps[train].min()) / pd.Timedelta(days=1)) if train.any() else 0.0
        )
        starts = block_starts(experiments)
        position = np.arange(len(experiments)) - np.repeat(starts, np.diff(np.r_[starts, len(experiments)]))
        seasonal_share = float(np.mean(position[train] > windows.day)) if train.any() else 0.0
        options = {
            "long_quantiles": config.long_quantiles,
            "seasonal": config.seasonal
            and windows.horizon <= windows.day
            and seasonal_share >= MIN_SEASONAL_SHARE,
            "time_of_day": config.time_of_day and span_days >= MIN_DAYS_FOR_TIME,
        }
        model = cls(
            config,
            windows,
            float(coverage),
            features=feature_names(options),
            fitted_until=stamps[train].max() if train.any() else None,
            data_end=stamps.max() if len(stamps) else None,
            data_rows=len(prepared),
        )
        if train.any():
            last = pd.Series(stamps[train]).groupby(experiments[train], sort=False).max()
            model.train_until = {str(e): pd.Timestamp(t) for e, t in last.items()}
        head = config.lstm and span_days >= config.lstm_min_days
        for target in targets:
            values = prepared[TARGET_SOURCES[target][0]].to_numpy(dtype="float64")
            model._fit_target(target, values, experiments, stamps.asi8, train, options)
            if head and target in model.targets:
                model._fit_head(
                    target, values, experiments, stamps.asi8, train, validation, options, (cpu_threads, seed)
                )
            fitted = model.targets.get(target)
            if fitted is not None and validation is not None and np.asarray(validation, dtype=bool).any():
                model._calibrate(fitted, target, values, experiments, stamps.asi8, validation, relative)
        model.seconds = round(time.process_time() - started, 3)
        return model

    def _fit_target(
        self,
        target: str,
        values: np.ndarray,
        experiments: np.ndarray,
        stamps: np.ndarray,
        train: np.ndarray,
        options: dict[str, bool],
    ) -> None:
        config, windows = self.config, self.windows
        finite = values[train & np.isfinite(values)]
        if finite.size == 0:
            self.reasons[target] = "no training values"
            return
        floor = max(1e-3 * float(np.median(np.abs(finite))), 1e-12)
        x, level = peak_features(values, experiments, stamps, windows, options, config.min_rows, floor)
        peak = forward_windows(values, experiments, windows.horizon)
        usable = train & np.isfinite(peak) & np.isfinite(x).all(axis=1)
        draws = config.draws if config.target == "step" else 1
        rows = thin_rows(np.flatnonzero(usable), max(config.max_rows // draws, MIN_FIT_ROWS))
        if len(rows) < MIN_FIT_ROWS:
            self.reasons[target] = f"only {len(rows)} complete training windows (needs {MIN_FIT_ROWS})"
            return
        if config.target == "step":
            rng = np.random.default_rng(0)
            offsets = rng.integers(0, windows.horizon, size=(len(rows), draws))
            design = np.repeat(x[rows], draws, axis=0)
            y = values[(rows[:, None] + offsets).ravel()] / np.repeat(level[rows], draws)
        else:
            design, y = x[rows], peak[rows] / level[rows]
        keep = np.isfinite(y)
        design, y = design[keep], y[keep]
        beta = solve_quantile_regression(design, y, config.quantile, config.l1)
        seen = x[np.flatnonzero(usable)]
        bounds = [
            [float(low), float(high)] for low, high in zip(seen.min(axis=0), seen.max(axis=0), strict=True)
        ]
        self.targets[target] = TargetModel([float(b) for b in beta], floor, len(rows), bounds=bounds)

    def _targets(
        self, values: np.ndarray, experiments: np.ndarray, level: np.ndarray, rows: np.ndarray, seed: int = 0
    ) -> np.ndarray:
        """``(rows, draws)``: what the quantile is fitted on at ``rows`` (complete holding windows),
        relative to the level: ``draws`` sampled held steps (``step``) or the peak over them."""
        steps = self.windows.horizon
        if self.config.target == "peak":
            peak = forward_windows(values, experiments, steps)
            return (peak[rows] / level[rows])[:, None]
        rng = np.random.default_rng(seed)
        offsets = rng.integers(0, steps, size=(len(rows), self.config.draws))
        return values[rows[:, None] + offsets] / level[rows][:, None]

    def _fit_head(
        self,
        target: str,
        values: np.ndarray,
        experiments: np.ndarray,
        stamps: np.ndarray,
        train: np.ndarray,
        validation: np.ndarray | None,
        options: dict[str, bool],
        runtime: tuple[int, int],
    ) -> None:
        """Train the sequence head on the training rows and weigh it against the regression on the
        validation rows: the weight (of ``HEAD_WEIGHTS``) with the least pinball loss of the fused
        forecast. Too few rows for either: no head (``fusion`` says why)."""
        fitted = self.targets[target]
        x, level = self._features(fitted, values, experiments, stamps)
        seq = self._sequences(values, experiments, stamps, level, time_of_day=options["time_of_day"])
        peak = forward_windows(values, experiments, self.windows.horizon)
        complete = np.isfinite(peak) & np.isfinite(seq).all(axis=(1, 2)) & np.isfinite(x).all(axis=1)
        rows = thin_rows(np.flatnonzero(train & complete), self.config.lstm_rows)
        checked = (
            np.flatnonzero(np.asarray(validation, dtype=bool) & complete)
            if validation is not None
            else np.zeros(0, dtype=np.int64)
        )
        if len(rows) < MIN_HEAD_ROWS or len(checked) < MIN_FIT_ROWS:
            fitted.fusion = {
                "reason": f"{len(rows)} training and {len(checked)} validation rows with a whole sequence "
                f"(needs {MIN_HEAD_ROWS} and {MIN_FIT_ROWS})"
            }
            return
        y = self._targets(values, experiments, level, rows)
        keep = np.isfinite(y).all(axis=1)
        cpu_threads, seed = runtime
        head = PeakHead.fit(
            seq[rows[keep]],
            y[keep],
            self.config.quantile,
            units=self.config.lstm_units,
            epochs=self.config.lstm_epochs,
            learning_rate=self.config.lstm_learning_rate,
            seed=seed,
            cpu_threads=cpu_threads,
        )
        linear = fitted.clip(x[checked]) @ np.asarray(fitted.coefficients)
        learned = head.forward(seq[checked])
        truth = self._targets(values, experiments, level, checked, seed=1)
        losses = {}
        for weight in HEAD_WEIGHTS:
            fused = (1 - weight) * linear + weight * learned
            error = truth - fused[:, None]
            losses[weight] = float(
                np.nanmean(np.maximum(self.config.quantile * error, (self.config.quantile - 1) * error))
            )
        best = min(HEAD_WEIGHTS, key=lambda w: (round(losses[w], 12), w))
        fitted.fusion = {
            "pinball": {f"{w:g}": round(v, 6) for w, v in losses.items()},
            "validation_rows": len(checked),
            "training": head.training,
        }
        fitted.lstm_weight = float(best)
        fitted.head = head  # kept in memory at any weight; saved (and loaded) only with a weight

    def _features(
        self, fitted: TargetModel, values: np.ndarray, experiments: np.ndarray, stamps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return peak_features(
            values, experiments, stamps, self.windows, self.options, self.config.min_rows, fitted.level_floor
        )

    def _sequences(
        self,
        values: np.ndarray,
        experiments: np.ndarray,
        stamps: np.ndarray,
        level: np.ndarray,
        time_of_day: bool,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """The sequence head's inputs at ``rows`` (every row when None), at this model's windows."""
        return sequence_inputs(
            values,
            experiments,
            stamps,
            level,
            horizon=self.windows.horizon,
            day=self.windows.day,
            time_of_day=time_of_day,
            rows=rows,
        )

    def _calibrate(
        self,
        fitted: TargetModel,
        target: str,
        values: np.ndarray,
        experiments: np.ndarray,
        stamps: np.ndarray,
        validation: np.ndarray | None,
        relative: bool,
    ) -> None:
        """The training-time head-room on the validation rows: the conformal quantile of (peak over
        the held steps - fused forecast), in units or relative to the forecast, as ``calibrate`` does."""
        validation = np.asarray(validation, dtype=bool)
        predicted = self._forecast(fitted, values, experiments, stamps)
        peak = forward_windows(values, experiments, self.windows.horizon)
        ok = validation & np.isfinite(predicted) & np.isfinite(peak)
        if ok.sum() < 2:
            return
        scale_floor = 0.1 * float(np.median(np.abs(values[ok]))) if relative else 0.0
        scaled = relative and scale_floor > 0
        scale = np.maximum(predicted[ok], scale_floor) if scaled else np.ones(int(ok.sum()))
        q, _ = conformal_quantile((peak[ok] - predicted[ok]) / scale, self.coverage)
        fitted.head_room = TargetCalibration(
            quantile=q,
            confidence=confidence_score(peak[ok], predicted[ok]),
            mae=float(np.mean(np.abs(peak[ok] - predicted[ok]))),
            n=int(ok.sum()),
            source="validation",
            relative=scaled,
            scale_floor=scale_floor if scaled else 0.0,
        )
        requests = np.maximum(predicted[ok] + q * scale, 0.0)
        level_used = float(np.mean(np.abs(values[ok])))
        fitted.validation_cost = float(np.mean(requests)) / level_used if level_used > 0 else None

    # ---- asking ---------------------------------------------------------------------------
    def predict(self, prepared: pd.DataFrame, last: int | None = None) -> pd.DataFrame:
        """Per row of a prepared frame, the forecast for the ``H`` steps from it on, made from the
        rows before it in its own experiment (columns: the targets with a model; NaN where a row has
        too little history). With ``last``, only the last ``last`` rows are forecast (the rows before
        them are read, as context, and left NaN): the sequence head costs time per row forecast."""
        stamps = epoch_index(prepared[TIMESTAMP]).asi8
        experiments = prepared[EXPERIMENT_ID].astype(str).to_numpy()
        n = len(prepared)
        rows = np.arange(0 if last is None else max(n - int(last), 0), n)
        out = pd.DataFrame(index=prepared.index)
        for target, fitted in self.targets.items():
            values = prepared[TARGET_SOURCES[target][0]].to_numpy(dtype="float64")
            column = np.full(n, np.nan)
            column[rows] = self._forecast(fitted, values, experiments, stamps, rows=rows)
            out[target] = column
        return out

    def _forecast(
        self,
        fitted: TargetModel,
        values: np.ndarray,
        experiments: np.ndarray,
        stamps: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """The fused forecast (regression, and the sequence head by its weight where it has an input)
        at ``rows`` (every row when None)."""
        x, level = self._features(fitted, values, experiments, stamps)
        rows = np.arange(len(values)) if rows is None else np.asarray(rows, dtype=np.int64)
        with np.errstate(invalid="ignore"):
            relative = fitted.clip(x[rows]) @ np.asarray(fitted.coefficients)
        if fitted.head is not None and fitted.lstm_weight > 0:
            asked = rows[np.isfinite(relative)]
            seq = self._sequences(values, experiments, stamps, level, self.options["time_of_day"], asked)
            learned = np.full(len(rows), np.nan)
            learned[np.isfinite(relative)] = fitted.head.forward(seq)
            w = fitted.lstm_weight
            relative = np.where(np.isfinite(learned), (1 - w) * relative + w * learned, relative)
        with np.errstate(invalid="ignore"):
            return np.maximum(relative * level[rows], 0.0)

    def unseen(self, prepared: pd.DataFrame) -> np.ndarray:
        """Rows of a prepared frame the regression never trained on: after its experiment's last
        training row, or of an experiment it did not train on."""
        stamps = pd.to_datetime(prepared[TIMESTAMP], utc=True)
        until = prepared[EXPERIMENT_ID].astype(str).map(self.train_until)
        seen = until.notna().to_numpy() & (stamps <= pd.to_datetime(until, utc=True)).to_numpy()
        return ~seen

    def context_rows(self) -> int:
        """How many rows before the first one asked about the features read (a day and an hour, or
        the sequence head's past chunks when they reach further back)."""
        past = SEQUENCE_PAST * chunk_rows(self.windows.horizon)
        return self.windows.day + max(self.windows.hour, past) + self.windows.horizon

    def forecast_next(self, history: pd.DataFrame) -> dict[str, float]:
        """The forecast for the ``H`` steps after the last row of a prepared ``history``, from its last
        experiment's rows (NaN for a target with too little history or no model)."""
        if len(history) == 0:
            return {t: float("nan") for t in self.targets}
        experiments = history[EXPERIMENT_ID].astype(str).to_numpy()
        start = int(block_starts(experiments)[-1])  # the last experiment's rows only
        tail = history.iloc[max(start, len(history) - self.context_rows()) :]
        stamps = epoch_index(tail[TIMESTAMP]).asi8
        gap = int(np.median(np.diff(stamps))) if len(stamps) > 1 else 0
        stamps = np.append(stamps, stamps[-1] + gap)  # the row asked about: the next one
        labels = np.zeros(len(stamps), dtype=np.int64)
        out = {}
        for target, fitted in self.targets.items():
            values = np.append(tail[TARGET_SOURCES[target][0]].to_numpy(dtype="float64"), np.nan)
            out[target] = float(
                self._forecast(fitted, values, labels, stamps, rows=np.array([len(values) - 1]))[0]
            )
        return out

    def describe_fusion(self, target: str) -> str:
        """How ``target``'s forecast is made, for an answer's reasons."""
        fitted = self.targets[target]
        if fitted.head is None or fitted.lstm_weight <= 0:
            why = (
                "no sequence head"
                if fitted.fusion is None
                else "the sequence head earned no weight on validation"
            )
            return f"the quantile regression alone ({why})"
        w = fitted.lstm_weight
        return (
            f"the quantile regression at {1 - w:.0%} and the sequence head at {w:.0%} "
            "(the weight of least pinball loss on the validation rows)"
        )

    def validation_request(self, target: str, point: float) -> float:
        """``point`` plus the training-time head-room of ``target`` (NaN without one)."""
        fitted = self.targets.get(target)
        if fitted is None or fitted.head_room is None or not math.isfinite(point):
            return float("nan")
        return fitted.head_room.request(point)

    # ---- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": PEAK_QUANTILE,
            "config": self.config.model_dump(),
            "windows": asdict(self.windows),
            "coverage": self.coverage,
            "features": list(self.features),
            "targets": {t: m.to_dict() for t, m in self.targets.items()},
            "fitted_until": None if self.fitted_until is None else self.fitted_until.isoformat(),
            "data_end": None if self.data_end is None else self.data_end.isoformat(),
            "data_rows": self.data_rows,
            "reasons": dict(self.reasons),
            "seconds": self.seconds,
            "train_until": {e: t.isoformat() for e, t in self.train_until.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = PEAK_FILE) -> PeakQuantileModel:
        try:
            if data.get("kind") != PEAK_QUANTILE or int(data.get("format", 0)) != FORMAT:
                raise ValueError(f"not a {PEAK_QUANTILE} model of format {FORMAT}")
            model = cls(
                PeakQuantileConfig.model_validate(data["config"]),
                Windows(**{k: int(v) for k, v in data["windows"].items()}),
                float(data["coverage"]),
                features=[str(f) for f in data["features"]],
                targets={str(t): TargetModel.from_dict(m) for t, m in data["targets"].items()},
                fitted_until=_timestamp(data.get("fitted_until")),
                data_end=_timestamp(data.get("data_end")),
                data_rows=int(data.get("data_rows", 0)),
                reasons={str(t): str(r) for t, r in (data.get("reasons") or {}).items()},
                seconds=float(data.get("seconds", 0.0)),
                train_until={str(e): pd.Timestamp(t) for e, t in (data.get("train_until") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{source}: malformed ({exc})") from exc
        known = set(feature_names(dict.fromkeys(OPTIONS, True)))
        if set(model.features) - known or feature_names(model.options) != model.features:
            raise ModelLoadError(f"{source}: unknown feature list {model.features}")
        for target, fitted in model.targets.items():
            if target not in PEAK_TARGETS or len(fitted.coefficients) != len(model.features):
                raise ModelLoadError(f"{source}: target {target!r} does not match the feature list")
            if not all(math.isfinite(c) for c in fitted.coefficients):
                raise ModelLoadError(f"{source}: target {target!r} has non-finite coefficients")
            if fitted.bounds is not None and (
                len(fitted.bounds) != len(model.features)
                or not all(math.isfinite(v) for pair in fitted.bounds for v in pair)
                or any(low > high for low, high in fitted.bounds)
            ):
                raise ModelLoadError(f"{source}: target {target!r} has malformed feature bounds")
            if not 0.0 <= fitted.lstm_weight <= 1.0:
                raise ModelLoadError(
                    f"{source}: target {target!r} has lstm_weight {fitted.lstm_weight} (0 to 1)"
                )
        return model

    def file_names(self) -> list[str]:
        """The files ``save`` writes: ``peak_quantile.json`` and a sequence head per target using one."""
        heads = [head_file(t) for t, m in self.targets.items() if m.head is not None and m.lstm_weight > 0]
        return [PEAK_FILE, *heads]

    def save(self, directory: Path) -> str:
        """Write ``peak_quantile.json`` (and the sequence heads in use) into ``directory``; returns the
        JSON's file name (``file_names`` lists them all)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        for target, fitted in self.targets.items():
            if fitted.head is not None and fitted.lstm_weight > 0:
                fitted.head.save(Path(directory), target)
        return write_json(Path(directory) / PEAK_FILE, self.to_dict())

    @classmethod
    def load(cls, directory: Path) -> PeakQuantileModel:
        model = cls.from_dict(read_json(Path(directory) / PEAK_FILE))
        for target, fitted in model.targets.items():
            if fitted.lstm_weight > 0:
                fitted.head = PeakHead.load(Path(directory), target)
        return model


def _timestamp(value: Any) -> pd.Timestamp | None:
    return None if value in (None, "") else pd.Timestamp(value)
