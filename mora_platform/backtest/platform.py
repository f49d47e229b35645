"""The platform's recommender inside the backtest: trained on the past only, refitted on a schedule.

``PlatformRecommender`` is stateful per series: at the first origin, and again whenever ``refit``
has passed since the last fit, it trains a model on the unified rows *before* the origin (the
``frame`` the engine hands it) and then asks that model for the calibrated request and the point
forecast. CPU and memory come from one model, so one fit serves both. ``platform`` holds the
request the model calibrated for the whole horizon, with the serving policy's default floors
(10m CPU, 32 MiB); ``platform-min-floors`` the same request with Kubernetes' smallest units as
floors (1m, 1 MiB); ``platform-validation`` the head-room calibrated at training time (floors
1m / 1 MiB); ``platform-1step`` the model's one-step head-room. The training itself is a
``PlatformTrainer`` (a callable), so this module stays pure and light; ``ServiceModelTrainer``
plugs in MODELS' ``train_service`` / ``ServiceModel`` and imports them only when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from mora_platform.backtest.baselines import Recommender, Suggestion, register_recommender
from mora_platform.data import schema
from mora_platform.recommend.policy import CPU_FLOOR_MILLICORES, MEMORY_FLOOR_MIB, MIB


@dataclass(frozen=True)
class PlatformForecast:
    """The model's answer at one origin: calibrated request (before the serving policy's floors and
    rounding) and point forecast of usage, per resource (cores / bytes)."""

    requests: Mapping[str, float]
    forecasts: Mapping[str, float | None]
    one_step_requests: Mapping[str, float] | None = None  # head-room calibrated for one step only
    # what answered ``requests`` per resource ("validation", or the recent candidate chosen)
    sources: Mapping[str, str] | None = None
    # the head-room calibrated at training time on validation (when ``requests`` is the recent one)
    validation_requests: Mapping[str, float] | None = None


class PlatformModel(Protocol):
    """A trained platform model, asked at each origin with the rows before it."""

    def predict(self, history: pd.DataFrame, horizon: pd.Timedelta) -> PlatformForecast: ...


PlatformTrainer = Callable[[pd.DataFrame, str], PlatformModel]


class PlatformUnavailableError(RuntimeError):
    """The platform method was asked without a trainer, or without the unified rows it needs."""


@register_recommender("platform")
class PlatformRecommender(Recommender):
    """MOrA's recommendation (Prophet + LSTM, fused and calibrated), refitted every ``refit``.

    Its default margin is 1.0: the calibrated request already carries the model's head-room. The
    base is the calibrated request before the serving policy; ``floor`` and ``quantum`` are that
    policy's (10 millicores / 32 MiB floors, rounded up to whole millicores / MiB), so the default
    request equals what ``ServiceModel.recommend`` serves and the margin sweep stays consistent.
    """

    description = "MOrA platform: Prophet + LSTM fused, head-room calibrated for the horizon"
    default_margins = {"cpu": 1.0, "memory": 1.0}
    one_step = False
    validation_head_room = False
    default_floors: tuple[int, int] = (CPU_FLOOR_MILLICORES, MEMORY_FLOOR_MIB)

    def __init__(
        self,
        margin: float | None = None,
        *,
        trainer: PlatformTrainer | None = None,
        refit: pd.Timedelta = pd.Timedelta(hours=24),
        service: str | None = None,
        cpu_floor_millicores: int | None = None,
        memory_floor_mib: int | None = None,
    ) -> None:
        super().__init__(margin)
        self.cpu_floor_millicores = cpu_floor_millicores or self.default_floors[0]
        self.memory_floor_mib = memory_floor_mib or self.default_floors[1]
        if refit <= pd.Timedelta(0):
            raise ValueError(f"platform: refit must be positive, got {refit}")
        self.trainer = trainer
        self.refit = refit
        self.service = service
        self.fits: list[pd.Timestamp] = []
        self._model: PlatformModel | None = None
        self._answer: tuple[pd.Timestamp, PlatformForecast] | None = None

    def floor(self, resource: str) -> float:
        return self.cpu_floor_millicores / 1000 if resource == "cpu" else float(self.memory_floor_mib * MIB)

    def _ensure_model(self, frame: pd.DataFrame, origin: pd.Timestamp) -> PlatformModel:
        if self._model is None or not self.fits or origin - self.fits[-1] >= self.refit:
            if self.trainer is None:
                raise PlatformUnavailableError(
                    "platform: no trainer configured (MODELS' training code is needed)"
                )
            service = self.service or str(frame[schema.SERVICE].iloc[-1])
            self._model = self.trainer(frame, service)
            self.fits.append(origin)
        return self._model

    def _suggest(
        self,
        history: pd.Series,
        resource: str,
        origin: pd.Timestamp,
        horizon: pd.Timedelta,
        frame: pd.DataFrame | None,
    ) -> Suggestion:
        if frame is None or frame.empty:
            raise PlatformUnavailableError("platform: needs the unified-schema rows before the origin")
        if self._answer is None or self._answer[0] != origin:
            model = self._ensure_model(frame, origin)
            self._answer = (origin, model.predict(frame, horizon))
        answer = self._answer[1]
        requests = answer.requests
        source = (answer.sources or {}).get(resource)
        if self.one_step:
            requests, source = answer.one_step_requests or {}, "one-step"
        elif self.validation_head_room:
            requests, source = answer.validation_requests or answer.requests, "validation"
        if resource not in requests:
            raise PlatformUnavailableError(f"{self.name}: the model gave no {resource} request")
        return Suggestion(
            base=float(requests[resource]), forecast=answer.forecasts.get(resource), source=source
        )


@register_recommender("platform-1step")
class PlatformOneStepRecommender(PlatformRecommender):
    """The platform with the head-room it serves today: calibrated for the next step only."""

    description = "MOrA platform, one-step calibration (as served)"
    one_step = True


@register_recommender("platform-min-floors")
class PlatformMinFloorsRecommender(PlatformRecommender):
    """The platform's horizon request with Kubernetes' smallest units as floors (1m CPU, 1 MiB)."""

    description = "MOrA platform, horizon head-room, floors 1m CPU / 1 MiB"
    default_floors = (1, 1)


@register_recommender("platform-validation")
class PlatformValidationRecommender(PlatformRecommender):
    """The platform with the head-room calibrated at training time (validation split, over the
    horizon), floors 1m CPU / 1 MiB: what ``ServiceModel.recommend`` serves, beside the recent one."""

    description = "MOrA platform, horizon head-room from validation, floors 1m CPU / 1 MiB"
    validation_head_room = True
    default_floors = (1, 1)
