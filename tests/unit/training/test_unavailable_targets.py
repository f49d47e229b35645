"""A service trains and answers on whatever targets its data has (issue 12).

CPU only, memory only, no replica metric (a Prometheus without kube-state-metrics): the missing
targets are recorded with a reason (``config.json``'s ``unavailable_targets``, surfaced as
``ServiceModel.unavailable_targets``), left out of the metrics and calibration, and answered NaN
with the source ``unavailable``; the available ones train and answer as usual.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import SERVICE
from mora_platform.models.calibration import FUSED
from mora_platform.recommend.answering import UNAVAILABLE, answer_request
from mora_platform.recommend.types import TARGETS
from mora_platform.training.bundle import ServiceModel
from mora_platform.training.config import TrainingConfig
from mora_platform.training.service_trainer import fit_service, train_service

CONFIG = TrainingConfig(members=["prophet"], level_member=True, fusion="auto")
COLUMNS = {"cpu": "cpu_cores_value", "memory": "mem_bytes_value", "replicas": "replica_count_value"}


def _frame(missing: tuple[str, ...], drop: bool = False) -> pd.DataFrame:
    frame = synthetic_service_frame(days=1.0, step_seconds=300, seed=7)
    for target in missing:
        if drop:
            frame = frame.drop(columns=[COLUMNS[target]])
        else:
            frame[COLUMNS[target]] = np.nan
    return frame


@pytest.mark.parametrize(
    "missing",
    [("memory", "replicas"), ("cpu",), ("replicas",), ("cpu", "replicas")],
    ids=["cpu-only", "memory-only", "no-replica-metric", "memory-no-replicas"],
)
def test_trains_loads_and_answers_on_the_targets_it_has(missing: tuple[str, ...], tmp_path: Path) -> None:
    frame = _frame(missing)
    service = str(frame[SERVICE].iloc[0])
    report = train_service(frame, service, CONFIG, tmp_path)
    for target in TARGETS:
        metrics = report.metrics[target]
        if target in missing:
            assert metrics.n == 0 and metrics.mae is None and metrics.coverage is None
            assert any(f.startswith(f"target {target!r} unavailable") for f in report.fallbacks)
        else:
            assert metrics.n > 0 and metrics.mae is not None
    stored = json.loads((tmp_path / "config.json").read_text())["unavailable_targets"]
    assert set(stored) == set(missing)
    assert all(COLUMNS[t] in stored[t] for t in missing)
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    assert all(calibration["modes"][FUSED][t]["source"] == UNAVAILABLE for t in missing)

    model = ServiceModel.load(tmp_path)
    assert model.unavailable_targets == stored
    for answer in (
        answer_request(model),
        answer_request(model, frame),
        answer_request(model, frame.head(40)),
    ):
        for target in TARGETS:
            if target in missing:
                assert answer.sources[target] == UNAVAILABLE
                assert math.isnan(answer.requests[target]) and math.isnan(answer.points[target])
                assert math.isnan(answer.validation_requests[target])
                assert math.isnan(answer.one_step_requests[target])
            else:
                assert answer.sources[target] != UNAVAILABLE
                assert np.isfinite(answer.requests[target]) and answer.requests[target] >= 0


def test_in_memory_model_equals_the_loaded_one() -> None:
    frame = _frame(("memory", "replicas"))
    fitted = fit_service(frame, str(frame[SERVICE].iloc[0]), CONFIG)
    assert set(fitted.unavailable_targets) == {"memory", "replicas"}
    assert fitted.service_model().unavailable_targets == fitted.unavailable_targets
    assert fitted.report.confidence > 0  # the placeholders of the missing targets do not drag it down


def test_a_metric_not_collected_at_all_is_unavailable(tmp_path: Path) -> None:
    frame = _frame(("replicas",), drop=True)
    train_service(frame, str(frame[SERVICE].iloc[0]), CONFIG, tmp_path)
    model = ServiceModel.load(tmp_path)
    assert "missing" in model.unavailable_targets["replicas"]
    answer = answer_request(model, frame)  # the caller's history lacks the column too
    assert answer.sources["replicas"] == UNAVAILABLE and np.isfinite(answer.requests["cpu"])


def test_bundles_without_the_record_have_every_target(tmp_path: Path) -> None:
    frame = _frame(())
    train_service(frame, str(frame[SERVICE].iloc[0]), CONFIG, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["unavailable_targets"] == {}
    meta.pop("unavailable_targets")
    meta.pop("member_weights")
    (tmp_path / "config.json").write_text(json.dumps(meta))  # as an older bundle wrote it
    model = ServiceModel.load(tmp_path)
    assert model.unavailable_targets == {}
    answer = answer_request(model)
    assert all(np.isfinite(answer.requests[t]) and answer.sources[t] != UNAVAILABLE for t in TARGETS)
