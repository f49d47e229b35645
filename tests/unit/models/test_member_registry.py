"""The member registry: a new forecaster is one class plus one ``register_member`` call.

A toy moving-average member, defined here and registered by the test alone, is validated by the
config, trained by ``train_service``, saved into the bundle, loaded by ``ServiceModel.load`` and
answers through ``answer_request``: the same code path as Prophet and the LSTM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import EXPERIMENT_ID, SERVICE
from mora_platform.features.targets import TARGET_COLUMNS
from mora_platform.models.base import Forecaster, ModelLoadError, read_json, write_json
from mora_platform.models.ensemble import default_weights
from mora_platform.models.members import (
    member_file_patterns,
    member_types,
    register_member,
    registered_members,
    resolve_weights,
    unregister_member,
)
from mora_platform.recommend.answering import answer_request
from mora_platform.recommend.types import TARGETS
from mora_platform.training.bundle import ServiceModel
from mora_platform.training.config import TrainingConfig
from mora_platform.training.service_trainer import fit_service, train_service

TOY = "toy_mean"
TOY_FILE = "toy_mean.json"


class MovingAverageForecaster(Forecaster):
    """The mean of the last ``window`` values of each target, in the same experiment."""

    name = TOY

    def __init__(self, window: int = 3) -> None:
        super().__init__()
        self.window = int(window)

    def _fit(self, frame: pd.DataFrame) -> None:
        return None

    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        columns = [TARGET_COLUMNS[t] for t in TARGETS]
        means = frame.groupby(EXPERIMENT_ID, sort=False)[columns].transform(
            lambda s: s.rolling(self.window, min_periods=1).mean().shift(1)
        )
        means.columns = list(TARGETS)
        return means

    def _forecast_next(self, history: pd.DataFrame, context: dict[str, float | str]) -> dict[str, float]:
        tail = history.tail(self.window)
        return {t: float(tail[TARGET_COLUMNS[t]].mean()) for t in TARGETS}

    def _save(self, directory: Path) -> list[str]:
        return [write_json(directory / TOY_FILE, {"kind": TOY, "window": self.window})]

    @classmethod
    def _load(cls, directory: Path) -> Self:
        data = read_json(directory / TOY_FILE)
        try:
            return cls(int(data["window"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{TOY_FILE}: malformed ({exc})") from exc


@pytest.fixture
def toy() -> Iterator[None]:
    register_member(
        TOY,
        MovingAverageForecaster,
        build=lambda config: MovingAverageForecaster(window=config.seq_len),
        files=(TOY_FILE,),
        default_weight=0.5,
    )
    yield
    unregister_member(TOY)


def test_builtin_members_are_registered() -> None:
    members = registered_members()
    assert {"prophet", "lstm", "naive", "percentile"} <= set(members)
    assert [n for n, s in members.items() if s.default] == ["prophet", "lstm"]
    assert TrainingConfig().members == ["prophet", "lstm"]
    assert {"prophet_*.json", "lstm.keras", "scaler.json", "naive.json"} <= set(member_file_patterns())


def test_config_validates_member_names_against_the_registry(toy: None) -> None:
    assert TrainingConfig(members=[TOY]).members == [TOY]
    with pytest.raises(ValidationError, match="unknown member"):
        TrainingConfig(members=["nope"])
    with pytest.raises(ValidationError, match="unknown member"):
        TrainingConfig(member_weights={"nope": {"cpu": 1.0}})
    unregister_member(TOY)
    with pytest.raises(ValidationError, match="unknown member"):
        TrainingConfig(members=[TOY])


def test_legacy_fusion_weights_keep_their_meaning(toy: None) -> None:
    """``fusion_weights`` is still Prophet's weight per target, the LSTM getting ``1 - w``."""
    config = TrainingConfig(fusion_weights={"cpu": 0.7})
    weights = config.weights()
    assert weights["prophet"] == {"cpu": 0.7, "memory": 0.4, "replicas": 0.4}
    assert weights["lstm"] == pytest.approx({"cpu": 0.3, "memory": 0.6, "replicas": 0.6})
    assert weights == default_weights({"cpu": 0.7, "memory": 0.4, "replicas": 0.4})
    # a new member gets its registered default, or the configured override
    config = TrainingConfig(members=["prophet", TOY], member_weights={TOY: {"memory": 2.0}})
    assert config.weights()[TOY] == {"cpu": 0.5, "memory": 2.0, "replicas": 0.5}
    assert resolve_weights(["naive"]) == {"naive": dict.fromkeys(TARGETS, 0.0)}


def test_toy_member_trains_saves_loads_and_answers(toy: None, tmp_path: Path) -> None:
    frame = synthetic_service_frame(days=1.0, step_seconds=300, seed=5)
    service = str(frame[SERVICE].iloc[0])
    config = TrainingConfig.model_validate(
        {"seq_len": 4, "members": [TOY], "level_member": True, "fusion": "auto"}
    )
    assert member_types()[TOY] is MovingAverageForecaster
    fitted = fit_service(frame, service, config)
    report = train_service(frame, service, config, tmp_path)
    assert report.members[TOY] == "ok" and report.members["naive"] == "ok"
    assert report.members["prophet"] == report.members["lstm"] == "missing"  # default members left out
    assert TOY_FILE in report.files and (tmp_path / TOY_FILE).is_file()
    assert not (tmp_path / "lstm.keras").exists()
    stored = json.loads((tmp_path / "config.json").read_text())
    assert set(stored["member_weights"]) == {"prophet", "lstm", TOY, "naive"}
    assert report.metrics["cpu"].mae_members[TOY] >= 0

    model = ServiceModel.load(tmp_path)
    assert isinstance(model.ensemble.members[TOY], MovingAverageForecaster)
    assert model.ensemble.members[TOY].window == 4
    assert model.ensemble.weights == fitted.ensemble.weights
    answer = answer_request(model)
    expected = answer_request(fitted.service_model())
    assert TOY in answer.forecast.members
    assert all(np.isfinite(answer.forecast.members[TOY][t]) for t in TARGETS)
    assert answer.requests == pytest.approx(expected.requests)
    assert all(np.isfinite(answer.requests[t]) and answer.requests[t] >= 0 for t in TARGETS)
    with_history = answer_request(model, frame)
    assert all(np.isfinite(with_history.requests[t]) for t in TARGETS)


def test_a_bundle_naming_an_unregistered_member_is_refused(toy: None, tmp_path: Path) -> None:
    frame = synthetic_service_frame(days=0.5, step_seconds=300, seed=6)
    config = TrainingConfig.model_validate({"seq_len": 4, "members": [TOY]})
    train_service(frame, str(frame[SERVICE].iloc[0]), config, tmp_path)
    unregister_member(TOY)
    with pytest.raises((ModelLoadError, ValueError), match=TOY):
        ServiceModel.load(tmp_path)


def test_tune_fits_the_registered_members_once_and_fuses_the_tuned_one(toy: None) -> None:
    """Tune's reference holds every configured member but the tuned LSTM (here the toy member and
    the level member), and a trial's score fuses them all with the configured weights."""
    from tune.trial import TUNED_MEMBER, prepare_reference, score_predictions

    frame = synthetic_service_frame(days=1.0, step_seconds=300, seed=8)
    base = {"seq_len": 4, "members": [TOY, TUNED_MEMBER], "level_member": True}
    reference = prepare_reference(frame, str(frame[SERVICE].iloc[0]), base)
    assert set(reference.members) == {TOY, "naive"}
    weights = TrainingConfig.model_validate(base).weights()

    def perfect(prepared: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({t: prepared[TARGET_COLUMNS[t]] for t in TARGETS})

    only_tuned = {n: dict.fromkeys(TARGETS, 1.0 if n == TUNED_MEMBER else 0.0) for n in weights}
    assert score_predictions(reference, perfect, only_tuned) == pytest.approx(0.0)
    assert score_predictions(reference, perfect, weights) > 0  # the toy member's error counts
