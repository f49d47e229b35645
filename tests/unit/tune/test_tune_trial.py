"""One Tune trial fits the LSTM once and reports every epoch rung from that fit (no Ray cluster)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from mora_platform.data.synthetic import generate_fleet
from mora_platform.models import lstm as lstm_module
from tune.search_space import METRIC
from tune.trial import RungReporter, epoch_rungs, prepare_reference, run_trial, score_lstm

BASE: dict[str, Any] = {"seed": 0, "lstm": {"units": [4], "dense_units": 0, "batch_size": 64}}


@pytest.fixture(scope="module")
def reference():  # type: ignore[no-untyped-def]
    fleet = generate_fleet(n_services=1, days=2, step_seconds=600, seed=21)
    return prepare_reference(fleet, "svc-00", BASE)


def test_one_fit_reports_each_rung_with_the_network_of_that_moment(
    reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mora_platform.training.config import TrainingConfig

    fits: list[int] = []
    original = lstm_module.LSTMForecaster._fit

    def counting_fit(self: Any, frame: Any) -> None:
        fits.append(len(frame))
        original(self, frame)

    monkeypatch.setattr(lstm_module.LSTMForecaster, "_fit", counting_fit)
    reports: list[dict[str, Any]] = []
    reporter = RungReporter(reference, 0.5, epoch_rungs(4), reports.append)
    config = TrainingConfig.model_validate({**BASE, "lstm": {**BASE["lstm"], "epochs": 4, "patience": 50}})
    final = score_lstm(reference, config, 0.5, 1, reporter)
    assert len(fits) == 1  # one fit for all rungs
    assert [r["epochs"] for r in reports] == [1, 2, 4] == reporter.reported
    scores = [r[METRIC] for r in reports]
    assert all(math.isfinite(s) and s > 0 for s in scores) and math.isfinite(final)
    assert scores[0] != scores[-1]  # each rung scored the weights of its own epoch


def test_run_trial_fills_rungs_early_stopping_skipped(
    reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With patience 1 the fit stops long before 64 epochs; every rung is still reported, the ones
    after the stop with the final network's score, so ASHA compares trials at every rung."""
    import ray.tune

    reports: list[dict[str, Any]] = []
    trained: list[int] = []
    original = lstm_module.LSTMForecaster._fit

    def recording_fit(self: Any, frame: Any) -> None:
        original(self, frame)
        trained.append(self.training["epochs"][0])

    monkeypatch.setattr(lstm_module.LSTMForecaster, "_fit", recording_fit)
    monkeypatch.setattr(ray.tune, "report", reports.append)
    config = {
        "lstm_layers": 1,
        "lstm_units_1": 4,
        "dropout": 0.0,
        "learning_rate": 0.05,
        "seq_len": 12,
        "batch_size": 64,
        "fusion_weight": 0.5,
    }
    base = {**BASE, "lstm": {**BASE["lstm"], "patience": 1, "lr_patience": 1}}
    run_trial(config, reference=reference, base_config=base, max_epochs=64)
    assert len(trained) == 1 and trained[0] < 32, trained  # one fit, stopped early
    assert [r["epochs"] for r in reports] == epoch_rungs(64) == [1, 2, 4, 8, 16, 32, 64]
    after_stop = [r[METRIC] for r in reports if r["epochs"] > trained[0]]
    assert after_stop and len(set(after_stop)) == 1  # the final network's score for every rung left
