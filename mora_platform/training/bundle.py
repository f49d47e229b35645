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
when the bundle has one), unless a training-time head-room kept its promise there at no higher cost
(``training.held``, the part of ``ServiceModel`` that sets the held requests).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mora_platform.data.schema import (
    EXPERIMENT_ID,
    REPLICA_COUNT,
    SCOPE_SERVICE,
    SERVICE,
    USAGE_SCOPE,
)
from mora_platform.features.targets import (
    AS_RECORDED,
    BUSIEST,
    PODS,
    FeatureError,
    pod_usage,
    prepare_frame,
)
from mora_platform.models.base import ModelLoadError, read_json
from mora_platform.models.calibration import FUSED, Calibration
from mora_platform.models.ensemble import OK, EnsembleForecaster
from mora_platform.models.peak import PeakQuantileModel  # issue 16
from mora_platform.models.recent import (
    PEAK_QUANTILE,
    RECENT_ROWS,
    VALIDATION,
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
from mora_platform.training.held import PEAK_VALIDATION, HeldRequests

CONFIG_FILE = "config.json"
CALIBRATION_FILE = "calibration.json"
METRICS_FILE = "metrics.json"
PREPARED_CACHE_SIZE = 4  # prepared histories kept per model (see ``ServiceModel._prepared``)
#: ``ServiceModel.unavailable_targets``' source label in answers (``recommend.answering``).
UNAVAILABLE = "unavailable"


@dataclass
class ServiceModel(HeldRequests):
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
        if self.peak is not None:
            recent_reasons += [
                f"{t} peak-quantile forecast: {self.peak.describe_fusion(t)}"
                for t in ("cpu", "memory")
                if answer.sources[t] in (PEAK_QUANTILE, PEAK_VALIDATION)
                and t in self.peak.targets
                and self.peak.targets[t].fusion is not None  # a sequence head was trained (peak.lstm)
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


def _finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
