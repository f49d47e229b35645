"""``train_service``: one service's frame -> a calibrated ensemble bundle on disk + a report.

Steps: validate the data (``ServiceDataError`` on unusable input), prepare targets and
features, split each experiment in time order (train / validation / test), fit the members on
train, fuse (fixed weights or ``fusion="auto"`` on validation), calibrate on validation (against
the peak over ``calibration_horizon_steps``, the time a request is held), evaluate on test, write the bundle files (no manifest: the registry adds it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from mora_platform.data.schema import (
    EXPERIMENT_ID,
    SCOPE_POD,
    SCOPE_SERVICE,
    SERVICE,
    TIMESTAMP,
    USAGE_SCOPE,
)
from mora_platform.features.split import Split, split_frame
from mora_platform.features.targets import (
    REQUIRED_COLUMNS,
    TARGET_COLUMNS,
    TARGET_DATA_COLUMNS,
    TARGET_SOURCES,
    FeatureError,
    pod_usage,
    prepare_frame,
)
from mora_platform.models.base import Forecaster, ModelError, write_json
from mora_platform.models.baselines import LastValueForecaster
from mora_platform.models.calibration import FUSED, Calibration, calibrate, horizon_actual
from mora_platform.models.ensemble import ENSEMBLE_FILE, EnsembleForecaster
from mora_platform.models.members import (
    build_members,
    default_members,
    legacy_prophet_weight,
    member_file_patterns,
)
from mora_platform.models.peak import PEAK_FILE, PeakQuantileModel
from mora_platform.models.peak_lstm import HEAD_PATTERN
from mora_platform.recommend.types import TARGETS
from mora_platform.training.bundle import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    ServiceModel,
)
from mora_platform.training.bundle_data import (
    fill_unavailable,
    history_tail,
    target_availability,
    write_history_tail,
)
from mora_platform.training.config import TrainingConfig
from mora_platform.training.peak_candidate import fit_peak_candidate
from mora_platform.training.report import (
    DataWindow,
    ServiceDataError,
    TargetMetrics,
    TrainingReport,
    context_range,
)

LIBRARIES = ("numpy", "pandas", "prophet", "cmdstanpy", "tensorflow-cpu", "keras", "pydantic")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _select_service(frame: pd.DataFrame, service: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise ServiceDataError(service, f"expected a pandas DataFrame, got {type(frame).__name__}")
    if SERVICE in frame.columns:
        services = frame[SERVICE].astype(str)
        if (services != service).any():
            frame = frame[services == service]
    if frame.empty:
        raise ServiceDataError(service, "no rows for this service")
    return frame


def validate_service_frame(frame: pd.DataFrame, service: str, config: TrainingConfig) -> pd.DataFrame:
    """Rows of ``service`` fit for training, or ``ServiceDataError`` saying why not."""
    return check_service_frame(frame, service, config)[0]


def check_service_frame(
    frame: pd.DataFrame, service: str, config: TrainingConfig
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows of ``service`` fit for training and its unavailable targets (target -> reason: no values
    in the collected column, e.g. no replica metric), or ``ServiceDataError`` saying why not (no
    target has data, negative usage, too few rows, ...)."""
    frame = _select_service(frame, service)
    absent = [c for c in TARGET_DATA_COLUMNS.values() if c not in frame.columns]
    unavailable = target_availability(frame)
    if absent:  # a metric not collected at all: its target is unavailable, the others train
        frame = frame.assign(**dict.fromkeys(absent, np.nan))
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ServiceDataError(service, f"missing column(s): {', '.join(missing)}")
    timestamps = pd.to_datetime(frame[TIMESTAMP], utc=True, errors="coerce")
    if timestamps.isna().all():
        raise ServiceDataError(service, f"column {TIMESTAMP!r} has no parseable timestamps")
    frame = frame[timestamps.notna().to_numpy()]
    unavailable = {**target_availability(frame), **unavailable}  # the first reason found stands
    if len(unavailable) == len(TARGETS):
        raise ServiceDataError(
            service, "no target has data: " + "; ".join(f"target {t!r}: {r}" for t, r in unavailable.items())
        )
    for name, source in TARGET_DATA_COLUMNS.items():
        if name in unavailable:
            continue
        values = pd.to_numeric(frame[source], errors="coerce")
        negative = values < 0
        if negative.any():
            row = int(np.flatnonzero(negative.to_numpy())[0])
            raise ServiceDataError(
                service,
                f"target {name!r}: column {source!r} has negative usage {values.iloc[row]!r} at row {row + 1}",
            )
    if len(frame) < config.min_rows:
        raise ServiceDataError(
            service, f"only {len(frame)} usable rows; training needs at least {config.min_rows}"
        )
    return frame, {t: unavailable[t] for t in TARGETS if t in unavailable}


def _members(config: TrainingConfig) -> dict[str, Forecaster | None]:
    """The configured members built from the registry; a default member left out is recorded missing."""
    members: dict[str, Forecaster | None] = dict.fromkeys(default_members())
    members.update(build_members(config, config.member_names))
    return members


def _weights(config: TrainingConfig) -> dict[str, dict[str, float]]:
    """Configured fusion weights (``TrainingConfig.weights``: the level member starts at 0, which
    ``fusion="auto"`` may raise)."""
    return config.weights()


def model_file_patterns() -> tuple[str, ...]:
    """Every registered member's files and the ensemble's: what a retrain replaces."""
    return (*member_file_patterns(), ENSEMBLE_FILE, PEAK_FILE, HEAD_PATTERN)


def _actual(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {t: frame[TARGET_COLUMNS[t]].to_numpy(dtype="float64") for t in TARGETS}, index=frame.index
    )


def _usage(frame: pd.DataFrame) -> pd.DataFrame:
    """What a request must cover: the usage behind each target (the seed's factor taken off)."""
    return pd.DataFrame(
        {t: frame[TARGET_SOURCES[t][0]].to_numpy(dtype="float64") for t in TARGETS}, index=frame.index
    )


def _requests(modes: dict[str, pd.DataFrame], calibration: Calibration) -> pd.DataFrame:
    """Per row: forecast + head-room of the mode that answered it (fused first, then members)."""
    fused = modes[FUSED]
    out = pd.DataFrame(np.nan, index=fused.index, columns=list(TARGETS))
    for mode, predicted in modes.items():
        per = calibration.for_mode(mode)
        for t in TARGETS:
            fill = out[t].isna() & predicted[t].notna()
            point = predicted.loc[fill, t].to_numpy(dtype="float64")
            out.loc[fill, t] = np.maximum(point + per[t].head_room(point), 0.0)
    return out


def evaluate(
    frame: pd.DataFrame,
    rows: np.ndarray,
    modes: dict[str, pd.DataFrame],
    members: dict[str, pd.DataFrame],
    calibration: Calibration,
) -> dict[str, TargetMetrics]:
    """Metrics per target on the selected ``rows`` of a prepared frame.

    ``coverage`` is against what the request was calibrated to cover: the next usage, or its
    peak over ``calibration.horizon_steps`` (same experiment); ``mae`` is the one-step error of
    the target forecast.
    """
    covered = horizon_actual(_usage(frame), frame[EXPERIMENT_ID], calibration.horizon_steps)[rows]
    actual = _actual(frame)[rows]
    requests = _requests({m: p[rows] for m, p in modes.items()}, calibration)
    point = modes[FUSED][rows].combine_first(next(iter(members.values()))[rows])
    for p in members.values():
        point = point.combine_first(p[rows])
    result = {}
    for t in TARGETS:
        y, req, yhat = actual[t].to_numpy(), requests[t].to_numpy(), point[t].to_numpy()
        peak = covered[t].to_numpy()
        ok = np.isfinite(y) & np.isfinite(req)
        usage = frame.loc[rows, TARGET_SOURCES[t][0]].to_numpy(dtype="float64")
        fused_cal = calibration.for_mode(FUSED)[t]
        level = float(np.mean(np.abs(y[ok]))) if ok.any() else 0.0
        result[t] = TargetMetrics(
            n=int(ok.sum()),
            mae=float(np.mean(np.abs(y[ok] - yhat[ok]))) if ok.any() else None,
            coverage=float(np.mean(req[ok] >= peak[ok])) if ok.any() else None,
            usage_coverage=float(np.mean(req[ok] >= usage[ok])) if ok.any() else None,
            mean_slack=float(np.mean(req[ok] - y[ok]) / level) if ok.any() and level > 0 else None,
            mae_members={
                name: float(np.nanmean(np.abs(y - p[t].to_numpy())))
                for name, p in ((n, q[rows]) for n, q in members.items())
                if np.isfinite(p[t].to_numpy()).any()
            },
            quantile=fused_cal.quantile,
            confidence=fused_cal.confidence,
        )
    return result


@dataclass
class FittedService:
    """A trained service in memory (before it is written): what ``train_service`` saves."""

    service: str
    config: TrainingConfig
    ensemble: EnsembleForecaster
    calibration: Calibration
    prepared: pd.DataFrame
    report: TrainingReport
    unavailable_targets: dict[str, str] = field(default_factory=dict)  # target -> reason
    peak: PeakQuantileModel | None = None  # issue 16: the peak-quantile candidate

    def save(self, out_dir: Path) -> list[str]:
        """Write the bundle files (no manifest); returns their names, ``metrics.json`` last.

        Model files left in ``out_dir`` by an earlier run (e.g. an ``lstm.keras`` when the LSTM
        is now missing) are removed, so the directory holds exactly one bundle.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.iterdir():
            if stale.is_file() and any(stale.match(pattern) for pattern in model_file_patterns()):
                stale.unlink()
        files = self.ensemble.save(out_dir)
        if self.peak is not None:
            self.peak.save(out_dir)
            files.extend(self.peak.file_names())
        files.append(write_json(out_dir / CALIBRATION_FILE, self.calibration.to_dict()))
        files.append(write_history_tail(out_dir, self.prepared, self.config.effective_seq_len))
        config = {
            "format": 1,
            "service": self.service,
            "config": self.config.model_dump(),
            "fusion_weights": legacy_prophet_weight(self.ensemble.weights),
            "member_weights": self.ensemble.weights,
            "unavailable_targets": self.unavailable_targets,
            "libraries": library_versions(),
        }
        files.append(write_json(out_dir / CONFIG_FILE, config))
        self.report.files = sorted({*files, METRICS_FILE})
        files.append(write_json(out_dir / METRICS_FILE, self.report.model_dump(mode="json")))
        return files

    def service_model(self) -> ServiceModel:
        """The in-memory equivalent of ``ServiceModel.load`` on the saved bundle."""
        return ServiceModel(
            self.service,
            self.ensemble,
            self.calibration,
            self.config,
            history_tail(self.prepared, self.config.effective_seq_len),
            self.report.model_dump(mode="json"),
            None,
            unavailable_targets=dict(self.unavailable_targets),
            peak=self.peak,
        )


def fit_service(frame: pd.DataFrame, service: str, config: TrainingConfig) -> FittedService:
    """Validate, split, fit, fuse, calibrate and evaluate one service, in memory."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    selected, unavailable = check_service_frame(frame, service, config)
    try:
        # an unavailable target's column holds a harmless constant for the models (never served)
        prepared = prepare_frame(fill_unavailable(selected, unavailable))
    except FeatureError as exc:
        raise ServiceDataError(service, str(exc)) from exc
    labels = split_frame(
        prepared, config.validation_fraction, config.test_fraction, config.split_by
    ).to_numpy()
    train_rows = labels == Split.TRAIN.value
    val_rows = labels == Split.VALIDATION.value
    test_rows = labels == Split.TEST.value
    ensemble = EnsembleForecaster(_members(config), _weights(config))
    tick = time.perf_counter()
    try:
        ensemble.fit(prepared[train_rows])
    except ModelError as exc:
        raise ServiceDataError(service, f"no model could be trained: {exc}") from exc
    timings["fit"] = time.perf_counter() - tick
    for name, member in ensemble.members.items():
        member_seconds = getattr(member, "training", {}).get("seconds")
        if member_seconds is not None:
            timings[f"fit_{name}"] = float(member_seconds)
    tick = time.perf_counter()
    members = ensemble.member_predictions(prepared)
    members_and_naive = {
        **members,
        "naive": LastValueForecaster().fit(prepared[train_rows]).predict(prepared),
    }
    actual = _actual(prepared)
    if config.fusion == "auto":
        # weights for what the request must cover: the next value, or the peak over the held steps
        chosen_for = (
            horizon_actual(actual, prepared[EXPERIMENT_ID], config.calibration_horizon_steps)
            if config.calibration_horizon_steps > 1
            else actual
        )
        # an unavailable target has no rows to choose on: it keeps its configured weights
        chosen_for = chosen_for.assign(**dict.fromkeys(unavailable, np.nan))
        ensemble.choose_weights(chosen_for[val_rows], {n: p[val_rows] for n, p in members.items()})
    modes = ensemble.mode_predictions(members)
    ensemble.anchor(prepared[TIMESTAMP].max())
    timings["predict"] = time.perf_counter() - tick
    relative = config.head_room == "relative"
    usage = _usage(prepared)
    calibration = _calibrate(
        service, actual, modes, val_rows, train_rows, config.coverage, 1, relative, usage
    )
    if config.calibration_horizon_steps > 1:
        held = horizon_actual(usage, prepared[EXPERIMENT_ID], config.calibration_horizon_steps)
        horizon = _calibrate(
            service,
            actual,
            modes,
            val_rows,
            train_rows,
            config.coverage,
            config.calibration_horizon_steps,
            relative,
            held,
        )
        horizon.next_step = calibration.modes
        horizon.fallbacks = [*calibration.fallbacks, *(f"horizon {f}" for f in horizon.fallbacks)]
        calibration = horizon
    calibration.mark_unavailable(unavailable)
    tick = time.perf_counter()
    peak = fit_peak_candidate(prepared, labels, config, unavailable)
    timings["fit_peak"] = time.perf_counter() - tick
    test_metrics = (
        evaluate(prepared, test_rows, modes, members_and_naive, calibration) if test_rows.any() else {}
    )
    val_metrics = evaluate(prepared, val_rows, modes, members_and_naive, calibration)
    for metrics in (test_metrics, val_metrics):  # nothing was measured for an unavailable target
        metrics.update({t: TargetMetrics(n=0) for t in unavailable if t in metrics})
    window = DataWindow(
        start=prepared[TIMESTAMP].min().to_pydatetime(),
        end=prepared[TIMESTAMP].max().to_pydatetime(),
        rows=len(prepared),
        experiments=int(prepared[EXPERIMENT_ID].nunique()),
        context_range=context_range(prepared),
        pod_basis=pod_usage(prepared)[1],
        usage_scope=_usage_scope(prepared),
    )
    report = TrainingReport(
        service=service,
        metrics=test_metrics,
        validation=val_metrics,
        fallbacks=[
            *(f"target {t!r} unavailable: {reason}" for t, reason in unavailable.items()),
            *ensemble.fallbacks,
            *calibration.fallbacks,
        ],
        members=dict(ensemble.status),
        degraded=ensemble.degraded,
        confidence=min(c.confidence for c in calibration.for_mode(FUSED).values()),
        fusion_weights=legacy_prophet_weight(ensemble.weights),
        peak_head_weights={}
        if peak is None
        else {t: m.lstm_weight for t, m in peak.targets.items() if m.fusion and "pinball" in m.fusion},
        data_window=window,
        seconds=round(time.perf_counter() - started, 3),
        timings={k: round(v, 3) for k, v in timings.items()},
        config=config.model_dump(),
    )
    return FittedService(service, config, ensemble, calibration, prepared, report, unavailable, peak)


def _usage_scope(prepared: pd.DataFrame) -> str:
    """``pod`` when every training row held one pod's figure, else ``service`` (see ``schema.USAGE_SCOPE``)."""
    if (
        USAGE_SCOPE in prepared.columns
        and len(prepared)
        and prepared[USAGE_SCOPE].astype(str).eq(SCOPE_POD).all()
    ):
        return SCOPE_POD
    return SCOPE_SERVICE


def train_service(frame: pd.DataFrame, service: str, config: TrainingConfig, out_dir: Path) -> TrainingReport:
    """Train, calibrate and evaluate one service; write its bundle files into ``out_dir``.

    Raises ``ServiceDataError`` (naming the service and the problem) for unusable data; a member
    that cannot be trained is left out and recorded (``report.degraded``, ``report.fallbacks``).
    """
    started = time.perf_counter()
    fitted = fit_service(frame, service, config)
    tick = time.perf_counter()
    fitted.report.timings["save"] = 0.0
    fitted.report.seconds = round(time.perf_counter() - started, 3)
    fitted.save(out_dir)
    fitted.report.timings["save"] = round(time.perf_counter() - tick, 3)
    fitted.report.seconds = round(time.perf_counter() - started, 3)
    write_json(Path(out_dir) / METRICS_FILE, fitted.report.model_dump(mode="json"))
    return fitted.report


def _calibrate(
    service: str,
    actual: pd.DataFrame,
    modes: dict[str, pd.DataFrame],
    val_rows: np.ndarray,
    train_rows: np.ndarray,
    coverage: float,
    horizon_steps: int = 1,
    relative: bool = False,
    covered: pd.DataFrame | None = None,
) -> Calibration:
    """Calibrate on validation; without validation residuals fall back to training ones (recorded).

    ``actual`` is what the members forecast; ``covered`` what the request must cover (the usage,
    or its peak over ``horizon_steps`` when that is > 1); default ``actual``.
    """
    covered = actual if covered is None else covered
    try:
        return calibrate(
            actual[val_rows],
            {m: p[val_rows] for m, p in modes.items()},
            coverage,
            horizon_steps=horizon_steps,
            relative=relative,
            covered=covered[val_rows],
        )
    except ValueError as first:
        try:
            calibration = calibrate(
                actual[train_rows],
                {m: p[train_rows] for m, p in modes.items()},
                coverage,
                source="training",
                horizon_steps=horizon_steps,
                relative=relative,
                covered=covered[train_rows],
            )
        except ValueError as exc:
            raise ServiceDataError(service, f"cannot calibrate: {first}; {exc}") from exc
        calibration.fallbacks.append(f"calibration: {first}; used in-sample training residuals (optimistic)")
        return calibration
