"""The held requests of a loaded bundle: the recent head-room, the training-time one, and which answers.

``HeldRequests`` is the part of ``training.bundle.ServiceModel`` that turns a caller's history into the CPU
and memory requests held for ``H`` steps (``models.recent`` has the calibration itself):

- ``recent_requests``: per target, the cheapest candidate (the fused forecast, the peak-quantile forecast
  of the usage over the held steps, the no-fit rules of ``RECENT_RULES``) calibrated on the history's last
  rows, each fitted candidate judged only on rows it never trained on;
- ``validation_kept`` / ``peak_validation_kept``: how the training-time head-room of the fused forecast and
  of the peak-quantile forecast did on those rows;
- ``held_requests``: the *auto* head-room, the recent one unless a training-time one kept its promise there
  at no higher cost.

The mixin reads the bundle's ``ensemble``, ``calibration``, ``config``, ``peak`` and ``metrics`` and
prepares rows with ``ServiceModel._prepared``; predictions over the same history are computed once per
answer (``_recent_cache``, ``_peak_cache``).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from mora_platform.data.schema import EXPERIMENT_ID, TIMESTAMP
from mora_platform.features.targets import TARGET_COLUMNS, TARGET_SOURCES
from mora_platform.models.calibration import FUSED, Calibration
from mora_platform.models.ensemble import EnsembleForecaster, NextForecast
from mora_platform.models.peak import PeakQuantileModel
from mora_platform.models.recent import (
    DRIFT_WINDOWS,
    KEPT_TOLERANCE,
    LEVEL_BAND,
    MIN_KEPT_WINDOWS,
    MIN_RECENT_ORIGINS,
    PEAK_QUANTILE,
    PEAK_WINDOW_SECONDS,
    RECENT_CANDIDATES,
    RECENT_PEAK,
    RECENT_ROWS,
    RECENT_RULES,
    VALIDATION,
    RecentChoice,
    choose_recent,
    holding_windows,
    min_recent_windows,
    rule_predictions,
)
from mora_platform.recommend.types import TARGETS
from mora_platform.training.config import TrainingConfig

MOVING_AVERAGE = "moving-average"
#: issue 16: the peak-quantile candidate with its training-time head-room, as a source of a request
PEAK_VALIDATION = f"{PEAK_QUANTILE}-validation"
PEAK_WINDOW = pd.Timedelta(seconds=PEAK_WINDOW_SECONDS)


@dataclass(frozen=True)
class HeldRequest:
    """The request for a held period and what set it: ``validation`` (the training-time head-room)
    or the recent candidate chosen (``fused``, ``recent-peak``, ...), with its point forecast."""

    request: float
    point: float
    source: str


@dataclass(frozen=True)
class KeptCheck:
    """How the validation head-room did on rows after the fit: share of held steps covered, the
    complete holding windows judged, and its mean request relative to the mean usage there."""

    share: float
    windows: int
    relative_cost: float


class HeldRequests:
    """The held-request methods of ``ServiceModel`` (see the module docstring)."""

    ensemble: EnsembleForecaster
    calibration: Calibration
    config: TrainingConfig
    metrics: dict[str, Any]
    peak: PeakQuantileModel | None
    _recent_cache: Any
    _peak_cache: Any

    def _prepared(self, history: pd.DataFrame, tail_rows: int | None = None) -> pd.DataFrame:
        raise NotImplementedError  # ServiceModel's

    def _latest_window(self, prepared: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError  # ServiceModel's

    def recent_requests(
        self,
        history: pd.DataFrame,
        steps: int | None = None,
        coverage: float | None = None,
        rows: int = RECENT_ROWS,
        fitted_until: pd.Timestamp | None = None,
        peak_window: pd.Timedelta | None = PEAK_WINDOW,
        candidates: Collection[str] | None = RECENT_CANDIDATES,
    ) -> dict[str, RecentChoice | None]:
        """Per target, the request after ``history`` calibrated on its last ``rows`` rows
        (``models.recent``): the cheapest candidate that covered each step of the usage held over
        ``steps`` steps (default: the calibrated horizon) with probability ``coverage``.

        Candidates: the fused forecast, each member, the peak-quantile forecast of the usage over
        the held steps (``models.peak``, when the bundle has one), a moving average of the last
        ``seq_len`` values, the recent peak (the highest usage over ``peak_window`` before each
        row; None leaves it out) and the other rules of ``RECENT_RULES`` (the hour's 95th percentile,
        the peak of the last 15 minutes); these need no fit. ``candidates`` limits the choice to
        those names (default ``RECENT_CANDIDATES``: the fused forecast, the peak-quantile forecast, the
        recent peak, the hour's p95 and the 15 minutes' peak; None offers every one). The peak-quantile forecast is judged only on
        the rows its regression never trained on (``PeakQuantileModel.unseen``), under the same
        half-the-windows rule. A fitted candidate is judged only on rows after ``fitted_until`` (the
        end of its training data), where its residuals are out-of-sample, and is offered only once those rows
        hold at least half the holding windows at hand; without ``fitted_until`` every recent row
        counts. Each candidate needs ``min_recent_windows`` windows (``MIN_RECENT_ORIGINS``, and
        at least an hour of them at the rows' spacing). A memory request is never below
        the last observed memory usage (what the process holds now). ``history`` is taken in the
        caller's time order, so holding windows run across experiment boundaries as a held request
        does.
        ``None`` for a target with too little recent history.
        """
        steps = int(steps or self.calibration.horizon_steps)
        coverage = float(coverage or self.calibration.coverage)
        recent, answer, members, fused = self._recent_predictions(history, steps, rows)
        unseen = _after(recent, fitted_until)
        span = max(self.config.effective_seq_len, 1)
        # the no-fit rules offered (``RECENT_RULES``) in rows of this history; ``peak_window`` sets the
        # recent peak's
        gap = _median_gap(recent)
        rule_rows: dict[str, tuple[str | float, int]] = {}
        for name, (statistic, seconds) in RECENT_RULES.items():
            window = peak_window if name == RECENT_PEAK else pd.Timedelta(seconds=seconds)
            rows_of_rule = _rows_in(gap, window)
            if rows_of_rule and (candidates is None or name in candidates):
                rule_rows[name] = (statistic, rows_of_rule)
        # a fitted candidate is judged on at least half the holding windows at hand: judged on the
        # few rows since its fit it would win on luck as often as on merit
        starts = max(len(recent) - steps + 1, 0)
        min_windows = min_recent_windows(gap.total_seconds() if gap is not None else None)
        fitted_ok = int(unseen[:starts].sum()) >= max(min_windows, starts // 2)
        peak_offers = self._peak_offers(history, recent, steps, rows, starts, min_windows)  # issue 16
        out: dict[str, RecentChoice | None] = {}
        for t in TARGETS:
            target = recent[TARGET_COLUMNS[t]].astype("float64")
            average = target.rolling(span, min_periods=span).mean().shift(1).to_numpy()
            now_average = float(target.tail(span).mean()) if len(target) >= span else float("nan")
            now_fused = answer.point[t] if answer.mode == FUSED else float("nan")
            offered = {MOVING_AVERAGE: (average, now_average)}
            if fitted_ok:
                offered[FUSED] = (np.where(unseen, fused[t].to_numpy(dtype="float64"), np.nan), now_fused)
            usage = recent[TARGET_SOURCES[t][0]].to_numpy(dtype="float64")
            for name, (statistic, rows_of_rule) in rule_rows.items():
                offered[name] = rule_predictions(usage, statistic, rows_of_rule)
            for name, predicted in members.items():
                now = answer.members.get(name, {}).get(t, float("nan"))
                values = predicted[t].to_numpy(dtype="float64")
                if name == "naive":  # the last value has nothing fitted to the past
                    offered[name] = (values, now)
                elif fitted_ok:
                    offered[name] = (np.where(unseen, values, np.nan), now)
            if t in peak_offers:  # issue 16
                offered[PEAK_QUANTILE] = peak_offers[t]
            if candidates is not None:
                offered = {name: offer for name, offer in offered.items() if name in candidates}
            choice = choose_recent(
                usage,
                offered,
                steps,
                coverage,
                min_origins=min_windows,
                relative=self.config.head_room == "relative",
                drift_windows=DRIFT_WINDOWS,
                level_band=LEVEL_BAND,
            )
            if choice is not None and t == "memory" and np.isfinite(usage[-1]) and choice.request < usage[-1]:
                # memory is not given back while the process runs: never ask for less than it holds now
                choice = replace(choice, request=float(usage[-1]))
            out[t] = choice
        return out

    # --- issue 16: the peak-quantile candidate over the recent rows ------------------------------
    def _peak_predictions(
        self, history: pd.DataFrame, recent: pd.DataFrame, steps: int, rows: int
    ) -> tuple[pd.DataFrame, np.ndarray, dict[str, float]] | None:
        """The peak-quantile forecasts over ``recent`` (the rows ``_recent_predictions`` prepared),
        from a longer tail of ``history`` so each row's features see as far back as in training, the
        rows its regression never trained on, and its forecast now; None without a candidate (the
        last call's result is reused for the same history)."""
        if self.peak is None:
            return None
        last = str(history[TIMESTAMP].iloc[-1]) if len(history) else None
        key = (len(history), last, steps, rows)
        if self._peak_cache is not None and self._peak_cache[0] == key:
            return self._peak_cache[1]
        longer = self._prepared(history, rows + steps + self.peak.context_rows())
        tail = longer.tail(len(recent))
        same = (
            len(tail) == len(recent)
            and np.array_equal(tail[TIMESTAMP].to_numpy(), recent[TIMESTAMP].to_numpy())
            and np.array_equal(tail[EXPERIMENT_ID].to_numpy(), recent[EXPERIMENT_ID].to_numpy())
        )
        if same:  # only the recent rows are forecast (the sequence head costs time per row)
            aligned = self.peak.predict(longer, last=len(recent)).tail(len(recent)).set_axis(recent.index)
        else:  # the two tails were prepared into different orders: match rows by experiment and time
            predicted = self.peak.predict(longer)
            keys = [EXPERIMENT_ID, TIMESTAMP]
            table = pd.concat([longer[keys], predicted], axis=1).drop_duplicates(keys, keep="last")
            aligned = recent[keys].merge(table, on=keys, how="left").drop(columns=keys).set_axis(recent.index)
        result = (aligned, self.peak.unseen(recent), self.peak.forecast_next(longer))
        self._peak_cache = (key, result)
        return result

    def _peak_offers(
        self,
        history: pd.DataFrame,
        recent: pd.DataFrame,
        steps: int,
        rows: int,
        starts: int,
        min_windows: int = MIN_RECENT_ORIGINS,
    ) -> dict[str, tuple[np.ndarray, float]]:
        """Per target, the peak-quantile candidate as ``choose_recent`` takes it (its forecasts on the
        rows it never trained on, and now), when those rows hold at least half the holding windows at
        hand (as for every fitted candidate)."""
        found = self._peak_predictions(history, recent, steps, rows)
        if found is None:
            return {}
        predicted, unseen, now = found
        if int(unseen[:starts].sum()) < max(min_windows, starts // 2):
            return {}
        return {
            t: (np.where(unseen, predicted[t].to_numpy(dtype="float64"), np.nan), float(now[t]))
            for t in predicted.columns
            if t in now
        }

    def peak_validation_kept(
        self,
        history: pd.DataFrame,
        steps: int | None = None,
        rows: int = RECENT_ROWS,
        fitted_until: pd.Timestamp | None = None,
    ) -> dict[str, tuple[KeptCheck, HeldRequest]]:
        """Per target with a peak-quantile model and a training-time head-room: how that head-room did
        over the last ``rows`` rows after ``fitted_until`` (as ``validation_kept``), and the request it
        gives now (source ``peak-quantile-validation``)."""
        steps = int(steps or self.calibration.horizon_steps)
        recent, _, _, _ = self._recent_predictions(history, steps, rows)
        found = self._peak_predictions(history, recent, steps, rows)
        if found is None or self.peak is None:
            return {}
        predicted, _, now = found
        unseen = _after(recent, fitted_until)
        out: dict[str, tuple[KeptCheck, HeldRequest]] = {}
        for t in predicted.columns:
            fitted = self.peak.targets.get(t)
            if fitted is None or fitted.head_room is None or not np.isfinite(now.get(t, np.nan)):
                continue
            point = np.where(unseen, predicted[t].to_numpy(dtype="float64"), np.nan)
            requests = np.maximum(point + fitted.head_room.head_room(point), 0.0)
            usage = recent[TARGET_SOURCES[t][0]].to_numpy(dtype="float64")
            request = HeldRequest(self.peak.validation_request(t, now[t]), float(now[t]), PEAK_VALIDATION)
            out[t] = (kept_check(usage, requests, steps), request)
        return out

    # --- end issue 16 ---

    def validation_kept(
        self,
        history: pd.DataFrame,
        steps: int | None = None,
        rows: int = RECENT_ROWS,
        fitted_until: pd.Timestamp | None = None,
    ) -> dict[str, KeptCheck]:
        """Per target, how the validation head-room of the fused forecast did over the last ``rows``
        rows after ``fitted_until`` (``KeptCheck``): whether the training-time calibration still
        keeps its promise on data it never saw, and at what cost (comparable with
        ``RecentChoice.relative_cost``)."""
        steps = int(steps or self.calibration.horizon_steps)
        recent, _, _, fused = self._recent_predictions(history, steps, rows)
        unseen = _after(recent, fitted_until)
        kept: dict[str, KeptCheck] = {}
        for t in TARGETS:
            point = np.where(unseen, fused[t].to_numpy(dtype="float64"), np.nan)
            requests = np.maximum(point + self.calibration.for_mode(FUSED)[t].head_room(point), 0.0)
            usage = recent[TARGET_SOURCES[t][0]].to_numpy(dtype="float64")
            kept[t] = kept_check(usage, requests, steps)
        return kept

    def _recent_predictions(
        self, history: pd.DataFrame, steps: int, rows: int
    ) -> tuple[pd.DataFrame, NextForecast, dict[str, pd.DataFrame], pd.DataFrame]:
        """The last ``rows + steps`` rows prepared, the answer now, each member's and the fused
        predictions over them (the last call's result is reused for the same history)."""
        last = str(history[TIMESTAMP].iloc[-1]) if len(history) else None
        key = (len(history), last, steps, rows)
        if self._recent_cache is not None and self._recent_cache[0] == key:
            return self._recent_cache[1]
        recent = self._prepared(history, rows + steps)
        answer = self.ensemble.explain_next(self._latest_window(recent), {})
        # as a request without a context has them: Prophet reads the last row's load, not the row's own
        members = self.ensemble.member_predictions(recent, as_asked=True)
        fused = self.ensemble.mode_predictions(members)[FUSED]
        result = (recent, answer, members, fused)
        self._recent_cache = (key, result)
        return result

    @property
    def fitted_until(self) -> pd.Timestamp | None:
        """The last timestamp of the training data (``metrics.json``'s data window), if recorded."""
        end = (self.metrics.get("data_window") or {}).get("end")
        return pd.Timestamp(end) if end else None

    def held_requests(
        self,
        history: pd.DataFrame,
        steps: int | None = None,
        rows: int = RECENT_ROWS,
        fitted_until: pd.Timestamp | None = None,
        candidates: Collection[str] | None = RECENT_CANDIDATES,
    ) -> dict[str, HeldRequest]:
        """CPU and memory requests after ``history``, held for ``steps`` steps, head-room "auto".

        The recent head-room (``recent_requests`` over ``candidates``) answers, unless the
        training-time head-room, judged on at least as many (half the chosen candidate's) holding
        windows after the fit, covered them as promised (within ``KEPT_TOLERANCE``) at no higher
        relative cost. The peak-quantile candidate's training-time head-room (``peak_validation_kept``,
        source ``peak-quantile-validation``) is judged the same way when the bundle has one and
        ``candidates`` offers it; the cheaper of the two kept ones answers. With too little history
        for any recent candidate, the fused forecast's training-time head-room answers.
        ``fitted_until`` defaults to the end of the training data.
        """
        steps = int(steps or self.calibration.horizon_steps)
        fitted_until = fitted_until if fitted_until is not None else self.fitted_until
        recent = self.recent_requests(
            history, steps, rows=rows, fitted_until=fitted_until, candidates=candidates
        )
        kept = self.validation_kept(history, steps, rows=rows, fitted_until=fitted_until)
        peak_kept = self.peak_validation_kept(history, steps, rows=rows, fitted_until=fitted_until)
        _, answer, _, _ = self._recent_predictions(history, steps, rows)
        held = self.calibration.for_mode(answer.mode)
        target = self.calibration.coverage - KEPT_TOLERANCE
        out: dict[str, HeldRequest] = {}
        for t in ("cpu", "memory"):
            point = float(answer.point[t])
            choice = recent.get(t)
            validation = HeldRequest(held[t].request(point), point, VALIDATION)
            if choice is None:
                out[t] = validation
                continue
            # a training-time head-room answers when it kept its promise on as many unseen windows at
            # no higher cost than the recent one; of two such (issue 16: the fused forecast's and the
            # peak-quantile forecast's), the cheaper, the fused one on a tie
            trained = [(kept[t], validation)]
            if t in peak_kept and (candidates is None or PEAK_QUANTILE in candidates):
                trained.append(peak_kept[t])
            kept_promise = [
                (check.relative_cost, k, request)
                for k, (check, request) in enumerate(trained)
                if check.windows >= max(MIN_KEPT_WINDOWS, choice.origins // 2)
                and check.share >= target
                and check.relative_cost <= choice.relative_cost
                and math.isfinite(request.request)
            ]
            if kept_promise:
                out[t] = min(kept_promise, key=lambda item: (item[0], item[1]))[2]
            else:
                out[t] = HeldRequest(choice.request, choice.point, choice.candidate)
        return out


def kept_check(usage: np.ndarray, requests: np.ndarray, steps: int) -> KeptCheck:
    """How ``requests`` (one per row, NaN where not judged) held over ``steps`` rows covered ``usage``:
    the share of held steps covered, the complete windows judged and the mean request relative to the
    mean usage there (comparable with ``RecentChoice.relative_cost``)."""
    windows, held = holding_windows(usage, requests, steps)
    share = float(np.mean(windows <= held[:, None])) if len(held) else float("nan")
    level = float(np.mean(np.abs(windows))) if len(held) else 0.0
    cost = float(np.mean(held)) / level if level > 0 else float("inf")
    return KeptCheck(share, len(held), cost)


def _median_gap(frame: pd.DataFrame) -> pd.Timedelta | None:
    """The median positive spacing of ``frame``'s timestamps; None with fewer than two distinct ones."""
    if len(frame) < 2:
        return None
    gaps = frame[TIMESTAMP].diff().dropna()
    gaps = gaps[gaps > pd.Timedelta(0)]
    return None if gaps.empty else pd.Timedelta(gaps.median())


def _rows_in(gap: pd.Timedelta | None, span: pd.Timedelta | None) -> int:
    """How many rows ``gap`` apart cover ``span``; 0 without a span or spacing."""
    if span is None or gap is None:
        return 0
    return max(round(float(pd.Timedelta(span) / gap)), 1)


def _after(frame: pd.DataFrame, moment: pd.Timestamp | None) -> np.ndarray:
    """Rows of ``frame`` later than ``moment`` (every row when it is None)."""
    if moment is None:
        return np.ones(len(frame), dtype=bool)
    return (frame[TIMESTAMP] > pd.Timestamp(moment)).to_numpy()
