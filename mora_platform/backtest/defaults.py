"""Backtest settings that fit the data: warm-up, origin step, horizon and refit from spacing and length.

``resolve_settings`` fills every setting the user left unset from the series' extents
(``engine.series_extent``), with s = the finest typical sample spacing and L = the shortest
series' length (last sample - first + s):

- horizon = L / 120 (about a hundred held windows on the shortest series), at least 20 samples,
  at most 1 h (or one sample if samples are further apart), and at most L / 4; rounded down to a
  round duration (5 min, 15 min, 1 h, ...) that is a whole number of samples;
- step = the horizon (each sample is scored once);
- warm-up = max(L / 10, 200 samples): the platform's first fit needs about 200 rows (30-step LSTM
  windows inside experiments once validation and test rows are split off); at most 24 h and L / 2;
  rounded down to whole steps;
- refit = 48 steps, at most 24 h.

On the Online Boutique data (15 s samples, experiments back to back) this gives origins every 5 min
held 5 min and a refit every 4 h, after 1 h on the full set (shortest series 10.5 h: what
``benchmarks/backtest_report.py`` runs) and 50 min on the subset in ``examples/online-boutique``
(shortest 1h46min); on the synthetic fleet (1 min samples, 10 days) 1 h / 1 h / 24 h / 24 h, the
former fixed defaults. Settings the user gave are kept; ``no_origin_message`` says which of them to
change, and to what, when they leave no origin for any series.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import pandas as pd

from mora_platform.backtest.engine import BacktestConfig, SeriesExtent

HORIZON_DIVISOR = 120  # held windows on the shortest series, about
MIN_HORIZON_SAMPLES = 20
MAX_HORIZON = pd.Timedelta(hours=1)
WARMUP_FRACTION = 0.1
MIN_WARMUP_SAMPLES = 200
MAX_WARMUP = pd.Timedelta(hours=24)
REFIT_STEPS = 48
MAX_REFIT = pd.Timedelta(hours=24)
DEFAULT_SEASON = pd.Timedelta(hours=24)
FLAGS: tuple[str, ...] = ("warmup", "step", "horizon", "refit")
# round durations a derived horizon is rounded down to (when a whole number of samples)
_ROUND_TEXT = ("1s", "2s", "5s", "10s", "15s", "30s", "1min", "2min", "5min", "10min", "15min", "20min")
_ROUND = tuple(pd.Timedelta(v) for v in (*_ROUND_TEXT, "30min", "1h", "2h", "3h", "4h", "6h", "12h", "24h"))


class SettingsError(ValueError):
    """No setting (the user's, or any) leaves an origin; the message names the flag to change."""


def format_duration(value: pd.Timedelta) -> str:
    """Compact and readable by ``pd.Timedelta`` (and so by the CLI): 90 min -> ``1h30min``."""
    seconds = round(value.total_seconds())
    if seconds <= 0:
        return "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}min" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts)


def _floor(value: pd.Timedelta, unit: pd.Timedelta) -> pd.Timedelta:
    """``value`` rounded down to whole ``unit``s (``unit`` <= 0: unchanged)."""
    if unit <= pd.Timedelta(0):
        return value
    return unit * int(value // unit)


def _round_down(value: pd.Timedelta, spacing: pd.Timedelta) -> pd.Timedelta:
    """The largest round duration <= ``value`` that is a whole number of samples, else whole samples."""
    fits = [
        r for r in _ROUND if r <= value and (spacing <= pd.Timedelta(0) or r % spacing == pd.Timedelta(0))
    ]
    if fits:
        return fits[-1]
    return max(_floor(value, spacing), spacing)


@dataclass(frozen=True)
class DataScale:
    """What the defaults are derived from: finest spacing, shortest and longest series."""

    spacing: pd.Timedelta
    shortest: SeriesExtent
    longest: SeriesExtent

    @classmethod
    def of(cls, extents: Sequence[SeriesExtent]) -> DataScale:
        if not extents:
            raise SettingsError("no series with a usable CPU or memory sample")
        spacings = [e.spacing for e in extents if e.spacing > pd.Timedelta(0)]
        return cls(
            spacing=min(spacings) if spacings else pd.Timedelta(0),
            shortest=min(extents, key=lambda e: (e.length, e.name)),
            longest=max(extents, key=lambda e: (e.length, e.name)),
        )

    def describe(self) -> str:
        def one(e: SeriesExtent) -> str:
            return f"{e.name} {format_duration(e.length)}"

        if self.shortest == self.longest:
            return f"{one(self.shortest)} at {format_duration(self.spacing)} spacing"
        return (
            f"shortest {one(self.shortest)}, longest {one(self.longest)}, "
            f"{format_duration(self.spacing)} spacing"
        )


def derive_horizon(scale: DataScale) -> pd.Timedelta:
    s, length = scale.spacing, scale.shortest.length
    target = max(length / HORIZON_DIVISOR, MIN_HORIZON_SAMPLES * s)
    target = min(target, max(MAX_HORIZON, s), length / 4)
    return _round_down(target, s) if s > pd.Timedelta(0) else MAX_HORIZON


def derive_warmup(scale: DataScale, step: pd.Timedelta) -> pd.Timedelta:
    s, length = scale.spacing, scale.shortest.length
    target = min(max(WARMUP_FRACTION * length, MIN_WARMUP_SAMPLES * s), MAX_WARMUP, length / 2)
    warmup = _floor(target, step)
    if warmup < max(s, pd.Timedelta(seconds=1)):  # shorter than a step: whole samples, at least one
        warmup = max(_floor(target, s), s)
    return warmup


def derive_refit(step: pd.Timedelta) -> pd.Timedelta:
    return max(min(REFIT_STEPS * step, MAX_REFIT), step)


@dataclass(frozen=True)
class Settings:
    """The replay settings in effect, which of them were derived, and the data scale behind them."""

    config: BacktestConfig
    refit: pd.Timedelta
    derived: tuple[str, ...]
    scale: DataScale

    @property
    def user_set(self) -> tuple[str, ...]:
        return tuple(f for f in FLAGS if f not in self.derived)

    def flags(self) -> str:
        """The settings as CLI flags: ``--warmup 50min --step 5min --horizon 5min --refit 4h``."""
        values = {
            "warmup": self.config.warmup,
            "step": self.config.step,
            "horizon": self.config.horizon,
            "refit": self.refit,
        }
        return " ".join(f"--{name} {format_duration(values[name])}" for name in FLAGS)

    def describe(self) -> str:
        derived = f"derived from the data: {', '.join(self.derived)}" if self.derived else "all as given"
        return f"{self.flags()} ({derived}; {self.scale.describe()})"


def resolve_settings(
    extents: Sequence[SeriesExtent],
    *,
    warmup: pd.Timedelta | None = None,
    step: pd.Timedelta | None = None,
    horizon: pd.Timedelta | None = None,
    refit: pd.Timedelta | None = None,
    season: pd.Timedelta = DEFAULT_SEASON,
) -> Settings:
    """Settings from the user's values, the unset ones derived from ``extents`` (module docstring)."""
    scale = DataScale.of(extents)
    derived: list[str] = []
    if horizon is None:
        horizon = derive_horizon(scale)
        derived.append("horizon")
    if step is None:
        step = horizon
        derived.append("step")
    if warmup is None:
        warmup = derive_warmup(scale, step)
        derived.append("warmup")
    if refit is None:
        refit = derive_refit(step)
        derived.append("refit")
    config = BacktestConfig(step=step, horizon=horizon, warmup=warmup, season=season)
    return Settings(config=config, refit=refit, derived=tuple(f for f in FLAGS if f in derived), scale=scale)


def too_short_note(extent: SeriesExtent, settings: Settings) -> str:
    """Why a series has no origin under ``settings``."""
    config = settings.config
    return (
        f"{extent.name}: {format_duration(extent.length)} at {format_duration(extent.spacing)} spacing "
        f"is too short for --warmup {format_duration(config.warmup)} + --horizon "
        f"{format_duration(config.horizon)} (no origin)"
    )


def no_origin_message(settings: Settings, user_set: Collection[str] | None = None) -> str:
    """The one-line error when no series has an origin: which flag to change, and to what."""
    user = set(settings.user_set if user_set is None else user_set)
    config, scale = settings.config, settings.scale
    longest = scale.longest
    s = longest.spacing if longest.spacing > pd.Timedelta(0) else scale.spacing
    room = longest.length - s  # an origin needs one sample of history before it
    data = (
        f"the longest series ({longest.name}) is {format_duration(longest.length)} "
        f"({longest.samples} samples at {format_duration(s)} spacing)"
    )
    warmup, horizon = format_duration(config.warmup), format_duration(config.horizon)
    if longest.samples < 2 or room < s:
        return f"{data}: too short to backtest with any --warmup / --horizon (needs at least 2 samples)"
    max_warmup = _floor(longest.length - config.horizon, s)
    max_horizon = _floor(longest.length - max(config.warmup, s), s)
    default = resolve_settings([scale.shortest, scale.longest])  # what leaving the flags out gives
    if "warmup" in user and max_warmup >= s:
        hint = (
            f"leave it out for {format_duration(default.config.warmup)}"
            if "horizon" not in user
            else f"or shorten --horizon {horizon}"
        )
        return (
            f"--warmup {warmup} leaves no origin: {data}; with --horizon {horizon}, use --warmup <= "
            f"{format_duration(max_warmup)} ({hint})"
        )
    if "horizon" in user and max_horizon >= s:
        return (
            f"--horizon {horizon} leaves no origin: {data}; with --warmup {warmup}, use --horizon <= "
            f"{format_duration(max_horizon)} (or leave it out for {format_duration(default.config.horizon)})"
        )
    given = " and ".join(
        f"--{f} {format_duration(getattr(config, f))}" for f in ("warmup", "horizon") if f in user
    )
    return (
        f"{given or 'the settings'} leave no origin: {data}; use --warmup + --horizon <= "
        f"{format_duration(room)} (e.g. --warmup {format_duration(default.config.warmup)} "
        f"--horizon {format_duration(default.config.horizon)}, the defaults for these data)"
    )
