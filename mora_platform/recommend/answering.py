"""The one answering layer: from a loaded model, recent history (or none) and a context to requests.

Everything that turns a trained service into CPU / memory / replica requests goes through
``answer_request``: ``ServiceModel.recommend`` (so the CLI and the Serve deployment) and the
backtest's platform adapter. It is pure: no Ray, S3 or HTTP; bundle I/O stays in ``training.bundle``
and the registry, and where the history comes from (the request, the dataset, the stored tail) is the
caller's business.

Head-room modes, per target (CPU and memory; replicas always take the training-time head-room):

- ``auto``: ``held_requests``, the recent head-room calibrated on the history's last rows for the
  cheapest of ``RECENT_CANDIDATES`` (the fused and peak-quantile forecasts, the no-fit recent rules),
  unless the training-time head-room kept its promise there at no higher cost; with too little history
  (``models.recent.min_recent_windows`` holding windows: 40, and at least an hour of them), or none, the
  training-time head-room answers; a history shorter than ``recent_rows_needed`` is not even judged.
- ``recent``: ``recent_requests`` alone (the training-time head-room only where it has no answer).
- ``validation``: the head-room calibrated on validation at training time, over the held steps.
- ``one-step``: the training-time head-room for the next step only.

The numbers are usage (CPU cores, memory bytes, replicas) before floors and rounding, which
``recommend.policy`` applies. A target the model was trained without (``ServiceModel.unavailable_targets``:
no data for it, e.g. no replica metric) is answered NaN (request, point and the alternatives) with the
source ``unavailable``: whatever the members computed for it came from a filled-in constant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mora_platform.data.schema import LOAD_USERS, REPLICA_COUNT, TIMESTAMP
from mora_platform.models.recent import RECENT_CANDIDATES, RECENT_ROWS, VALIDATION, min_recent_windows
from mora_platform.recommend.types import TARGETS

if TYPE_CHECKING:
    import pandas as pd

    from mora_platform.models.ensemble import NextForecast
    from mora_platform.training.bundle import ServiceModel

AUTO = "auto"
RECENT = "recent"
ONE_STEP = "one-step"
UNAVAILABLE = "unavailable"
HEAD_ROOM_MODES: tuple[str, ...] = (AUTO, RECENT, VALIDATION, ONE_STEP)
#: What a context may set (Prophet's regressors); the LSTM forecasts from the history alone.
CONTEXT_KEYS: tuple[str, ...] = (LOAD_USERS, REPLICA_COUNT)
#: The rows of a history the members' next-step window is prepared from (its latest experiment's tail).
WINDOW_SOURCE_ROWS = 2_000


@dataclass(frozen=True)
class Answer:
    """Requests per target and what set each, with the alternatives the backtest scores beside them."""

    requests: dict[str, float]  # cpu cores, memory bytes, replicas (usage, before floors and rounding)
    points: dict[str, float]  # the point each request was set from (the forecast, or the recent peak)
    sources: dict[str, str]  # validation | one-step | fused | recent-peak | ...
    validation_requests: dict[str, float]  # the training-time head-room over the held steps
    one_step_requests: dict[str, float]  # the training-time head-room for the next step
    forecast: NextForecast  # the ensemble's next-step answer (mode, members, weights)
    history_rows: int  # rows of history the answer saw (0: the stored tail)
    steps: int  # the held steps the head-room covers


def check_context(context: Mapping[str, float | str] | None) -> dict[str, float]:
    """Numeric, finite, non-negative ``load_users`` / ``replica_count``; anything else is refused."""
    checked: dict[str, float] = {}
    for key, value in (context or {}).items():
        if key not in CONTEXT_KEYS:
            raise ValueError(f"context key {key!r} is not supported; use {', '.join(CONTEXT_KEYS)}")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"context {key!r} must be a number, got {value!r}") from exc
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"context {key!r} must be a finite number >= 0, got {value!r}")
        checked[key] = number
    return checked


def recent_rows_needed(history: pd.DataFrame, steps: int, rows: int = RECENT_ROWS) -> int:
    """The fewest rows of ``history`` with which any recent candidate could answer: ``steps`` held
    rows after ``min_recent_windows`` holding windows at the spacing of its last ``rows + steps`` rows
    (an hour of windows, 40 at least). Below it the recent head-room is not even prepared: every
    candidate would be refused and the training-time head-room answers anyway."""
    import pandas as pd

    tail = history[TIMESTAMP].tail(rows + steps) if TIMESTAMP in history.columns else None
    gap_seconds = None
    if tail is not None and len(tail) > 1:
        stamps = pd.DatetimeIndex(pd.to_datetime(tail, utc=True, errors="coerce")).dropna().as_unit("ns")
        gaps = np.diff(np.sort(stamps.asi8)) / 1e9
        gaps = gaps[gaps > 0]
        gap_seconds = float(np.median(gaps)) if gaps.size else None
    return steps + min_recent_windows(gap_seconds) - 1


def answer_request(
    model: ServiceModel,
    history: pd.DataFrame | None = None,
    context: Mapping[str, float | str] | None = None,
    *,
    head_room: str = AUTO,
    steps: int | None = None,
    rows: int = RECENT_ROWS,
    fitted_until: pd.Timestamp | None = None,
) -> Answer:
    """The requests for the step after ``history`` (default: the model's stored tail) in ``context``.

    ``steps`` is the holding period in steps (default: the calibrated horizon); ``rows`` how many of
    the history's last rows the recent head-room is calibrated on; ``fitted_until`` the end of the
    training data (default: the model's), after which a fitted candidate's residuals are out of sample.
    """
    if head_room not in HEAD_ROOM_MODES:
        raise ValueError(f"head_room must be one of {', '.join(HEAD_ROOM_MODES)}, got {head_room!r}")
    checked = check_context(context)
    steps = max(int(steps or model.calibration.horizon_steps), 1)
    window = model.history if history is None else model.prepare_history(history.tail(WINDOW_SOURCE_ROWS))
    forecast = model.ensemble.explain_next(window, checked)
    held = model.calibration.for_mode(forecast.mode)
    next_step = model.calibration.for_mode(forecast.mode, next_step=True)
    points = {t: float(forecast.point[t]) for t in TARGETS}
    validation = {t: held[t].request(points[t]) for t in TARGETS}
    one_step = {t: next_step[t].request(points[t]) for t in TARGETS}
    if head_room == ONE_STEP:
        requests, sources = dict(one_step), dict.fromkeys(TARGETS, ONE_STEP)
    else:
        requests, sources = dict(validation), dict.fromkeys(TARGETS, VALIDATION)
    rows_seen = 0 if history is None else len(history)
    recent_possible = history is not None and rows_seen >= recent_rows_needed(history, steps, rows)
    if head_room == AUTO and recent_possible:
        assert history is not None
        for t, chosen in model.held_requests(history, steps, rows=rows, fitted_until=fitted_until).items():
            if chosen.source != VALIDATION:
                requests[t], points[t], sources[t] = chosen.request, chosen.point, chosen.source
    elif head_room == RECENT and history is not None:
        recent = model.recent_requests(
            history, steps, rows=rows, fitted_until=fitted_until, candidates=RECENT_CANDIDATES
        )
        for t, choice in recent.items():
            if choice is not None:
                requests[t], points[t], sources[t] = choice.request, choice.point, choice.candidate
    for t in getattr(model, "unavailable_targets", None) or {}:
        if t in requests:
            nan = float("nan")
            requests[t] = points[t] = validation[t] = one_step[t] = nan
            sources[t] = UNAVAILABLE
    return Answer(
        requests=requests,
        points=points,
        sources=sources,
        validation_requests=validation,
        one_step_requests=one_step,
        forecast=forecast,
        history_rows=rows_seen,
        steps=steps,
    )
