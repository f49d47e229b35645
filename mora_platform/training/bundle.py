"""A trained service on disk, and the fast path that answers recommendation requests from it.

Bundle files (written by ``train_service``): ``ensemble.json``, the members' files
(``prophet_{target}.json`` or ``percentile_{target}.json``, ``prophet_grid.json``,
``lstm.keras``, ``scaler.json``), ``calibration.json``, ``config.json``, ``metrics.json`` and
``history_tail.json`` (the last ``seq_len`` rows of the latest experiment, prepared).
Checksums are the registry's job; loading refuses any file it cannot parse, naming it.

A request: the ensemble's next-step forecast (Prophet from its precomputed grid, the LSTM by a
NumPy forward pass) plus the calibrated head-room of the mode that answered (covering the peak
over ``calibration_horizon_steps``, see ``models.calibration``), then the config's floors and
rounding (``recommend.policy``). ``context`` may set ``load_users`` and ``replica_count``
(Prophet's regressors); the LSTM forecasts from the history alone. When the caller sends a history
long enough to judge on, the CPU and memory head-room is the *auto* one (``held_requests``): set on
that history's last rows for the cheapest of the fused forecast, the recent peak and (issue 16) the
peak-quantile forecast of the usage over the held steps (``peak_quantile.json``, ``models.peak``,
when the bundle has one), unless a training-time head-room kept its promise there at no higher cost.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mora_platform.data.schema import (
    EXPERIMENT_ID,
    REPLICA_COUNT,
    SCOPE_SERVICE,
    SERVICE,
    TIMESTAMP,
    USAGE_SCOPE,
)
from mora_platform.features.targets import (
    AS_RECORDED,
    BUSIEST,
    PODS,
    TARGET_COLUMNS,
    TARGET_SOURCES,
    FeatureError,
    pod_usage,
    prepare_frame,
)
from mora_platform.models.base import ModelLoadError, read_json
from mora_platform.models.calibration import FUSED, Calibration
from mora_platform.models.ensemble import OK, EnsembleForecaster, NextForecast
from mora_platform.models.peak import PeakQuantileModel  # issue 16
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
from mora_platform.recommend.policy import build_recommendation
from mora_platform.recommend.types import TARGETS, MemberContribution, Recommendation
from mora_platform.recommend.workload import WorkloadState
from mora_platform.training.bundle_data import (
    fill_unavailable,
    history_beyond_training,
    read_history_tail,
    read_peak_candidate,
    unavailable_from,
)
from mora_platform.training.config import TrainingConfig

CONFIG_FILE = "config.json"
CALIBRATION_FILE = "calibration.json"
METRICS_FILE = "metrics.json"
MOVING_AVERAGE = "moving-average"
#: issue 16: the peak-quantile candidate with its training-time head-room, as a source of a request
PEAK_VALIDATION = f"{PEAK_QUANTILE}-validation"
PEAK_WINDOW = pd.Timedelta(seconds=PEAK_WINDOW_SECONDS)
PREPARED_CACHE_SIZE = 4  # prepared histories kept per model (see ``ServiceModel._prepared``)


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


#: ``ServiceModel.unavailable_targets``' source label in answers (``recommend.answering``).
UNAVAILABLE = "unavailable"


@dataclass
class ServiceModel:
    """A loaded bundle: ensemble, calibration, config and the stored history tail.

    ``unavailable_targets`` (target -> readable reason) are the targets the training data had no
    values for: the models carry a constant for them, and answers give NaN (source ``unavailable``).
    """

    service: str
    ensemble: EnsembleForecaster
    calibration: Calibration
    config: TrainingConfig
    history: pd.DataFrame
    metrics: dict[str, Any]
    directory: Path | None = None
    _recent_cache: Any = field(default=None, repr=False, compare=False)
    unavailable_targets: dict[str, str] = field(default_factory=dict)
    # issue 16: the peak-quantile candidate (``peak_quantile.json``; None in bundles without one)
    peak: PeakQuantileModel | None = None
    _peak_cache: Any = field(default=None, repr=False, compare=False)
    _tail_basis: tuple[pd.DataFrame, dict[str, str]] | None = field(default=None, repr=False, compare=False)
    _prepared_cache: list[tuple[tuple[Any, ...], pd.DataFrame]] = field(
        default_factory=list, repr=False, compare=False
    )

    @classmethod
    def load(cls, directory: Path) -> ServiceModel:
        """Read a bundle directory; ``ModelLoadError`` names any file it cannot parse."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelLoadError(f"{directory}: bundle directory not found")
        meta = read_json(directory / CONFIG_FILE)
        try:
            service = str(meta["service"])
            config = TrainingConfig.model_validate(meta["config"])
            unavailable = unavailable_from(meta)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{CONFIG_FILE}: malformed ({exc})") from exc
        try:
            calibration = Calibration.from_dict(read_json(directory / CALIBRATION_FILE))
        except ValueError as exc:
            raise ModelLoadError(f"{CALIBRATION_FILE}: {exc}") from exc
        metrics = read_json(directory / METRICS_FILE)
        if not isinstance(metrics, dict):
            raise ModelLoadError(f"{METRICS_FILE}: not a JSON object")
        ensemble = EnsembleForecaster.load(directory)
        history = read_history_tail(directory)
        return cls(
            service,
            ensemble,
            calibration,
            config,
            history,
            metrics,
            directory,
            unavailable_targets=unavailable,
            peak=read_peak_candidate(directory, metrics),
        )

    def prepare_history(self, history: pd.DataFrame) -> pd.DataFrame:
        """A caller's canonical frame -> prepared rows of this service's latest experiment."""
        return self._latest_window(self._prepared(history))

    def _prepared(self, history: pd.DataFrame, tail_rows: int | None = None) -> pd.DataFrame:
        """This service's rows of a caller's frame (the last ``tail_rows`` of them), prepared."""
        if SERVICE in history.columns:
            history = history[history[SERVICE].astype(str) == self.service]
        if history.empty:
            raise ValueError(f"history has no rows for service {self.service!r}")
        if USAGE_SCOPE not in history.columns and self.usage_scope != SCOPE_SERVICE:
            # rows without a scope mean what the training rows meant (a client's history, the stored tail)
            history = history.assign(**{USAGE_SCOPE: self.usage_scope})
        if tail_rows is not None:
            history = history.tail(tail_rows)
        # one answer prepares the same rows several times (the members' window, the recent candidates,
        # the peak-quantile forecast, the reasons, a what-if's edge): the last few are kept, by content
        key = _content_key(history)
        for seen, prepared in self._prepared_cache if key is not None else ():
            if seen == key:
                return prepared.copy()
        try:
            prepared = prepare_frame(fill_unavailable(history, self.unavailable_targets))
        except FeatureError as exc:
            raise ValueError(f"history: {exc}") from exc
        if key is not None:
            self._prepared_cache = [(key, prepared), *self._prepared_cache][:PREPARED_CACHE_SIZE]
        return prepared.copy()

    def _latest_window(self, prepared: pd.DataFrame) -> pd.DataFrame:
        """The last ``seq_len`` prepared rows of the latest experiment: what the members answer from."""
        latest = prepared[EXPERIMENT_ID].iloc[-1]
        return prepared[prepared[EXPERIMENT_ID] == latest].tail(max(self.config.effective_seq_len, 1))

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
        predicted = self.peak.predict(longer)
        tail = longer.tail(len(recent))
        same = (
            len(tail) == len(recent)
            and np.array_equal(tail[TIMESTAMP].to_numpy(), recent[TIMESTAMP].to_numpy())
            and np.array_equal(tail[EXPERIMENT_ID].to_numpy(), recent[EXPERIMENT_ID].to_numpy())
        )
        if same:
            aligned = predicted.tail(len(recent)).set_axis(recent.index)
        else:  # the two tails were prepared into different orders: match rows by experiment and time
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
        members = self.ensemble.member_predictions(recent)
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

    @property
    def usage_scope(self) -> str:
        """What the training rows' CPU / memory covered: ``service`` (summed over pods) or ``pod``."""
        return str((self.metrics.get("data_window") or {}).get("usage_scope") or SCOPE_SERVICE)

    @property
    def context_range(self) -> dict[str, tuple[float, float]]:
        """The range of each context key the training data saw (``metrics.json``), if recorded."""
        raw = (self.metrics.get("data_window") or {}).get("context_range") or {}
        return {str(k): (float(v[0]), float(v[1])) for k, v in raw.items()}

    def coverage_achieved(self) -> dict[str, tuple[float, int]]:
        """Per CPU / memory target: the share of held-out test steps the published requests covered, and n."""
        out: dict[str, tuple[float, int]] = {}
        for t in ("cpu", "memory"):
            entry = (self.metrics.get("metrics") or {}).get(t) or {}
            if entry.get("coverage") is not None and entry.get("n"):
                out[t] = (float(entry["coverage"]), int(entry["n"]))
        return out

    def recommend(
        self,
        history: pd.DataFrame | None = None,
        context: Mapping[str, float | str] | None = None,
        *,
        model_version: str | None = None,
        head_room: str = "auto",
        workload: WorkloadState | None = None,
        container: str | None = None,
    ) -> Recommendation:
        """Recommendation for the next step after ``history`` (default: the stored tail).

        The per-pod requests come from the answering layer (``recommend.answering.answer_request``,
        which the backtest scores too): with ``head_room="auto"`` and a history long enough to judge on
        (``min_recent_windows`` holding windows: 40, and an hour of them), the CPU and memory requests are
        ``held_requests``' (each reason says which source set it); otherwise the head-room calibrated at
        training time. Then ``recommend.policy``: containers (``workload``, what ``mora collect``
        recorded; else one container named ``container`` or like the service), limits, the replica count,
        floors and rounding. A context beyond what training saw is answered at no less than the edge of
        that range, and flagged.
        """
        from mora_platform.recommend.answering import answer_request, check_context

        checked = check_context(context)
        answer = answer_request(self, history, checked, head_room=head_room)
        requests = dict(answer.requests)
        outside = self._outside_range(checked)
        if outside:
            # beyond the data a forecast is extrapolation: answer no less than at the edge of the range
            edge = {
                k: min(max(v, self.context_range[k][0]), self.context_range[k][1])
                for k, v in checked.items()
                if k in self.context_range
            }
            at_edge = answer_request(self, history, {**checked, **edge}, head_room=head_room)
            for t in ("cpu", "memory"):
                if math.isfinite(at_edge.requests[t]) and not requests[t] >= at_edge.requests[t]:
                    requests[t] = at_edge.requests[t]
        recent_reasons = [
            f"{t} head-room calibrated on the {min(answer.history_rows, RECENT_ROWS)} most recent rows "
            f"({answer.sources[t]}), not on validation"
            for t in ("cpu", "memory")
            if answer.sources[t] not in (VALIDATION, "one-step", "unavailable", PEAK_VALIDATION)
        ]
        recent_reasons += [  # issue 16
            f"{t} request from the peak-quantile forecast of the usage over the held steps with its "
            "training-time head-room, which covered the recent rows as promised at the least cost"
            for t in ("cpu", "memory")
            if answer.sources[t] == PEAK_VALIDATION
        ]
        forecast = answer.forecast
        per = self.calibration.for_mode(forecast.mode)
        unavailable = dict(self.unavailable_targets)
        confidence = min(per[t].confidence for t in TARGETS if t not in unavailable)
        contributions = {}
        for name, status in self.ensemble.status.items():
            values = forecast.members.get(name, {})
            member = self.ensemble.members.get(name)
            weights = forecast.weights.get(name, dict.fromkeys(TARGETS, 0.0))
            label = (
                status if status != OK else ("fallback" if member is not None and member.fallbacks else OK)
            )
            contributions[name] = MemberContribution(
                weight=float(np.clip(np.mean([weights[t] for t in TARGETS]), 0, 1)),
                cpu_cores=_finite_or_none(values.get("cpu")),
                memory_bytes=_finite_or_none(values.get("memory")),
                replicas=_finite_or_none(values.get("replicas")),
                status=label,
            )
        source = self.history if history is None else self._prepared(history, RECENT_ROWS)
        reasons = [*self.ensemble.reasons.values(), *self._pod_reasons(source), *recent_reasons]
        beyond = [] if history is None else history_beyond_training(self.history, source)
        reasons.extend(beyond)
        if forecast.mode != FUSED:
            silent = [n for n in self.ensemble.members if n not in forecast.mode.split("+")]
            reasons.append(
                f"answered by {forecast.mode} alone: {', '.join(silent)} could not answer for this history"
            )
        for note in outside:
            reasons.append(f"what-if outside the training data: {note}; answered at no less than its edge")
        achieved, coverage_reasons = self._coverage_check(unavailable, answer.sources)
        reasons.extend(coverage_reasons)
        pods_now = _pods_now(source, checked)
        return build_recommendation(
            self.service,
            requests,
            confidence,
            contributions=contributions,
            degraded=self.ensemble.degraded or forecast.mode != FUSED,
            fallbacks=[*self.ensemble.fallbacks, *self.calibration.fallbacks],
            reasons=reasons,
            model_version=model_version,
            coverage=self.calibration.coverage,
            cpu_floor_millicores=self.config.cpu_floor_millicores,
            memory_floor_mib=self.config.memory_floor_mib,
            pods_now=pods_now,
            pod_cpu_mean=_pod_cpu_mean(source, pods_now),
            workload=workload,
            resource_policy=self.config.resources,
            container=container,
            unavailable=unavailable,
            outside_training_range=[*outside, *beyond],
            coverage_achieved=achieved,
        )

    def _outside_range(self, context: Mapping[str, float]) -> list[str]:
        """Readable notes for the context values beyond the range training saw."""
        notes = []
        for key, value in context.items():
            if key not in self.context_range:
                continue
            low, high = self.context_range[key]
            if value > high or value < low:
                notes.append(f"{key}={value:g} is outside {low:g}-{high:g}, the range training saw")
        return notes

    def _pod_reasons(self, source: pd.DataFrame) -> list[str]:
        """What a pod's usage was taken to be (the busiest pod, or the total spread evenly)."""
        if source is self.history:  # the stored tail, asked about on every plain question: once
            if self._tail_basis is None or self._tail_basis[0] is not source:
                self._tail_basis = (source, pod_usage(source)[1])
            basis = self._tail_basis[1]
        else:
            _, basis = pod_usage(source)
        trained = (self.metrics.get("data_window") or {}).get("pod_basis") or {}
        notes = []
        for resource in ("cpu", "memory"):
            seen = trained.get(resource, basis[resource])
            if seen == AS_RECORDED:
                notes.append(
                    f"{resource} per pod is the data's own per-pod figure (usage_scope pod), not the busiest "
                    "pod's: a pod busier than the one recorded needs more"
                )
            elif seen != BUSIEST:
                notes.append(
                    f"{resource} per pod is the service's total divided by its pods (the busiest pod was not "
                    "collected): a pod busier than the average needs more"
                )
        return notes

    def _coverage_check(
        self, unavailable: Mapping[str, str], sources: Mapping[str, str] | None = None
    ) -> tuple[dict[str, float], list[str]]:
        """The published coverage per target, and a reason for each short of the promise.

        Short means below ``coverage - tolerance``, the tolerance being two binomial standard errors
        of the test split's share (at least ``COVERAGE_TOLERANCE``): fewer test steps, wider margin.
        """
        achieved, notes = {}, []
        target = self.calibration.coverage
        for t, (share, n) in self.coverage_achieved().items():
            if t in unavailable:
                continue
            achieved[t] = round(share, 4)
            tolerance = coverage_tolerance(target, n)
            if share < target - tolerance:
                source = (sources or {}).get(t, VALIDATION)
                consequence = (
                    f"expect about {share:.0%}"
                    if source in (VALIDATION, "one-step")
                    else f"this answer's head-room was set on the recent rows instead ({source})"
                )
                notes.append(
                    f"{t}: the published model covered {share:.0%} of {n} held-out test steps, under the "
                    f"{target:.0%} promise (tolerance {tolerance:.1%}): {consequence}"
                )
        return achieved, notes


COVERAGE_TOLERANCE = 0.02


def kept_check(usage: np.ndarray, requests: np.ndarray, steps: int) -> KeptCheck:
    """How ``requests`` (one per row, NaN where not judged) held over ``steps`` rows covered ``usage``:
    the share of held steps covered, the complete windows judged and the mean request relative to the
    mean usage there (comparable with ``RecentChoice.relative_cost``)."""
    windows, held = holding_windows(usage, requests, steps)
    share = float(np.mean(windows <= held[:, None])) if len(held) else float("nan")
    level = float(np.mean(np.abs(windows))) if len(held) else 0.0
    cost = float(np.mean(held)) / level if level > 0 else float("inf")
    return KeptCheck(share, len(held), cost)


def coverage_tolerance(target: float, n: int) -> float:
    """How far a test split of ``n`` steps may fall short of ``target`` by chance (2 standard errors)."""
    return max(COVERAGE_TOLERANCE, 2 * math.sqrt(target * (1 - target) / max(n, 1)))


def _pods_now(source: pd.DataFrame, context: Mapping[str, float]) -> int | None:
    """The pods the per-pod figures hold for: the context's replica_count, else the newest observed."""
    if context.get(REPLICA_COUNT):
        return max(round(context[REPLICA_COUNT]), 1)
    if PODS not in source.columns:
        return None
    pods = pd.to_numeric(source[PODS], errors="coerce").dropna()
    pods = pods[pods >= 1]
    return round(float(pods.iloc[-1])) if len(pods) else None


def _pod_cpu_mean(source: pd.DataFrame, pods_now: int | None) -> float | None:
    """The mean CPU per pod over the newest rows (for an HPA's arithmetic)."""
    if "cpu_cores_value" not in source.columns or not pods_now:
        return None
    total = pd.to_numeric(source["cpu_cores_value"], errors="coerce").dropna().tail(POD_MEAN_ROWS)
    return float(total.mean()) / pods_now if len(total) else None


POD_MEAN_ROWS = 240


def _content_key(frame: pd.DataFrame) -> tuple[Any, ...] | None:
    """A key that changes with any cell, column or row of ``frame`` (None when it cannot be hashed)."""
    try:
        digest = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    except (TypeError, ValueError):
        return None
    return (tuple(map(str, frame.columns)), len(frame), hashlib.sha256(digest.tobytes()).hexdigest())


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


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
