"""Scores of a request trace against the usage that followed each origin.

Vocabulary: an *origin* sets a request held over its *window* ``[t, t + horizon)``; the window holds
usage *samples* (one per scrape interval). Per method and resource:

- ``slack`` = sum(max(request - usage, 0)) / sum(request), over every scored sample (0 = no waste);
- ``under_provisioning_rate`` = share of samples with usage > request (an interval = one sample);
- ``peak_exceed_rate`` = share of windows whose peak usage exceeds the request
  (for memory this is the OOM-risk rate: a container over its request is first in line for eviction);
- ``changes`` = how often the request moved between consecutive origins, ``mean_change_relative``
  = mean |delta| / previous request over those moves;
- forecast error (methods that give a point forecast of the window's mean usage): ``mae`` and
  ``mase`` = mae / mae of the seasonal naive forecast on the same origins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from mora_platform.backtest.baselines import finalize_requests


@dataclass(frozen=True)
class RequestScore:
    """Efficiency and risk of one request trace."""

    slack: float
    under_provisioning_rate: float
    peak_exceed_rate: float
    changes: int
    mean_change_relative: float
    mean_request: float
    mean_usage: float
    origins: int
    samples: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class ForecastScore:
    """Point-forecast error against the window means, and against the seasonal naive forecast."""

    mae: float
    naive_mae: float
    mase: float | None
    origins: int

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class CurvePoint:
    """One point of the efficiency-vs-risk curve: the method run with ``margin``."""

    margin: float
    slack: float
    under_provisioning_rate: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _check_shapes(requests: np.ndarray, usage: np.ndarray, window_ids: np.ndarray) -> None:
    if usage.shape != window_ids.shape:
        raise ValueError(f"usage ({usage.shape}) and window_ids ({window_ids.shape}) differ in shape")
    if usage.size == 0:
        raise ValueError("no usage sample to score")
    if window_ids.min() < 0 or window_ids.max() >= requests.size:
        raise ValueError(f"window_ids must index the {requests.size} requests")


def slack_and_under_provisioning(
    requests: np.ndarray, usage: np.ndarray, window_ids: np.ndarray
) -> tuple[float, float]:
    """(relative slack, under-provisioning rate) of per-window requests against per-sample usage."""
    per_sample = requests[window_ids]
    total = float(per_sample.sum())
    waste = float(np.maximum(per_sample - usage, 0.0).sum())
    slack = waste / total if total > 0 else (0.0 if waste == 0 else math.inf)
    return slack, float(np.mean(usage > per_sample))


def request_changes(requests: np.ndarray, rel_tol: float = 1e-9) -> tuple[int, float]:
    """Number of moves of the request between consecutive origins and their mean relative size."""
    if requests.size < 2:
        return 0, 0.0
    prev, cur = requests[:-1], requests[1:]
    delta = np.abs(cur - prev)
    moved = delta > rel_tol * np.maximum(np.abs(prev), 1e-300)
    if not moved.any():
        return 0, 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(prev[moved] > 0, delta[moved] / prev[moved], np.inf)
    return int(moved.sum()), float(np.mean(rel))


def score_requests(requests: np.ndarray, usage: np.ndarray, window_ids: np.ndarray) -> RequestScore:
    """All request metrics for one trace; ``window_ids[i]`` is the origin whose request covers sample i."""
    requests = np.asarray(requests, dtype="float64")
    usage = np.asarray(usage, dtype="float64")
    window_ids = np.asarray(window_ids, dtype=np.int64)
    _check_shapes(requests, usage, window_ids)
    slack, under = slack_and_under_provisioning(requests, usage, window_ids)
    peaks = np.full(requests.size, -np.inf)
    np.maximum.at(peaks, window_ids, usage)
    scored = np.isfinite(peaks)
    peak_exceed = float(np.mean(peaks[scored] > requests[scored]))
    changes, mean_change = request_changes(requests)
    return RequestScore(
        slack=slack,
        under_provisioning_rate=under,
        peak_exceed_rate=peak_exceed,
        changes=changes,
        mean_change_relative=mean_change,
        mean_request=float(requests.mean()),
        mean_usage=float(usage.mean()),
        origins=int(requests.size),
        samples=int(usage.size),
    )


def score_forecast(forecast: np.ndarray, actual: np.ndarray, naive: np.ndarray) -> ForecastScore | None:
    """MAE of ``forecast`` against ``actual`` window means and MASE against the seasonal ``naive``
    forecast, on origins where all three are finite; None when there is no such origin."""
    forecast, actual, naive = (np.asarray(a, dtype="float64") for a in (forecast, actual, naive))
    ok = np.isfinite(forecast) & np.isfinite(actual) & np.isfinite(naive)
    if not ok.any():
        return None
    mae = float(np.mean(np.abs(forecast[ok] - actual[ok])))
    naive_mae = float(np.mean(np.abs(naive[ok] - actual[ok])))
    mase = mae / naive_mae if naive_mae > 0 else None
    return ForecastScore(mae=mae, naive_mae=naive_mae, mase=mase, origins=int(ok.sum()))


def efficiency_curve(
    base: np.ndarray,
    floor: float,
    margins: Sequence[float],
    usage: np.ndarray,
    window_ids: np.ndarray,
    quantum: float = 0.0,
) -> list[CurvePoint]:
    """Slack and under-provisioning for each margin, requests = max(base * margin, floor)
    rounded up to ``quantum``."""
    base = np.asarray(base, dtype="float64")
    usage = np.asarray(usage, dtype="float64")
    window_ids = np.asarray(window_ids, dtype=np.int64)
    _check_shapes(base, usage, window_ids)
    points = []
    for margin in margins:
        requests = finalize_requests(base, margin, floor, quantum)
        slack, under = slack_and_under_provisioning(requests, usage, window_ids)
        points.append(CurvePoint(margin=float(margin), slack=slack, under_provisioning_rate=under))
    return points


def slack_at_risk(points: Sequence[CurvePoint], max_under_provisioning: float) -> float | None:
    """Least slack any swept margin achieves with under-provisioning <= the bound (None if none does).

    This is how methods are compared at equal risk: the lower envelope of each curve.
    """
    eligible = [p.slack for p in points if p.under_provisioning_rate <= max_under_provisioning + 1e-12]
    return min(eligible) if eligible else None


def average_curves(curves: Sequence[Sequence[CurvePoint]]) -> list[CurvePoint]:
    """Point-wise mean over series of curves computed on the same margin grid."""
    if not curves:
        return []
    grid = [p.margin for p in curves[0]]
    for curve in curves[1:]:
        if [p.margin for p in curve] != grid:
            raise ValueError("curves were computed on different margin grids")
    return [
        CurvePoint(
            margin=m,
            slack=float(np.mean([c[i].slack for c in curves])),
            under_provisioning_rate=float(np.mean([c[i].under_provisioning_rate for c in curves])),
        )
        for i, m in enumerate(grid)
    ]
