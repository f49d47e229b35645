"""Calibration of the fused forecast: conformal head-room and a confidence that means something.

**Request.** For each target, on the validation split (rows the members never trained on), take
the residuals ``r_i = y_i - yhat_i`` (n of them) and the one-sided split-conformal quantile

    q = r_(k),  k = ceil((n + 1) * coverage)   (the k-th smallest residual)

so that, for exchangeable data, ``request = yhat + q`` covers the next value with probability
at least ``coverage`` (default 0.95). When ``k > n`` (too few residuals) the largest residual is
used and the fact is recorded. ``q`` may be negative when a member over-forecasts.

**Confidence.** Per target, ``c = 1 / (1 + MAE / mean|y|)`` on the same validation rows: 1 for a
perfect forecast, 0.5 when the mean absolute error equals the mean level, towards 0 beyond
(``c = 1`` if both are 0, ``c = 0`` if only the level is 0). A recommendation's confidence is
the minimum over its targets: it is as sure as its least sure target.

Both are kept per *mode* (``fused``, the fusion of each proper subset of members such as
``prophet+naive``, and each member alone), because a degraded answer (a member unavailable)
must carry the head-room of what actually answered, not the ensemble's.

**Relative head-room.** Usage noise grows with its level (a service at 100 users swings more
than at 5). With ``relative=True`` the residual is scaled by the forecast, ``r_i = (y_i - yhat_i) /
s_i`` with ``s_i = max(yhat_i, scale_floor)`` (``scale_floor`` = a tenth of the median |y|, so a
near-zero forecast does not blow the ratio up), and the request is ``yhat + q * max(yhat,
scale_floor)``: the head-room follows the current level instead of the noisiest one seen.
``TargetCalibration.head_room(point)`` gives the head-room either way.

**What is covered.** The members forecast the seed's targets (CPU x 1.2, memory x 1.15), but the
head-room is calibrated against the *usage* itself (``covered``): ``q`` is a quantile of
``usage - forecast``, so ``forecast + q`` covers the usage with probability ``coverage`` and the
seed's factor is not added on top of the conformal margin (it would be paid twice). ``q`` is
then usually negative for CPU. The confidence stays a measure of the forecast (target vs forecast).

**Horizon.** A request is held for a while, not for one step. With ``horizon_steps = H > 1`` the
residual of row ``i`` is taken against the *peak* of the target over rows ``[i, i + H)`` of the
same experiment (``forward_peak``), so ``request = yhat + q`` covers the highest usage over the
next ``H`` steps with probability ``coverage``. The one-step head-room is kept beside it
(``next_step``) for callers that re-ask every step; with ``H = 1`` both are the same.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from mora_platform.recommend.types import TARGETS

FUSED = "fused"
#: ``TargetCalibration.source`` of a target the training data had no values for.
UNAVAILABLE = "unavailable"


def conformal_quantile(residuals: np.ndarray, coverage: float) -> tuple[float, bool]:
    """``(q, capped)``: the finite-sample corrected upper quantile; ``capped`` if n was too small."""
    r = np.sort(np.asarray(residuals, dtype="float64")[np.isfinite(residuals)])
    n = r.size
    if n == 0:
        raise ValueError("no finite residuals to calibrate on")
    k = math.ceil((n + 1) * coverage)
    return (float(r[-1]), True) if k > n else (float(r[k - 1]), False)


def forward_peak(values: pd.Series, groups: pd.Series, steps: int) -> pd.Series:
    """Per row: max of ``values`` over rows ``[r, r + steps)`` of the same group (NaNs ignored)."""
    if steps <= 1:
        return values.astype("float64")
    reversed_values = values.astype("float64").iloc[::-1]
    peaks = reversed_values.groupby(groups.iloc[::-1].to_numpy(), sort=False).transform(
        lambda s: s.rolling(steps, min_periods=1).max()
    )
    return peaks.iloc[::-1]


def confidence_score(y: np.ndarray, prediction: np.ndarray) -> float:
    """``1 / (1 + MAE / mean|y|)`` over the finite pairs (see the module docstring)."""
    y, p = np.asarray(y, dtype="float64"), np.asarray(prediction, dtype="float64")
    ok = np.isfinite(y) & np.isfinite(p)
    if not ok.any():
        return 0.0
    mae = float(np.mean(np.abs(y[ok] - p[ok])))
    level = float(np.mean(np.abs(y[ok])))
    if level == 0:
        return 1.0 if mae == 0 else 0.0
    return 1.0 / (1.0 + mae / level)


@dataclass
class TargetCalibration:
    """Head-room ``quantile`` (target units, or a share of the forecast when ``relative``),
    ``confidence`` and the evidence behind them."""

    quantile: float
    confidence: float
    mae: float
    n: int
    source: str = "validation"
    relative: bool = False
    scale_floor: float = 0.0

    def head_room(self, point: Any) -> Any:
        """Head-room to add to ``point`` (a float or an array of forecasts)."""
        if self.relative:
            return self.quantile * np.maximum(point, self.scale_floor)
        return self.quantile + np.zeros(np.shape(point)) if np.ndim(point) else self.quantile

    def request(self, point: float) -> float:
        """``point`` plus its head-room, never below 0."""
        return max(float(point) + float(self.head_room(float(point))), 0.0)


@dataclass
class Calibration:
    """Per mode (``fused`` or a member name), per target calibration.

    ``modes`` holds the head-room for a request held ``horizon_steps`` steps (what serving uses);
    ``next_step`` the one-step head-room when ``horizon_steps > 1`` (else ``modes`` is that).
    """

    coverage: float
    modes: dict[str, dict[str, TargetCalibration]] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    horizon_steps: int = 1
    next_step: dict[str, dict[str, TargetCalibration]] | None = None

    def for_mode(self, mode: str, *, next_step: bool = False) -> dict[str, TargetCalibration]:
        """Head-room of ``mode`` (falling back to ``fused``); ``next_step`` for the one-step one."""
        modes = self.next_step if next_step and self.next_step else self.modes
        return modes.get(mode) or modes[FUSED]

    def mark_unavailable(self, targets: Collection[str]) -> None:
        """Replace ``targets``' calibration in every mode by a neutral placeholder (``source``
        ``unavailable``, head-room 0, confidence 1 so a minimum over targets ignores it): the
        residuals behind it were of a filled-in constant, not of data."""
        for modes in (self.modes, self.next_step or {}):
            for per in modes.values():
                for target in targets:
                    per[target] = TargetCalibration(0.0, 1.0, 0.0, 0, source=UNAVAILABLE)

    def unavailable(self) -> list[str]:
        """Targets whose fused calibration is the ``unavailable`` placeholder."""
        return [t for t, c in self.modes.get(FUSED, {}).items() if c.source == UNAVAILABLE]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": 1,
            "coverage": self.coverage,
            "horizon_steps": self.horizon_steps,
            "modes": _modes_dict(self.modes),
            "fallbacks": self.fallbacks,
        }
        if self.next_step is not None:
            data["next_step"] = _modes_dict(self.next_step)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Rebuild from ``to_dict``; ``ValueError`` on malformed input (files without
        ``horizon_steps`` are one-step calibrations)."""
        try:
            modes = _modes_from(data["modes"])
            next_step = _modes_from(data["next_step"]) if data.get("next_step") is not None else None
            horizon_steps = int(data.get("horizon_steps", 1))
            calibration = cls(
                float(data["coverage"]),
                modes,
                [str(f) for f in data.get("fallbacks", [])],
                horizon_steps,
                next_step,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed calibration: {exc}") from exc
        if FUSED not in modes or (next_step is not None and FUSED not in next_step):
            raise ValueError("malformed calibration: no 'fused' mode")
        if horizon_steps < 1:
            raise ValueError(f"malformed calibration: horizon_steps must be >= 1, got {horizon_steps}")
        return calibration


def _modes_dict(modes: dict[str, dict[str, TargetCalibration]]) -> dict[str, Any]:
    return {m: {t: asdict(c) for t, c in per.items()} for m, per in modes.items()}


def _modes_from(data: Any) -> dict[str, dict[str, TargetCalibration]]:
    return {str(m): {t: TargetCalibration(**per[t]) for t in TARGETS} for m, per in data.items()}


def horizon_actual(actual: pd.DataFrame, experiments: pd.Series, steps: int) -> pd.DataFrame:
    """``actual`` (frame of TARGETS) replaced by each target's peak over the next ``steps`` rows
    of the same experiment: what a request held ``steps`` steps has to cover."""
    if steps <= 1:
        return actual
    groups = pd.Series(experiments.to_numpy(), index=actual.index)
    return pd.DataFrame(
        {t: forward_peak(actual[t], groups, steps) for t in actual.columns}, index=actual.index
    )


def calibrate(
    actual: pd.DataFrame,
    predictions: dict[str, pd.DataFrame],
    coverage: float,
    source: str = "validation",
    horizon_steps: int = 1,
    relative: bool = False,
    covered: pd.DataFrame | None = None,
) -> Calibration:
    """Calibrate every mode in ``predictions`` (mode -> frame of TARGETS) against ``actual``.

    ``actual`` is what the forecast forecasts (the confidence and MAE are measured on it);
    ``covered`` (default ``actual``) is what the request must cover: the usage itself, or for
    ``horizon_steps > 1`` its peak over the horizon (``horizon_actual``); ``horizon_steps`` is
    recorded. ``relative`` scales the residuals by the forecast (see the module docstring). A mode
    without a single usable row borrows the widest head-room of the others (recorded).
    """
    covered = actual if covered is None else covered
    calibration = Calibration(coverage, horizon_steps=int(horizon_steps))
    for mode, predicted in predictions.items():
        per: dict[str, TargetCalibration] = {}
        for target in TARGETS:
            y, p = actual[target].to_numpy(dtype="float64"), predicted[target].to_numpy(dtype="float64")
            c = covered[target].to_numpy(dtype="float64")
            ok = np.isfinite(y) & np.isfinite(p) & np.isfinite(c)
            if not ok.any():
                continue
            # a target whose level is 0 (e.g. an idle service) has nothing to be relative to
            scale_floor = 0.1 * float(np.median(np.abs(y[ok]))) if relative else 0.0
            scaled = relative and scale_floor > 0
            scale = np.maximum(p[ok], scale_floor) if scaled else 1.0
            q, capped = conformal_quantile((c[ok] - p[ok]) / scale, coverage)
            if capped:
                calibration.fallbacks.append(
                    f"calibration.{mode}.{target}: {int(ok.sum())} residuals too few for {coverage:.0%}; used the largest"
                )
            per[target] = TargetCalibration(
                quantile=q,
                confidence=confidence_score(y[ok], p[ok]),
                mae=float(np.mean(np.abs(y[ok] - p[ok]))),
                n=int(ok.sum()),
                source=source,
                relative=scaled,
                scale_floor=scale_floor if scaled else 0.0,
            )
        if per:
            calibration.modes[mode] = per
    for target in TARGETS:
        known = [per[target] for per in calibration.modes.values() if target in per]
        if not known:
            raise ValueError(f"no {source} residuals for target {target!r}")
        widest = max(known, key=lambda c: c.quantile)
        for mode in predictions:
            per = calibration.modes.setdefault(mode, {})
            if target not in per:
                per[target] = replace(
                    widest, confidence=min(c.confidence for c in known), n=0, source="borrowed"
                )
                calibration.fallbacks.append(
                    f"calibration.{mode}.{target}: no {source} rows; borrowed the widest head-room"
                )
    if FUSED not in calibration.modes:
        raise ValueError("calibration needs a 'fused' mode")
    return calibration
