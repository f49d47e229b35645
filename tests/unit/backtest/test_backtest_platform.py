"""The platform method in the replay: refit schedule, one fit for both resources, past-only training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from backtest_fixtures import daily_series

from mora_platform.backtest.engine import BacktestConfig, replay_series
from mora_platform.backtest.platform import (
    PlatformForecast,
    PlatformRecommender,
    PlatformUnavailableError,
    PlatformValidationRecommender,
)


class MeanModel:
    """Request = mean of the training rows x 2 (for the test: a known answer)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.means = {
            "cpu": float(frame["cpu_cores_value"].mean()),
            "memory": float(frame["mem_bytes_value"].mean()),
        }

    def predict(self, history: pd.DataFrame, horizon: pd.Timedelta) -> PlatformForecast:
        return PlatformForecast(
            requests={k: 2 * v for k, v in self.means.items()}, forecasts=dict(self.means)
        )


def with_frame(seed: int = 0, days: float = 3.0):  # type: ignore[no-untyped-def]
    series = daily_series(days=days, seed=seed)
    series.frame = pd.DataFrame(
        {
            "timestamp": series.usage["cpu"].index,
            "service": "svc",
            "experiment_id": "e",
            "cpu_cores_value": series.usage["cpu"].to_numpy(),
            "mem_bytes_value": series.usage["memory"].to_numpy(),
        }
    )
    return series


def test_refits_on_schedule_with_past_rows_only(small_config: BacktestConfig) -> None:
    seen: list[pd.Timestamp] = []

    def trainer(frame: pd.DataFrame, service: str) -> MeanModel:
        assert service == "svc"
        seen.append(frame["timestamp"].max())
        return MeanModel(frame)

    platform = PlatformRecommender(trainer=trainer, refit=pd.Timedelta(hours=12))
    replay = replay_series(with_frame(), [platform], small_config)
    origins = replay.resources["cpu"].origins
    # origins every 2 h over 48 h -> a fit at the first origin and every 12 h after: once per 6 origins
    assert platform.fits == list(origins[::6])
    assert len(seen) == len(platform.fits)
    for fit_origin, newest in zip(platform.fits, seen, strict=True):
        assert newest < fit_origin
    trace = replay.resources["cpu"].traces["platform"]
    assert trace.ok and np.isfinite(trace.forecast).all()
    assert trace.base[0] == pytest.approx(2 * trace.forecast[0])
    assert replay.resources["memory"].traces["platform"].ok


def test_platform_without_trainer_fails_cleanly(small_config: BacktestConfig) -> None:
    replay = replay_series(with_frame(), [PlatformRecommender()], small_config)
    trace = replay.resources["cpu"].traces["platform"]
    assert not trace.ok and "no trainer" in (trace.error or "")
    with pytest.raises(ValueError, match="refit"):
        PlatformRecommender(refit=pd.Timedelta(0))
    with pytest.raises(PlatformUnavailableError, match="unified-schema rows"):
        PlatformRecommender(trainer=lambda f, s: MeanModel(f)).recommend(
            daily_series(days=1).usage["cpu"], "cpu"
        )


def test_platform_floor_and_rounding_follow_the_serving_policy() -> None:
    platform = PlatformRecommender()
    assert platform.apply_margin(0.0031, "cpu") == pytest.approx(0.010)  # 10m floor
    assert platform.apply_margin(0.2501, "cpu") == pytest.approx(0.251)  # up to whole millicores
    assert platform.apply_margin(0.5, "cpu") == pytest.approx(0.5)  # no float-noise bump
    assert platform.apply_margin(100.5 * 2**20, "memory") == 101 * 2**20
    assert platform.apply_margin(2**20, "memory") == 32 * 2**20


def test_min_floors_variant_uses_kubernetes_units() -> None:
    from mora_platform.backtest.baselines import registered_recommenders

    minimal = registered_recommenders()["platform-min-floors"]()
    assert isinstance(minimal, PlatformRecommender)
    assert minimal.apply_margin(0.0003, "cpu") == pytest.approx(0.001)
    assert minimal.apply_margin(0.0031, "cpu") == pytest.approx(0.004)
    assert minimal.apply_margin(0.2 * 2**20, "memory") == 2**20
    configured = PlatformRecommender(cpu_floor_millicores=5, memory_floor_mib=8)
    assert configured.floor("cpu") == pytest.approx(0.005) and configured.floor("memory") == 8 * 2**20


def test_adapter_matches_what_the_service_model_serves() -> None:
    """Train the real ensemble on a tiny synthetic service: the backtest's request at margin 1 is
    the request ``ServiceModel.recommend`` serves for the same history."""
    from mora_platform.backtest.platform_training import ServiceModelTrainer
    from mora_platform.data.synthetic import generate_fleet

    fleet = generate_fleet(n_services=1, days=1.5, step_seconds=300, seed=3)
    trainer = ServiceModelTrainer(
        {"epochs": 1, "lstm": {"units": [4], "dense_units": 0}}, head_room="validation"
    )
    adapter = trainer(fleet, "svc-00")
    answer = adapter.predict(fleet, pd.Timedelta(hours=1))
    rec = adapter.model.recommend(history=fleet.tail(2000), head_room="validation")
    served, decision = rec.recommendations, rec.replica_decision
    platform = PlatformRecommender()
    assert answer.one_step_requests is not None and decision is not None
    assert decision.current and decision.recommended and served.cpu_cores is not None
    # the measured per-pod request at the pods the history ran with, spread by the replica policy over
    # the recommended pods (the Deployment's total kept; each pod's request rounded up to a millicore)
    measured = answer.one_step_requests["cpu"] * decision.current
    assert served.cpu_cores * decision.recommended == pytest.approx(measured, abs=1e-3 * decision.recommended)
    assert platform.apply_margin(answer.one_step_requests["memory"], "memory") == served.memory_bytes
    # without a horizon the held request is the served one
    assert answer.requests == answer.one_step_requests
    assert answer.forecasts["cpu"] is not None and 0 < answer.forecasts["cpu"] < answer.requests["cpu"]
    # held for 12 steps (1 h at 5 min), the head-room can only grow
    held = ServiceModelTrainer(
        {"epochs": 1, "lstm": {"units": [4], "dense_units": 0}}, horizon_steps=12, head_room="validation"
    )(fleet, "svc-00").predict(fleet, pd.Timedelta(hours=1))
    for resource in ("cpu", "memory"):
        assert held.requests[resource] >= answer.one_step_requests[resource] - 1e-9


def test_recent_head_room_is_what_the_model_chooses_on_the_recent_rows() -> None:
    """``head_room="recent"``: the adapter answers with ``ServiceModel.recent_requests`` on the rows
    before the origin."""
    from mora_platform.backtest.platform_training import ServiceModelTrainer
    from mora_platform.data.synthetic import generate_fleet
    from mora_platform.models.recent import RECENT_CANDIDATES, RECENT_RULES

    fleet = generate_fleet(n_services=1, days=3, step_seconds=300, seed=4)
    adapter = ServiceModelTrainer(
        {"epochs": 1, "lstm": {"units": [4], "dense_units": 0}}, horizon_steps=12, head_room="recent"
    )(fleet, "svc-00")
    answer = adapter.predict(fleet, pd.Timedelta(hours=1))
    assert ServiceModelTrainer().head_room == "auto"  # the default
    assert adapter.fitted_until == pd.Timestamp(fleet["timestamp"].max())
    choices = adapter.model.recent_requests(
        fleet, 12, rows=adapter.recent_rows, fitted_until=adapter.fitted_until, candidates=RECENT_CANDIDATES
    )
    for resource in ("cpu", "memory"):
        choice = choices[resource]
        assert choice is not None and choice.origins >= 40
        assert answer.requests[resource] == pytest.approx(choice.request)
        # every row was a training row: only what needs no fit can be judged on them
        assert choice.candidate in RECENT_RULES
    # the training-time head-room rides along, for the platform-validation variant
    assert ServiceModelTrainer().config_dict["coverage"] == 0.99  # each held step, as the peers' defaults sit
    assert answer.validation_requests is not None and set(answer.validation_requests) == {"cpu", "memory"}
    variant = PlatformValidationRecommender(trainer=lambda frame, service: adapter)
    suggestion = variant.suggest(fleet.set_index("timestamp")["cpu_cores_value"], "cpu", frame=fleet)
    assert suggestion.base == pytest.approx(answer.validation_requests["cpu"])
    assert variant.floor("cpu") == 0.001


def test_auto_head_room_answers_with_the_cheaper_calibration_that_keeps_its_promise() -> None:
    """``auto``: the recent head-room answers unless the training-time one, judged on as many
    unseen windows, kept its promise at no higher cost; with too little history, validation answers."""
    from mora_platform.backtest.platform_training import ServiceModelTrainer
    from mora_platform.data.synthetic import generate_fleet
    from mora_platform.models.recent import KEPT_TOLERANCE, MIN_KEPT_WINDOWS, RECENT_CANDIDATES, RECENT_RULES

    fleet = generate_fleet(n_services=1, days=3, step_seconds=300, seed=5)
    past, later = fleet.iloc[:600], fleet
    trainer = ServiceModelTrainer(
        {"epochs": 1, "lstm": {"units": [4], "dense_units": 0}}, horizon_steps=12, head_room="auto"
    )
    adapter = trainer(past, "svc-00")
    kept = adapter.model.validation_kept(
        later, 12, rows=adapter.recent_rows, fitted_until=adapter.fitted_until
    )
    recent = adapter.model.recent_requests(
        later, 12, rows=adapter.recent_rows, fitted_until=adapter.fitted_until, candidates=RECENT_CANDIDATES
    )
    answer = adapter.predict(later, pd.Timedelta(hours=1))
    target = adapter.model.calibration.coverage - KEPT_TOLERANCE
    for resource in ("cpu", "memory"):
        check = kept[resource]
        assert check.windows == len(later) - 600 - 11  # every complete holding window after the fit
        assert 0 <= check.share <= 1 and check.relative_cost > 0
        choice = recent[resource]
        # validation only where it was judged on as many windows, kept its promise and cost no more
        use_recent = choice is not None and not (
            check.windows >= max(MIN_KEPT_WINDOWS, choice.origins // 2)
            and check.share >= target
            and check.relative_cost <= choice.relative_cost
        )
        expected = (
            choice.request if use_recent and choice is not None else answer.validation_requests[resource]
        )  # type: ignore[index]
        assert answer.requests[resource] == pytest.approx(expected)
    # rows the model was trained on are no evidence for it: nothing unseen, so only the rules that
    # need no fit can answer, and they do
    none_unseen = adapter.model.validation_kept(
        past, 12, rows=adapter.recent_rows, fitted_until=adapter.fitted_until
    )
    assert all(check.windows == 0 for check in none_unseen.values())
    at_fit = adapter.model.recent_requests(
        past, 12, rows=adapter.recent_rows, fitted_until=adapter.fitted_until, candidates=RECENT_CANDIDATES
    )
    answer = adapter.predict(past, pd.Timedelta(hours=1))
    for resource in ("cpu", "memory"):
        choice = at_fit[resource]
        assert choice is not None and choice.candidate in RECENT_RULES
        assert answer.requests[resource] == pytest.approx(choice.request)
        assert answer.sources is not None and answer.sources[resource] == choice.candidate
    # too short a history for any recent rule: the training-time head-room answers
    short = fleet.iloc[:45]  # 34 holding windows of 12 steps: fewer than any rule needs
    assert (
        adapter.predict(short, pd.Timedelta(hours=1)).requests
        == adapter.predict(short, pd.Timedelta(hours=1)).validation_requests
    )


def test_served_recommendation_uses_the_auto_head_room_when_history_allows() -> None:
    """``ServiceModel.recommend(history)`` serves what the backtest measured: ``held_requests``
    (auto head-room) for CPU and memory when the history is long enough, with a reason naming the
    source; the training-time head-room for a short history or ``head_room="validation"``."""
    import math

    from mora_platform.backtest.platform_training import ServiceModelTrainer
    from mora_platform.data.synthetic import generate_fleet
    from mora_platform.models.recent import VALIDATION

    fleet = generate_fleet(n_services=1, days=3, step_seconds=300, seed=8)
    model = ServiceModelTrainer({"epochs": 1, "lstm": {"units": [4], "dense_units": 0}}, horizon_steps=12)(
        fleet.iloc[:600], "svc-00"
    ).model
    assert model.fitted_until == pd.Timestamp(fleet["timestamp"].iloc[599])
    later = fleet.iloc[:800]
    held = model.held_requests(later)
    served = model.recommend(history=later)
    plain = model.recommend(history=later, head_room="validation")
    assert {h.source for h in held.values()} - {VALIDATION}, "the recent head-room should answer here"
    for target, attr, unit in (("cpu", "cpu_millicores", 1e-3), ("memory", "memory_mib", 2**20)):
        recent_reason = [r for r in served.reasons if r.startswith(f"{target} head-room calibrated")]
        if held[target].source == VALIDATION:
            assert getattr(served.recommendations, attr) == getattr(plain.recommendations, attr)
            assert not recent_reason
        else:
            floor = 10 if target == "cpu" else 32
            decision = served.replica_decision
            assert decision is not None and decision.current and decision.recommended
            # CPU per pod is spread by the replica policy (the Deployment's total kept); memory is not
            spread = decision.current / decision.recommended if target == "cpu" else 1.0
            expected = max(math.ceil(round(held[target].request * spread / unit, 6)), floor)
            assert getattr(served.recommendations, attr) == expected
            assert recent_reason and held[target].source in recent_reason[0]
    # a short history: nothing to calibrate on, the training-time head-room answers
    short = model.recommend(history=later.tail(30))
    assert (
        short.recommendations
        == model.recommend(history=later.tail(30), head_room="validation").recommendations
    )
    with pytest.raises(ValueError, match="head_room"):
        model.recommend(head_room="sometimes")
