"""Recent-residual head-room: calibrate, and choose the forecast, on the rows just before a request.

The validation split calibrates the head-room once, at training time, on rows of each experiment
that look like the training rows. A request, though, is held over whatever comes next, and a
service's load moves between regimes (a new experiment, a new release, a traffic shift) that no
validation split saw. When the caller has the recent history, the head-room can be calibrated
on it instead, the way adaptive conformal prediction does:

- for each *candidate* forecast (the fused one, each member alone, the peak-quantile forecast of
  the usage over the held steps, ``models.peak``, and rules that need no fit, ``RECENT_RULES``: a
  moving average, the recent peak (the highest usage of the last hour), the hour's 95th percentile and
  the highest usage of the last 15 minutes), take its predictions ``p_i`` over the
  recent rows (made before row ``i``) and the usage over the ``H`` steps each request would
  have been held, ``u_{i+k}`` for ``k < H``; the residuals ``u_{i+k} - p_i`` (every step of every
  complete holding window, in the caller's time order, so windows run across experiment
  boundaries just as a held request does) give the split-conformal quantile ``q`` at ``coverage``;
  ``p_now + q`` then covers each step of the next holding period with probability ``coverage``;
  the quantile of the last ``DRIFT_WINDOWS`` windows alone is taken too, and the larger one kept,
  so a level that moved lately widens the head-room at once rather than a day later;
- the windows are those that started at a level like now's (the mean usage of the ``max(H, 4)`` rows
  before each window's start within a factor ``LEVEL_BAND`` of the last ones' mean; every window when
  fewer than the windows needed are): a group-conditional (Mondrian) conformal quantile. A busy service
  is not charged for the jumps out of idle spells it calibrated on, and an idle one keeps them, so the
  request covers the load coming back when its history has seen it come back;
- among the candidates that can answer now, the one whose calibrated requests over the same rows
  were the smallest on average (relative to the usage) is chosen: it wasted the least while
  covering as promised. A member that went astray since training (a Prophet trend run off, an
  LSTM outside its training range) stops being chosen without being retrained.

The residuals of rows a model was trained on are in-sample (optimistic for that model); rows after
the last fit are not. The choice and its evidence are returned so callers can report them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mora_platform.models.calibration import conformal_quantile

MIN_RECENT_ORIGINS = 40
# ... and never fewer than an hour of them: a coverage promise needs evidence that spans time, not only
# rows. At a 15-second scrape 40 windows are ten minutes, short enough to have seen nothing but an idle
# spell, and a request calibrated on it starved the load that came back (Online Boutique's frontend,
# development part: 4.0% of its samples under-provisioned, 0.7% with the hour)
MIN_RECENT_EVIDENCE_SECONDS = 3_600
DRIFT_WINDOWS = 240  # the drift guard: the last holding windows calibrated on their own as well
# calibrate on the windows that started at a level like now's (within this factor; all of them when fewer
# than the windows needed are): chosen on the development parts, where it left Online Boutique and the
# synthetic fleet within 0.2 points and took the idle-periods preset's CPU slack 46.7% -> 34.8%
LEVEL_BAND: float | None = 3.0
RECENT_PEAK = "recent-peak"
VALIDATION = "validation"  # the training-time head-room, as a source of a request
PEAK_WINDOW_SECONDS = 3_600  # the recent peak: the highest usage of the last hour
# the recent head-room's defaults: rows it looks at, and what it chooses between (the fused forecast
# and the recent peak; the members alone are already weighed inside the fusion, and offering each
# again on the same rows made a lucky pick likelier than a good one)
RECENT_ROWS = 1_440
# --- issue 16: the peak-quantile candidate (``models.peak``): a forecast of the usage over the held
# steps themselves, judged on the recent rows it never trained on like every fitted candidate ---
PEAK_QUANTILE = "peak-quantile"
# rules over the usage itself that need no fit, each ``name -> (statistic, seconds before the row)``:
# the statistic is "max" or a quantile in (0, 1); the recent peak is the first
RECENT_P95 = "recent-p95"  # the 95th percentile of the last hour: a peak that ignores a lone spike
RECENT_PEAK_SHORT = "recent-peak-15m"  # the highest usage of the last 15 minutes: a level that just moved
RECENT_RULES: dict[str, tuple[str | float, int]] = {
    RECENT_PEAK: ("max", PEAK_WINDOW_SECONDS),
    RECENT_P95: (0.95, PEAK_WINDOW_SECONDS),
    RECENT_PEAK_SHORT: ("max", 900),
}
# offered by default: chosen on the development parts only (benchmarks/backtest_report.py); adding the
# hour's p95 and the 15 minutes' peak beside the hour's peak lowered Online Boutique CPU 59.3% / 1.23%
# -> 57.9% / 1.09% and memory under-provisioning 0.85% -> 0.22% at the same slack, synthetic unchanged
RECENT_CANDIDATES: tuple[str, ...] = ("fused", RECENT_PEAK, PEAK_QUANTILE, RECENT_P95, RECENT_PEAK_SHORT)
# --- end issue 16 ---
# "auto" keeps the validation head-room only where it covered at least coverage - this on unseen rows
KEPT_TOLERANCE = 0.01
MIN_KEPT_WINDOWS = 40


def min_recent_windows(gap_seconds: float | None) -> int:
    """The complete holding windows a recent candidate needs before it may answer, for rows
    ``gap_seconds`` apart: ``MIN_RECENT_ORIGINS``, and at least ``MIN_RECENT_EVIDENCE_SECONDS`` of them."""
    if gap_seconds is None or not gap_seconds > 0:
        return MIN_RECENT_ORIGINS
    return max(MIN_RECENT_ORIGINS, round(MIN_RECENT_EVIDENCE_SECONDS / gap_seconds))


def rolling_peak(values: np.ndarray, window: int) -> np.ndarray:
    """At each row, the highest of the ``window`` values before it (NaN until ``window`` are seen):
    the recent-peak candidate's prediction over the recent rows."""
    values = np.asarray(values, dtype="float64")
    window = max(int(window), 1)
    out = np.full(values.shape, np.nan)
    if len(values) > window:
        windows = np.lib.stride_tricks.sliding_window_view(values, window)[:-1]
        with np.errstate(invalid="ignore"):
            out[window:] = np.max(windows, axis=1)
    return out


def rolling_quantile(values: np.ndarray, window: int, q: float) -> np.ndarray:
    """At each row, the ``q`` quantile of the ``window`` values before it (NaN until ``window`` are
    seen, or where one of them is missing): the ``recent-p95`` candidate's prediction."""
    values = np.asarray(values, dtype="float64")
    window = max(int(window), 1)
    out = np.full(values.shape, np.nan)
    if len(values) > window:
        windows = np.lib.stride_tricks.sliding_window_view(values, window)[:-1]
        out[window:] = np.quantile(windows, q, axis=1)
    return out


def rule_predictions(usage: np.ndarray, statistic: str | float, window: int) -> tuple[np.ndarray, float]:
    """A no-fit rule (``RECENT_RULES``) over ``usage``: its prediction before each row and now."""
    usage = np.asarray(usage, dtype="float64")
    if statistic == "max":
        now = float(np.max(usage[-window:])) if len(usage) >= window else float("nan")
        return rolling_peak(usage, window), now
    q = float(statistic)
    now = float(np.quantile(usage[-window:], q)) if len(usage) >= window else float("nan")
    return rolling_quantile(usage, window, q), now


@dataclass(frozen=True)
class RecentChoice:
    """The chosen candidate, its current point forecast, recent head-room and the request."""

    candidate: str
    point: float
    quantile: float
    request: float
    relative_cost: float
    origins: int


def holding_windows(usage: np.ndarray, predicted: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(u, p)``: per complete holding window starting at a row with a finite prediction, the
    usage over its ``steps`` rows (shape ``(m, steps)``) and the prediction made at its start (``m``)."""
    windows, predictions, _ = _holding_windows(usage, predicted, steps)
    return windows, predictions


def _holding_windows(
    usage: np.ndarray, predicted: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``holding_windows`` and the row each window starts at."""
    usage = np.asarray(usage, dtype="float64")
    predicted = np.asarray(predicted, dtype="float64")
    if usage.shape != predicted.shape:
        raise ValueError(f"usage and predictions differ in shape: {usage.shape} vs {predicted.shape}")
    steps = max(int(steps), 1)
    starts = np.arange(max(len(usage) - steps + 1, 0))
    starts = starts[np.isfinite(predicted[starts])]
    windows = usage[starts[:, None] + np.arange(steps)[None, :]] if len(starts) else np.empty((0, steps))
    keep = np.isfinite(windows).all(axis=1)
    return windows[keep], predicted[starts][keep], starts[keep]


def levels_before(usage: np.ndarray, window: int) -> np.ndarray:
    """At each row, the mean of the ``window`` values before it (NaN until ``window`` are seen): the
    level a holding window starts from."""
    usage = np.asarray(usage, dtype="float64")
    window = max(int(window), 1)
    out = np.full(usage.shape, np.nan)
    if len(usage) > window:
        sums = np.convolve(usage, np.ones(window), mode="valid")[:-1]
        out[window:] = sums / window
    return out


def like_now(usage: np.ndarray, starts: np.ndarray, steps: int, band: float) -> np.ndarray:
    """Which holding windows (by the row each starts at) began at a level like the one now: the mean of
    the ``max(steps, 4)`` values before the start within a factor ``band`` of the last ones' mean."""
    window = max(int(steps), 4)
    usage = np.asarray(usage, dtype="float64")
    now = float(np.mean(usage[-window:])) if len(usage) >= window else float("nan")
    before = levels_before(usage, window)[starts]
    if not np.isfinite(now):
        return np.ones(len(starts), dtype=bool)
    with np.errstate(invalid="ignore"):
        return (before >= now / band) & (before <= now * band)


def choose_recent(
    usage: np.ndarray,
    candidates: Mapping[str, tuple[np.ndarray, float]],
    steps: int,
    coverage: float,
    min_origins: int = MIN_RECENT_ORIGINS,
    relative: bool = False,
    drift_windows: int | None = None,
    level_band: float | None = None,
) -> RecentChoice | None:
    """Calibrate each candidate ``name -> (predictions over the recent rows, point now)`` on the
    recent ``usage`` and return the cheapest one (see the module docstring); ``None`` when no
    candidate has ``min_origins`` complete holding windows and a finite point now. ``relative``
    scales each residual by its prediction (floored at a tenth of the median usage), so the
    head-room follows the level, as ``models.calibration`` does. With ``drift_windows``, the quantile
    of the last ``drift_windows`` windows alone (at least ``min_origins``) is taken as well and the
    larger one kept."""
    if not 0.5 < coverage < 1:
        raise ValueError(f"coverage must be in (0.5, 1), got {coverage}")
    best: RecentChoice | None = None
    # which rows a window may start at to count as "like now" (the same for every candidate)
    similar_at = like_now(usage, np.arange(len(usage)), steps, level_band) if level_band else None
    for name, (predicted, now) in candidates.items():
        if not np.isfinite(now):
            continue
        windows, starts, rows = _holding_windows(usage, predicted, steps)
        if len(starts) < min_origins:
            continue
        if similar_at is not None:
            similar = similar_at[rows]
            if int(similar.sum()) >= min_origins:
                windows, starts = windows[similar], starts[similar]
        floor = 0.1 * float(np.median(np.abs(windows))) if relative else 0.0
        scale = np.maximum(starts, floor) if floor > 0 else np.ones_like(starts)
        residuals = (windows - starts[:, None]) / scale[:, None]
        q, _ = conformal_quantile(residuals.ravel(), coverage)
        if drift_windows and len(starts) > drift_windows:
            q = max(q, conformal_quantile(residuals[-max(drift_windows, min_origins) :].ravel(), coverage)[0])
        level = float(np.mean(np.abs(windows)))
        cost = float(np.mean(np.maximum(starts + q * scale, 0.0))) / level if level > 0 else float("inf")
        head_room = q * max(float(now), floor) if floor > 0 else q
        choice = RecentChoice(name, float(now), q, max(float(now) + head_room, 0.0), cost, len(starts))
        if best is None or choice.relative_cost < best.relative_cost:
            best = choice
    return best
