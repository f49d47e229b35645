"""The peak-quantile candidate beside a trained bundle: written, loaded, offered, and never stale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import TIMESTAMP
from mora_platform.models.peak import PEAK_FILE
from mora_platform.models.peak_lstm import head_file
from mora_platform.models.recent import PEAK_QUANTILE, RECENT_PEAK
from mora_platform.training.bundle import PEAK_VALIDATION, ServiceModel
from mora_platform.training.config import TrainingConfig
from mora_platform.training.peak_candidate import attach_peak_candidate
from mora_platform.training.service_trainer import train_service

SERVICE = "svc-synthetic"
TINY = {
    "seq_len": 6,
    "lstm": {"units": [4], "dense_units": 0, "epochs": 1, "patience": 1, "batch_size": 64},
    "calibration_horizon_steps": 12,
    "coverage": 0.99,  # the spike is 2% of the steps: the recent peak must carry it all day
    "peak": {"lstm": True, "lstm_epochs": 5},  # the sequence head too (off by default)
}


def spiked(days: float = 8.0) -> pd.DataFrame:
    """CPU flat with noise but for a spike from 14:00 to 14:30 every day (one pod)."""
    frame = synthetic_service_frame(days=days, step_seconds=300, seed=5, noise=0.0)
    rng = np.random.default_rng(5)
    stamps = pd.to_datetime(frame[TIMESTAMP], utc=True)
    minutes = (stamps.dt.hour * 60 + stamps.dt.minute).to_numpy()
    spike = (minutes >= 14 * 60) & (minutes < 14 * 60 + 30)
    cpu = 1.0 + 0.05 * rng.standard_normal(len(frame)) + 3.0 * spike
    return frame.assign(cpu_cores_value=cpu, replica_count_value=1.0, replica_count=1)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return spiked()


@pytest.fixture(scope="module")
def bundle(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("peak-bundle")
    past = frame.iloc[: 5 * 288]  # five days; the last three are the recent history after the fit
    config = TrainingConfig.model_validate(TINY)
    train_service(past, SERVICE, config, directory)
    assert attach_peak_candidate(past, SERVICE, config, directory) == PEAK_FILE
    return directory


def test_the_bundle_loads_the_candidate_fitted_on_its_own_data(bundle: Path) -> None:
    model = ServiceModel.load(bundle)
    assert model.peak is not None and set(model.peak.targets) == {"cpu", "memory"}
    assert model.peak.windows.horizon == 12 and model.peak.coverage == 0.99
    for target, fitted in model.peak.targets.items():  # three and a half days of training rows
        assert fitted.fusion is not None and "pinball" in fitted.fusion  # the sequence head was weighed
        assert (bundle / head_file(target)).is_file() == (fitted.lstm_weight > 0)
        assert (fitted.head is not None) == (fitted.lstm_weight > 0)  # loaded with its weight only
        metrics = json.loads((bundle / "metrics.json").read_text())
        assert metrics["peak_head_weights"][target] == fitted.lstm_weight  # and metrics.json says it
    assert model.peak.data_end == model.fitted_until
    assert TrainingConfig().peak.enabled  # fitted by default


def test_a_file_from_another_training_is_ignored(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    data = json.loads((copy / PEAK_FILE).read_text())
    data["data_end"] = "2020-01-01T00:00:00+00:00"
    (copy / PEAK_FILE).write_text(json.dumps(data))
    assert ServiceModel.load(copy).peak is None
    (copy / PEAK_FILE).write_text("{not json")
    with pytest.raises(Exception, match=PEAK_FILE):
        ServiceModel.load(copy)


def test_attaching_again_keeps_the_file_written_for_the_same_rows(
    bundle: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    before = (copy / PEAK_FILE).stat().st_mtime_ns
    config = TrainingConfig.model_validate(TINY)
    assert attach_peak_candidate(frame.iloc[: 5 * 288], SERVICE, config, copy) == PEAK_FILE
    assert (copy / PEAK_FILE).stat().st_mtime_ns == before


def test_disabled_writes_no_file_and_removes_an_old_one(
    bundle: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    config = TrainingConfig.model_validate({**TINY, "peak": {"enabled": False}})
    assert attach_peak_candidate(frame.iloc[: 5 * 288], SERVICE, config, copy) is None
    assert not (copy / PEAK_FILE).exists() and ServiceModel.load(copy).peak is None


def test_the_recent_choice_offers_it_and_picks_it_where_it_wastes_less(
    bundle: Path, frame: pd.DataFrame
) -> None:
    model = ServiceModel.load(bundle)
    choices = model.recent_requests(frame, 12, candidates=(RECENT_PEAK, PEAK_QUANTILE))
    cpu = choices["cpu"]
    assert cpu is not None and cpu.candidate == PEAK_QUANTILE and cpu.origins >= 720
    alone = model.recent_requests(frame, 12, candidates=(RECENT_PEAK,))["cpu"]
    assert alone is not None and cpu.relative_cost < alone.relative_cost
    # the training-time head-room of the candidate is judged like the fused forecast's
    kept = model.peak_validation_kept(frame, 12)
    check, request = kept["cpu"]
    assert check.windows > 700 and request.source == PEAK_VALIDATION and request.request > request.point
    # what auto serves is one of the sources that kept the promise at the least cost
    held = model.held_requests(frame, 12)
    assert held["cpu"].source in {PEAK_QUANTILE, PEAK_VALIDATION, "fused", "validation"}
    # the served recommendation is that request, and its reasons say which source set it
    recommendation = model.recommend(frame)
    if held["cpu"].source in (PEAK_QUANTILE, PEAK_VALIDATION):
        assert any("peak-quantile" in reason for reason in recommendation.reasons)
        # and how its forecast was made: the regression, and the sequence head by its weight
        told = [r for r in recommendation.reasons if r.startswith("cpu peak-quantile forecast: ")]
        assert told == [f"cpu peak-quantile forecast: {model.peak.describe_fusion('cpu')}"]
        assert model.peak is not None and "quantile regression" in told[0]
    # on the rows it trained on the candidate is no evidence for itself: not offered there
    trained_only = model.recent_requests(frame.iloc[: 5 * 288], 12, candidates=(RECENT_PEAK, PEAK_QUANTILE))
    assert all(c is None or c.candidate == RECENT_PEAK for c in trained_only.values())


def test_an_answer_prepares_each_history_once_and_a_changed_one_again(
    bundle: Path, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The members' window, the recent candidates, the peak-quantile forecast and the reasons all
    read the same rows: they are prepared once per content; one changed cell is prepared anew, and
    the answers are those of a model that prepares every time."""
    import mora_platform.training.bundle as bundle_module

    calls: list[int] = []
    real = bundle_module.prepare_frame

    def counting(rows: pd.DataFrame) -> pd.DataFrame:
        calls.append(len(rows))
        return real(rows)

    monkeypatch.setattr(bundle_module, "prepare_frame", counting)
    history = frame.iloc[5 * 288 : 5 * 288 + 600]
    model = ServiceModel.load(bundle)
    first = model.recommend(history, {"load_users": 60, "replica_count": 1})
    once = len(calls)
    assert once <= 3  # the distinct tails asked for (the whole history, its last rows), not every use
    assert model.recommend(history, {"load_users": 60, "replica_count": 1}) == first
    assert len(calls) == once  # the same rows again: nothing prepared
    changed = history.copy()
    changed.iloc[-1, changed.columns.get_loc("cpu_cores_value")] = 9.0
    model.recommend(changed, {"load_users": 60, "replica_count": 1})
    assert len(calls) > once
    monkeypatch.setattr(bundle_module, "PREPARED_CACHE_SIZE", 0)
    fresh = ServiceModel.load(bundle)
    assert fresh.recommend(history, {"load_users": 60, "replica_count": 1}) == first
