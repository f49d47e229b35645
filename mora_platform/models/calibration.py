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

Both are kept per *mode* (``fused`` and each member alone), because a degraded answer (one
member unavailable) must carry that member's own head-room, not the ensemble's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mora_platform.recommend.types import TARGETS

FUSED = "fused"


def conformal_quantile(residuals: np.ndarray, coverage: float) -> tuple[float, bool]:
    """``(q, capped)``: the finite-sample corrected upper quantile; ``capped`` if n was too small."""
    r = np.sort(np.asarray(residuals, dtype="float64")[np.isfinite(residuals)])
    n = r.size
    if n == 0:
        raise ValueError("no finite residuals to calibrate on")
    k = math.ceil((n + 1) * coverage)
    return (float(r[-1]), True) if k > n else (float(r[k - 1]), False)


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
    """Head-room ``quantile`` (target units), ``confidence`` and the evidence behind them."""

    quantile: float
    confidence: float
    mae: float
    n: int
    source: str = "validation"


@dataclass
class Calibration:
    """Per mode (``fused`` or a member name), per target calibration."""

    coverage: float
    modes: dict[str, dict[str, TargetCalibration]] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)

    def for_mode(self, mode: str) -> dict[str, TargetCalibration]:
        return self.modes.get(mode) or self.modes[FUSED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "coverage": self.coverage,
            "modes": {m: {t: asdict(c) for t, c in per.items()} for m, per in self.modes.items()},
            "fallbacks": self.fallbacks,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Rebuild from ``to_dict``; ``ValueError`` on malformed input."""
        try:
            modes = {
                str(m): {t: TargetCalibration(**per[t]) for t in TARGETS} for m, per in data["modes"].items()
            }
            calibration = cls(float(data["coverage"]), modes, [str(f) for f in data.get("fallbacks", [])])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed calibration: {exc}") from exc
        if FUSED not in modes:
            raise ValueError("malformed calibration: no 'fused' mode")
        return calibration


def calibrate(
    actual: pd.DataFrame, predictions: dict[str, pd.DataFrame], coverage: float, source: str = "validation"
) -> Calibration:
    """Calibrate every mode in ``predictions`` (mode -> frame of TARGETS) against ``actual``.

    A mode without a single usable row borrows the widest head-room of the others (recorded).
    """
    calibration = Calibration(coverage)
    for mode, predicted in predictions.items():
        per: dict[str, TargetCalibration] = {}
        for target in TARGETS:
            y, p = actual[target].to_numpy(dtype="float64"), predicted[target].to_numpy(dtype="float64")
            ok = np.isfinite(y) & np.isfinite(p)
            if not ok.any():
                continue
            q, capped = conformal_quantile(y[ok] - p[ok], coverage)
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
                per[target] = TargetCalibration(
                    widest.quantile, min(c.confidence for c in known), widest.mae, 0, "borrowed"
                )
                calibration.fallbacks.append(
                    f"calibration.{mode}.{target}: no {source} rows; borrowed the widest head-room"
                )
    if FUSED not in calibration.modes:
        raise ValueError("calibration needs a 'fused' mode")
    return calibration
