"""The ensemble: itself a forecaster, fusing its members by per-target weights.

``fused = sum(w_m * yhat_m) / sum(w_m)`` over the members that answered (default weights: each
member's registered ``default_weight``, ``models.members``: Prophet 0.4, LSTM 0.6). A member that is missing (not configured / not trainable) or failed is
left out, the other answers alone and the ensemble is flagged ``degraded``. When, for one row,
only some members answer (e.g. the LSTM lacks a full window) that row is answered by the fusion
of those members, in that subset's *mode* (``"prophet+naive"``; a single member's mode is its
name), so calibration can use the right head-room (see ``calibration``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from mora_platform.models.base import (
    Forecaster,
    ModelError,
    ModelLoadError,
    known_context,
    read_json,
    write_json,
)
from mora_platform.models.calibration import FUSED
from mora_platform.models.members import LEGACY_PAIR, registered_members, resolve_weights
from mora_platform.recommend.types import TARGETS

ENSEMBLE_FILE = "ensemble.json"
OK, FAILED, MISSING = "ok", "failed", "missing"


def default_weights(prophet_weight: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{"prophet": {t: w}, "lstm": {t: 1 - w}}`` from Prophet's weight per target (legacy
    ``fusion_weights``; see ``members.resolve_weights`` for any set of members)."""
    return resolve_weights(LEGACY_PAIR, prophet_weight)


def subset_mode(names: Sequence[str]) -> str:
    """The calibration mode of a fusion over ``names`` only (a single member: its own name)."""
    return "+".join(names)


def member_types() -> dict[str, type[Forecaster]]:
    """Member name -> class, for loading: the member registry (``models.members``)."""
    from mora_platform.models.members import member_types as registered

    return registered()


@dataclass
class NextForecast:
    """``forecast_next`` with its parts: fused point, each member's point, weights used and mode."""

    point: dict[str, float]
    members: dict[str, dict[str, float]]
    weights: dict[str, dict[str, float]]
    mode: str


class EnsembleForecaster(Forecaster):
    """Weighted fusion of named members; see the module docstring."""

    name = "ensemble"

    def __init__(
        self,
        members: Mapping[str, Forecaster | None],
        weights: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.candidates = dict(members)
        self.members: dict[str, Forecaster] = {}
        self.status: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        given = {m: dict(w) for m, w in (weights or {}).items()}
        types = registered_members()
        default = {m: types[m].default_weight if m in types else 1.0 for m in self.candidates}
        self.weights = {
            m: {t: float(given.get(m, {}).get(t, default[m])) for t in TARGETS} for m in self.candidates
        }

    @classmethod
    def from_fitted(
        cls,
        members: Mapping[str, Forecaster | None],
        weights: Mapping[str, Mapping[str, float]] | None = None,
    ) -> EnsembleForecaster:
        """An ensemble over members fitted elsewhere (``None`` = missing); no refit."""
        ensemble = cls(members, weights)
        for name, member in members.items():
            if member is None or not member.fitted:
                ensemble.status[name] = MISSING
                ensemble.reasons[name] = (
                    f"{name}: not configured" if member is None else f"{name}: not fitted"
                )
            else:
                ensemble.members[name], ensemble.status[name] = member, OK
        if not ensemble.members:
            raise ModelError("an ensemble needs at least one fitted member")
        ensemble.fitted = True
        ensemble._collect_fallbacks()
        return ensemble

    @property
    def degraded(self) -> bool:
        return any(s != OK for s in self.status.values())

    # ---- fitting -------------------------------------------------------------------------
    def _fit(self, frame: pd.DataFrame) -> None:
        self.members, self.status, self.reasons = {}, {}, {}
        for name, member in self.candidates.items():
            if member is None:
                self.status[name], self.reasons[name] = MISSING, f"{name}: not configured"
                continue
            try:
                member.fit(frame)
            except Exception as exc:  # one member's failure must leave the other usable
                self.status[name], self.reasons[name] = FAILED, f"{name}: {type(exc).__name__}: {exc}"
                continue
            self.members[name], self.status[name] = member, OK
        if not self.members:
            raise ModelError("every ensemble member failed: " + "; ".join(self.reasons.values()))
        self._collect_fallbacks()

    def _collect_fallbacks(self) -> None:
        self.fallbacks = [f for m in self.members.values() for f in m.fallbacks]
        self.fallbacks += [f"ensemble: degraded, {r}" for r in self.reasons.values()]

    # ---- fusion --------------------------------------------------------------------------
    def member_predictions(self, frame: pd.DataFrame, *, as_asked: bool = False) -> dict[str, pd.DataFrame]:
        """Each member's one-step predictions over ``frame``. With ``as_asked``, a member that reads a
        row's own load regressors (``reads_row_context``) gets the previous row's instead, as a request
        without a ``context`` would: its residuals over past rows are then the ones its answer now has."""
        self._require_fitted()
        asked = known_context(frame) if as_asked else frame
        return {name: m.predict(asked if m.reads_row_context else frame) for name, m in self.members.items()}

    def fuse(self, predictions: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
        """Row-wise weighted mean over the members that answered each row."""
        names = list(predictions)
        index = next(iter(predictions.values())).index
        out = pd.DataFrame(index=index, columns=list(TARGETS), dtype="float64")
        for target in TARGETS:
            values = np.column_stack([predictions[n][target].to_numpy(dtype="float64") for n in names])
            finite = np.isfinite(values)
            w = np.array([self.weights[n][target] for n in names])[None, :] * finite
            total = w.sum(axis=1, keepdims=True)
            equal = finite / np.maximum(finite.sum(axis=1, keepdims=True), 1)
            w = np.where(total > 0, w / np.where(total > 0, total, 1), equal)
            fused = np.where(finite, values, 0.0) * w
            out[target] = np.where(finite.any(axis=1), fused.sum(axis=1), np.nan)
        return out

    def mode_predictions(self, predictions: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Predictions per calibration mode: ``fused`` where every member answered, then the fusion
        of each proper subset of two or more members where those answered, then each member alone
        (the order in which a row's answering mode is looked up)."""
        names = list(predictions)
        complete = np.logical_and.reduce(
            [np.isfinite(p.to_numpy(dtype="float64")) for p in predictions.values()]
        )
        modes = {FUSED: self.fuse(predictions).where(complete)}
        for size in range(len(names) - 1, 1, -1):
            for subset in combinations(names, size):
                part = {n: predictions[n] for n in subset}
                answered = np.logical_and.reduce(
                    [np.isfinite(p.to_numpy(dtype="float64")) for p in part.values()]
                )
                modes[subset_mode(subset)] = self.fuse(part).where(answered)
        modes.update(predictions)
        return modes

    def choose_weights(
        self, actual: pd.DataFrame, predictions: Mapping[str, pd.DataFrame], step: float = 0.05
    ) -> None:
        """Pick the weights per target minimising MAE on ``actual`` (validation rows).

        Weights are searched on a grid over the simplex (``step``) for two or three members, on the
        rows where every member answered; a target without such rows keeps its weights.
        """
        names = list(predictions)
        if not 2 <= len(names) <= 3 or any(n not in self.weights for n in names):
            return
        ticks = round(1 / step)
        grid = np.array(
            [
                (i / ticks, j / ticks, (ticks - i - j) / ticks)
                for i in range(ticks + 1)
                for j in range(ticks + 1 - i)
                if len(names) == 3 or i + j == ticks
            ]
        )[:, : len(names)]
        for target in TARGETS:
            values = np.column_stack([predictions[n][target].to_numpy(dtype="float64") for n in names])
            y = actual[target].to_numpy(dtype="float64")
            ok = np.isfinite(values).all(axis=1) & np.isfinite(y)
            if not ok.any():
                continue
            errors = np.abs(values[ok] @ grid.T - y[ok][:, None]).mean(axis=0)
            best = grid[int(np.argmin(errors))]
            for name, weight in zip(names, best, strict=True):
                self.weights[name][target] = float(round(weight, 6))

    def anchor(self, last_timestamp: pd.Timestamp) -> None:
        """Tell members with precomputed forecasts where the data ends (see ``ProphetForecaster.anchor_grid``)."""
        for member in self.members.values():
            anchor = getattr(member, "anchor_grid", None)
            if anchor is not None:
                anchor(last_timestamp)

    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.fuse(self.member_predictions(frame))

    # ---- serving -------------------------------------------------------------------------
    def explain_next(
        self, history: pd.DataFrame, context: Mapping[str, float | str] | None = None
    ) -> NextForecast:
        """``forecast_next`` plus each member's answer, the weights used and the calibration mode."""
        self._require_fitted()
        answers = {name: m.forecast_next(history, context) for name, m in self.members.items()}
        answered = [n for n, a in answers.items() if all(math.isfinite(a[t]) for t in TARGETS)]
        if len(answered) == len(answers):
            mode = FUSED
        elif answered:
            mode = subset_mode(answered)
        else:
            raise ModelError("no ensemble member could answer for this history")
        # Same rule as ``fuse``, on scalars (this is the serving path: no DataFrames).
        used: dict[str, dict[str, float]] = {n: {} for n in answers}
        point: dict[str, float] = {}
        for t in TARGETS:
            finite = [n for n in answers if math.isfinite(answers[n][t])]
            total = sum(self.weights[n][t] for n in finite)
            for n in answers:
                if n not in finite:
                    used[n][t] = 0.0
                else:
                    used[n][t] = self.weights[n][t] / total if total > 0 else 1.0 / len(finite)
            point[t] = sum(used[n][t] * answers[n][t] for n in finite) if finite else float("nan")
        return NextForecast(point, answers, used, mode)

    def _forecast_next(self, history: pd.DataFrame, context: dict[str, float | str]) -> dict[str, float]:
        return self.explain_next(history, context).point

    # ---- persistence ---------------------------------------------------------------------
    def _save(self, directory: Path) -> list[str]:
        files = [f for m in self.members.values() for f in m.save(directory)]
        meta = {
            "format": 1,
            "members": {
                n: {"status": self.status[n], "reason": self.reasons.get(n, "")} for n in self.status
            },
            "weights": self.weights,
            "fallbacks": self.fallbacks,
        }
        files.append(write_json(directory / ENSEMBLE_FILE, meta))
        return files

    @classmethod
    def _load(cls, directory: Path) -> Self:
        meta: Any = read_json(directory / ENSEMBLE_FILE)
        types = member_types()
        try:
            status = {str(n): str(s["status"]) for n, s in meta["members"].items()}
            reasons = {str(n): str(s.get("reason", "")) for n, s in meta["members"].items()}
            weights = {str(m): {t: float(w[t]) for t in TARGETS} for m, w in meta["weights"].items()}
            unknown = [n for n, s in status.items() if n not in types and s == OK]
            if unknown:
                raise ValueError(f"unknown member(s) {unknown}; registered: {list(types)}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{ENSEMBLE_FILE}: malformed ({exc})") from exc
        members: dict[str, Forecaster | None] = dict.fromkeys(status)
        model = cls(members, weights)
        model.status = status
        model.reasons = {n: r for n, r in reasons.items() if r}
        model.members = {n: types[n].load(directory) for n, s in status.items() if s == OK}
        if not model.members:
            raise ModelLoadError(f"{ENSEMBLE_FILE}: no usable member")
        model._collect_fallbacks()
        return model
