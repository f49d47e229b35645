"""Search space, trial-to-config mapping, epoch rungs and the fused validation score (no Ray cluster)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from jobs.tune_fleet import bounds_from_args, build_parser
from mora_platform.models.config import LSTMConfig
from mora_platform.models.ensemble import default_weights
from mora_platform.recommend.types import TARGETS
from mora_platform.training.config import TrainingConfig
from tune.search_space import SearchBounds, param_space, trial_to_config
from tune.trial import epoch_rungs, fused_nmae

TRIAL = {
    "lstm_layers": 2,
    "lstm_units_1": 32,
    "lstm_units_2": 64,
    "dropout": 0.123456,
    "learning_rate": 0.003,
    "seq_len": 24,
    "batch_size": 16,
    "fusion_weight": 0.25,
}


def test_trial_to_config_builds_a_valid_lstm_config_over_the_base() -> None:
    config = trial_to_config(TRIAL, {"seed": 3, "lstm": {"epochs": 7, "patience": 2}})
    assert config["seed"] == 3 and config["seq_len"] == 24
    assert config["lstm"]["units"] == [32, 32]  # layers never grow with depth
    assert config["lstm"]["epochs"] == 7 and config["lstm"]["patience"] == 2
    assert config["lstm"]["dropout"] == 0.1235 and config["lstm"]["batch_size"] == 16
    assert config["fusion_weights"] == {"cpu": 0.25, "memory": 0.25, "replicas": 0.25}
    LSTMConfig.model_validate(config["lstm"])
    assert trial_to_config(TRIAL, epochs=2)["lstm"]["epochs"] == 2
    assert trial_to_config({**TRIAL, "lstm_layers": 1})["lstm"]["units"] == [32]


def test_param_space_covers_every_searched_field_and_samples_within_bounds() -> None:
    bounds = SearchBounds()
    space = param_space(bounds)
    assert set(space) == {
        "lstm_layers",
        "lstm_units_1",
        "lstm_units_2",
        "dropout",
        "learning_rate",
        "seq_len",
        "batch_size",
        "fusion_weight",
    }
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = {name: domain.sample(random_state=rng) for name, domain in space.items()}
        assert bounds.dropout[0] <= sample["dropout"] <= bounds.dropout[1]
        assert bounds.learning_rate[0] <= sample["learning_rate"] <= bounds.learning_rate[1]
        assert sample["seq_len"] in bounds.seq_len
        LSTMConfig.model_validate(trial_to_config(sample)["lstm"])


def test_tiny_bounds_and_validation() -> None:
    tiny = SearchBounds.tiny()
    assert max(tiny.units) <= 8 and tiny.max_epochs == 2 and tiny.layers == [1]
    assert "lstm_units_2" not in param_space(tiny)
    with pytest.raises(ValidationError, match="dropout"):
        SearchBounds(dropout=(0.2, 1.5))
    with pytest.raises(ValidationError, match="units"):
        SearchBounds(units=[])
    with pytest.raises(ValidationError, match="low"):
        SearchBounds(fusion_weight=(0.8, 0.2))


def test_fleet_job_bounds_from_arguments() -> None:
    args = build_parser().parse_args(
        ["--dataset", "d", "--tiny", "--max-epochs", "3", "--bounds-json", '{"units": [2]}']
    )
    bounds = bounds_from_args(args)
    assert bounds.units == [2] and bounds.max_epochs == 3 and bounds.seq_len == SearchBounds.tiny().seq_len


@pytest.mark.parametrize(
    ("max_epochs", "rungs"), [(1, [1]), (2, [1, 2]), (5, [1, 2, 4, 5]), (8, [1, 2, 4, 8])]
)
def test_epoch_rungs(max_epochs: int, rungs: list[int]) -> None:
    assert epoch_rungs(max_epochs) == rungs


def test_fused_nmae_weights_members_and_falls_back_to_prophet() -> None:
    actual = np.array([[1.0, 100.0, 2.0], [1.0, 100.0, 2.0]])
    prophet = actual * 1.2
    lstm = actual * 0.8
    half = default_weights(dict.fromkeys(TARGETS, 0.5))
    only_prophet = default_weights(dict.fromkeys(TARGETS, 1.0))
    assert fused_nmae(actual, {"prophet": prophet, "lstm": lstm}, half) == pytest.approx(0.0)
    assert fused_nmae(actual, {"prophet": prophet, "lstm": lstm}, only_prophet) == pytest.approx(0.2)
    no_lstm = {"prophet": prophet, "lstm": np.full_like(lstm, np.nan)}
    assert fused_nmae(actual, no_lstm, default_weights(dict.fromkeys(TARGETS, 0.0))) == pytest.approx(0.2)
    # any registered members, each with its weight
    three = {"prophet": prophet, "lstm": lstm, "naive": actual * 1.5}
    weights = {**half, "naive": dict.fromkeys(TARGETS, 1.0)}  # (1.2 + 0.8 + 2 * 1.5) / 4 = 1.25
    assert fused_nmae(actual, three, weights) == pytest.approx(0.25)
    # scale-free: memory in bytes weighs as much as CPU cores
    skewed = actual.copy()
    skewed[:, 1] *= 1e9
    assert fused_nmae(skewed, {"prophet": skewed * 1.2, "lstm": skewed * 0.8}, only_prophet) == pytest.approx(
        0.2
    )
    assert math.isinf(fused_nmae(actual[:0], {"prophet": prophet[:0], "lstm": lstm[:0]}, half))


def test_other_members_weights_are_searched_and_written() -> None:
    bounds = SearchBounds.tiny().model_copy(update={"member_weights": {"naive": (0.0, 0.5)}})
    SearchBounds.model_validate(bounds.model_dump())
    assert "weight_naive" in param_space(bounds)
    config = trial_to_config({**TRIAL, "weight_naive": 0.33333}, {"level_member": True})
    assert config["member_weights"] == {"naive": dict.fromkeys(TARGETS, 0.3333)}
    assert TrainingConfig.model_validate(config).weights()["naive"]["cpu"] == pytest.approx(0.3333)
    with pytest.raises(ValidationError, match="member_weights"):
        SearchBounds(member_weights={"nope": (0.0, 1.0)})
    with pytest.raises(ValidationError, match="fusion_weight"):
        SearchBounds(member_weights={"prophet": (0.0, 1.0)})
