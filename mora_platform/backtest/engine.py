"""Rolling-origin replay: every method, at every origin, sees only the past and commits to a request.

Origins lie on one grid per series: ``first sample + warmup``, then every ``step``, as long as a
whole horizon fits before the last sample. At origin t a method gets the usage samples with
timestamp < t (and, for multi-metric methods, the unified rows with timestamp < t) and returns a
base request; the request ``max(base * margin, floor)`` is held over ``[t, t + horizon)`` and scored
on the samples there. ``floor`` is the method's own floor raised to the run's floor policy
(``BacktestConfig.floors``, default: the platform's serving floors, 10m CPU / 32 MiB), the same
policy for every method, so no method is scored on requests below what the others may write. Origins whose window holds no sample of a resource are skipped for it.

The engine is pure (no Ray, no I/O). It loops origin by origin, then method by method, then
resource by resource, so a stateful method (the platform, which refits on a schedule) trains once
per refit for both resources. A method that raises is recorded as failed for that series and
resource; the other methods and series go on. ``planned_origins`` says, before any method runs,
which origins a series will be scored at (none: too short for the warm-up and horizon), and
``replay_series`` can report its progress origin by origin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mora_platform.backtest.baselines import (
    DEFAULT_FLOORS,
    RESOURCES,
    FloorPolicy,
    Recommender,
    finalize_requests,
)
from mora_platform.data import schema

DEFAULT_MARGIN_GRID: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(51))  # 0.50 .. 3.00
DEFAULT_RISK_TARGETS: tuple[float, ...] = (0.01, 0.05, 0.10)
_HOUR = pd.Timedelta(hours=1)
_DAY = pd.Timedelta(hours=24)


@dataclass(frozen=True)
class BacktestConfig:
    """Replay settings; durations are pandas Timedeltas; ``floors`` applies to every method's requests."""

    step: pd.Timedelta = _HOUR
    horizon: pd.Timedelta = _HOUR
    warmup: pd.Timedelta = _DAY
    season: pd.Timedelta = _DAY
    margins: tuple[float, ...] = DEFAULT_MARGIN_GRID
    risk_targets: tuple[float, ...] = DEFAULT_RISK_TARGETS
    floors: FloorPolicy = DEFAULT_FLOORS

    def __post_init__(self) -> None:
        for name in ("step", "horizon", "warmup", "season"):
            value = getattr(self, name)
            if not isinstance(value, pd.Timedelta) or value < pd.Timedelta(0):
                raise ValueError(f"BacktestConfig.{name} must be a non-negative Timedelta, got {value!r}")
        if self.step <= pd.Timedelta(0) or self.horizon <= pd.Timedelta(0):
            raise ValueError(
                f"BacktestConfig: step and horizon must be positive ({self.step}, {self.horizon})"
            )
        if not self.margins or min(self.margins) <= 0:
            raise ValueError(f"BacktestConfig.margins must be positive, got {self.margins!r}")
        if not isinstance(self.floors, FloorPolicy):
            raise ValueError(f"BacktestConfig.floors must be a FloorPolicy, got {self.floors!r}")


@dataclass
class BacktestSeries:
    """One series to replay: usage per resource (CPU in cores, memory in bytes), optionally the
    unified-schema rows it came from (for the platform), and notes on how it was built."""

    name: str
    usage: dict[str, pd.Series]
    frame: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class MethodTrace:
    """What one method said at each scored origin of one resource."""

    method: str
    base: np.ndarray
    forecast: np.ndarray
    default_margin: float
    floor: float
    quantum: float = 0.0
    error: str | None = None
    sources: dict[str, int] = field(default_factory=dict)  # origins answered by each source

    @property
    def ok(self) -> bool:
        return self.error is None

    def requests(self, margin: float | None = None) -> np.ndarray:
        """Requests at ``margin`` (default: the method's own margin), floor and rounding applied."""
        m = self.default_margin if margin is None else margin
        return finalize_requests(self.base, m, self.floor, self.quantum)

    @property
    def has_forecast(self) -> bool:
        return bool(np.isfinite(self.forecast).any())


@dataclass
class ResourceReplay:
    """The scored windows of one resource of one series, and every method's trace over them."""

    resource: str
    usage: pd.Series
    origins: pd.DatetimeIndex
    window_ids: np.ndarray  # per scored sample: index of its origin
    window_usage: np.ndarray  # per scored sample: usage
    actual_mean: np.ndarray  # per origin: mean usage in the window
    naive_forecast: np.ndarray  # per origin: seasonal naive forecast of that mean
    traces: dict[str, MethodTrace] = field(default_factory=dict)


@dataclass
class SeriesReplay:
    """Result of replaying one series."""

    name: str
    resources: dict[str, ResourceReplay]
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def clean_usage(series: pd.Series, name: str, resource: str) -> pd.Series:
    """Sorted, NaN-free, UTC-indexed float usage; a clear error on a bad index."""
    if not isinstance(series.index, pd.DatetimeIndex):
        raise ValueError(f"series {name!r}, {resource}: index must be a DatetimeIndex")
    index = series.index.tz_localize("UTC") if series.index.tz is None else series.index.tz_convert("UTC")
    index = index.as_unit("ns")
    out = pd.Series(series.to_numpy(dtype="float64"), index=index, name=resource).dropna()
    out = out[~out.index.duplicated(keep="last")].sort_index()
    return out


def origin_grid(
    starts: Sequence[pd.Timestamp],
    ends: Sequence[pd.Timestamp],
    config: BacktestConfig,
    spacing: pd.Timedelta,
) -> pd.DatetimeIndex:
    """Origins from the earliest start + warmup, every step, while a full horizon fits before the
    latest end (``spacing`` = typical sample interval, so the last window may end on the last sample)."""
    first = min(starts) + config.warmup
    last = max(ends) + spacing - config.horizon
    if last < first:
        return pd.DatetimeIndex([], tz="UTC")
    return pd.date_range(first, last, freq=config.step)


def _typical_spacing(index: pd.DatetimeIndex) -> pd.Timedelta:
    if len(index) < 2:
        return pd.Timedelta(0)
    gaps = index[1:] - index[:-1]
    return pd.Timedelta(gaps.median())


def _naive_means(usage: pd.Series, origins: pd.DatetimeIndex, config: BacktestConfig) -> np.ndarray:
    """Seasonal naive forecast of each window's mean: the mean one season earlier, or of the
    previous horizon when the history is shorter than a season."""
    times = usage.index
    values = usage.to_numpy()
    out = np.full(len(origins), np.nan)
    for k, t in enumerate(origins):
        for lag in (config.season, config.horizon):
            lo = times.searchsorted(t - lag, side="left")
            hi = times.searchsorted(min(t - lag + config.horizon, t), side="left")
            if lag > pd.Timedelta(0) and hi > lo and t - lag >= times[0]:
                out[k] = values[lo:hi].mean()
                break
    return out


def _scored(
    times: pd.DatetimeIndex, grid: pd.DatetimeIndex, horizon: pd.Timedelta
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per grid origin: history end and window end (sample positions), and whether both are non-empty."""
    starts = np.asarray(times.searchsorted(grid, side="left"))
    ends = np.asarray(times.searchsorted(grid + horizon, side="left"))
    return starts, ends, (ends > starts) & (starts > 0)


def _prepare_resource(
    usage: pd.Series, grid: pd.DatetimeIndex, config: BacktestConfig, resource: str
) -> tuple[ResourceReplay, np.ndarray]:
    """Scored origins of one resource (history and window both non-empty), and their history ends."""
    starts, ends, keep = _scored(usage.index, grid, config.horizon)
    origins = grid[keep]
    starts, ends = starts[keep], ends[keep]
    values = usage.to_numpy()
    window_ids = (
        np.concatenate([np.full(e - s, k) for k, (s, e) in enumerate(zip(starts, ends, strict=True))])
        if len(origins)
        else np.empty(0, dtype=np.int64)
    )
    window_usage = (
        np.concatenate([values[s:e] for s, e in zip(starts, ends, strict=True)])
        if len(origins)
        else np.empty(0)
    )
    actual = np.array([values[s:e].mean() for s, e in zip(starts, ends, strict=True)])
    replay = ResourceReplay(
        resource=resource,
        usage=usage,
        origins=origins,
        window_ids=window_ids.astype(np.int64),
        window_usage=window_usage,
        actual_mean=actual,
        naive_forecast=_naive_means(usage, origins, config),
    )
    return replay, starts


def _clean_usages(series: BacktestSeries) -> dict[str, pd.Series]:
    usages = {r: clean_usage(s, series.name, r) for r, s in series.usage.items() if r in RESOURCES}
    return {r: s for r, s in usages.items() if not s.empty}


def _grid(usages: Mapping[str, pd.Series], config: BacktestConfig) -> pd.DatetimeIndex:
    spacing = max(_typical_spacing(s.index) for s in usages.values())
    return origin_grid(
        [s.index[0] for s in usages.values()], [s.index[-1] for s in usages.values()], config, spacing
    )


@dataclass(frozen=True)
class SeriesExtent:
    """How long a series is: first and last sample (over its resources), typical spacing, samples."""

    name: str
    start: pd.Timestamp
    end: pd.Timestamp
    spacing: pd.Timedelta
    samples: int

    @property
    def length(self) -> pd.Timedelta:
        """Time the samples cover: last - first + one spacing (the last sample's own interval)."""
        return self.end - self.start + self.spacing


def series_extent(series: BacktestSeries) -> SeriesExtent | None:
    """The series' extent, or None when it has no usable CPU or memory sample."""
    usages = _clean_usages(series)
    if not usages:
        return None
    return SeriesExtent(
        name=series.name,
        start=min(s.index[0] for s in usages.values()),
        end=max(s.index[-1] for s in usages.values()),
        spacing=max(_typical_spacing(s.index) for s in usages.values()),
        samples=max(len(s) for s in usages.values()),
    )


def planned_origins(series: BacktestSeries, config: BacktestConfig) -> pd.DatetimeIndex:
    """The origins ``replay_series`` will score (for at least one resource); empty when the series
    is too short for ``config``'s warm-up and horizon."""
    usages = _clean_usages(series)
    if not usages:
        return pd.DatetimeIndex([], tz="UTC")
    grid = _grid(usages, config)
    keep = np.zeros(len(grid), dtype=bool)
    for usage in usages.values():
        keep |= _scored(usage.index, grid, config.horizon)[2]
    return grid[keep]


Progress = Callable[[int, int], None]
"""Called after each scored origin with (origins done, origins in all)."""


def replay_series(
    series: BacktestSeries,
    methods: Sequence[Recommender],
    config: BacktestConfig,
    progress: Progress | None = None,
) -> SeriesReplay:
    """Replay one series with fresh ``methods`` (stateful methods must not be shared across series)."""
    usages = _clean_usages(series)
    result = SeriesReplay(name=series.name, resources={}, notes=list(series.notes))
    if not usages:
        result.errors.append(f"series {series.name!r}: no usable CPU or memory sample")
        return result
    grid = _grid(usages, config)
    history_ends: dict[str, dict[pd.Timestamp, int]] = {}
    for resource, usage in usages.items():
        replay, starts = _prepare_resource(usage, grid, config, resource)
        if len(replay.origins) == 0:
            result.errors.append(
                f"series {series.name!r}, {resource}: too short for warmup {config.warmup} + horizon {config.horizon}"
            )
            continue
        result.resources[resource] = replay
        history_ends[resource] = dict(zip(replay.origins, starts, strict=True))
        for method in methods:
            n = len(replay.origins)
            replay.traces[method.name] = MethodTrace(
                method=method.name,
                base=np.full(n, np.nan),
                forecast=np.full(n, np.nan),
                default_margin=method.margin_for(resource),
                floor=config.floors.floor_for(method, resource),
                quantum=method.quantum(resource),
            )
    frame, frame_times = _sorted_frame(series.frame)
    positions = {r: {t: k for k, t in enumerate(rep.origins)} for r, rep in result.resources.items()}
    # origins no resource scores ask nothing of any method
    scored = grid[[any(t in p for p in positions.values()) for t in grid]] if len(grid) else grid
    for done, origin in enumerate(scored, start=1):
        frame_before = None if frame is None else frame.iloc[: frame_times.searchsorted(origin, side="left")]
        for method in methods:
            for resource, replay in result.resources.items():
                trace = replay.traces[method.name]
                k = positions[resource].get(origin)
                if k is None or not trace.ok:
                    continue
                history = replay.usage.iloc[: history_ends[resource][origin]]
                try:
                    suggestion = method.suggest(
                        history, resource, origin=origin, horizon=config.horizon, frame=frame_before
                    )
                except Exception as exc:  # one method's failure must not stop the others
                    trace.error = f"{type(exc).__name__} at origin {origin.isoformat()}: {exc}"
                    result.errors.append(f"series {series.name!r}, {resource}, {method.name}: {trace.error}")
                    continue
                if not np.isfinite(suggestion.base) or suggestion.base < 0:
                    trace.error = f"invalid base request {suggestion.base!r} at origin {origin.isoformat()}"
                    result.errors.append(f"series {series.name!r}, {resource}, {method.name}: {trace.error}")
                    continue
                trace.base[k] = suggestion.base
                if suggestion.forecast is not None:
                    trace.forecast[k] = suggestion.forecast
                if suggestion.source:
                    trace.sources[suggestion.source] = trace.sources.get(suggestion.source, 0) + 1
        if progress is not None:
            progress(done, len(scored))
    return result


def _sorted_frame(frame: pd.DataFrame | None) -> tuple[pd.DataFrame | None, pd.DatetimeIndex]:
    if frame is None:
        return None, pd.DatetimeIndex([], tz="UTC")
    if schema.TIMESTAMP not in frame.columns:
        raise ValueError(f"series frame lacks the {schema.TIMESTAMP!r} column")
    ordered = frame.sort_values(schema.TIMESTAMP, kind="stable").reset_index(drop=True)
    return ordered, pd.DatetimeIndex(ordered[schema.TIMESTAMP])


MethodFactory = Callable[[], Sequence[Recommender]]


def run_backtest(
    series: Sequence[BacktestSeries], make_methods: MethodFactory, config: BacktestConfig
) -> list[SeriesReplay]:
    """Replay every series with a fresh set of methods each (the local loop; the CLI may map
    ``replay_series`` over Ray tasks instead)."""
    return [replay_series(s, make_methods(), config) for s in series]


def method_order(replays: Sequence[SeriesReplay]) -> list[str]:
    """Method names in the order they were run."""
    for replay in replays:
        for resource in replay.resources.values():
            return list(resource.traces)
    return []
