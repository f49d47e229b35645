"""train_service / fit_service / ServiceModel: bundle files, round trip, coverage, degraded and bad data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import EXPERIMENT_ID, SERVICE
from mora_platform.features.split import split_frame
from mora_platform.features.targets import prepare_frame
from mora_platform.models import ModelLoadError
from mora_platform.training.bundle import ServiceModel
from mora_platform.training.config import TrainingConfig
from mora_platform.training.report import ServiceDataError
from mora_platform.training.service_trainer import FittedService, fit_service, train_service

SERVICE_NAME = "svc-synthetic"
TINY = {"seq_len": 6, "lstm": {"units": [6], "dense_units": 4, "epochs": 2, "patience": 1, "batch_size": 64}}
BUNDLE_FILES = {
    "prophet_grid.json",
    "lstm.keras",
    "scaler.json",
    "calibration.json",
    "config.json",
    "metrics.json",
    "history_tail.json",
    "ensemble.json",
}


@pytest.fixture(scope="module")
def spiked_frame() -> pd.DataFrame:
    """Two experiments; CPU in each experiment's test rows is 10x anything seen in training."""
    frame = synthetic_service_frame(days=2.0, step_seconds=300, seed=11, experiments=2)
    labels = split_frame(prepare_frame(frame), 0.15, 0.15).to_numpy()
    frame = frame.sort_values([EXPERIMENT_ID, "timestamp"]).reset_index(drop=True)
    frame.loc[labels == "test", "cpu_cores_value"] *= 10
    return frame


@pytest.fixture(scope="module")
def fitted(spiked_frame: pd.DataFrame) -> FittedService:
    return fit_service(spiked_frame, SERVICE_NAME, TrainingConfig.model_validate(TINY))


@pytest.fixture(scope="module")
def bundle(fitted: FittedService, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bundle")
    fitted.save(directory)
    return directory


def test_bundle_files_and_report(fitted: FittedService, bundle: Path) -> None:
    names = {p.name for p in bundle.iterdir()}
    assert names >= BUNDLE_FILES
    assert {"prophet_cpu.json", "percentile_cpu.json"} & names
    assert set(fitted.report.files) == names
    report = fitted.report
    assert set(report.metrics) == {"cpu", "memory", "replicas"}
    assert all(m.n > 0 and m.mae is not None and 0 <= (m.coverage or 0) <= 1 for m in report.metrics.values())
    assert report.data_window.rows == 576 and report.data_window.experiments == 2
    assert report.members == {"prophet": "ok", "lstm": "ok"}
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["service"] == SERVICE_NAME


def test_scaler_saw_training_rows_only(bundle: Path, spiked_frame: pd.DataFrame) -> None:
    scaler = json.loads((bundle / "scaler.json").read_text())["features"]
    col = scaler["columns"].index("cpu_cores_value")
    fitted_max = scaler["minimum"][col] + scaler["span"][col]
    assert fitted_max < spiked_frame["cpu_cores_value"].max() / 3


def test_recommendation_round_trip(fitted: FittedService, bundle: Path, spiked_frame: pd.DataFrame) -> None:
    in_memory, loaded = fitted.service_model(), ServiceModel.load(bundle)
    for kwargs in (
        {},
        {"context": {"load_users": 80, "replica_count": 2}},
        {"history": spiked_frame.head(200)},
    ):
        a, b = in_memory.recommend(**kwargs), loaded.recommend(**kwargs)  # type: ignore[arg-type]
        assert a == b
    rec = loaded.recommend(model_version="v7")
    assert rec.model_version == "v7" and rec.service == SERVICE_NAME
    assert rec.recommendations.cpu_millicores >= 10 and rec.recommendations.replicas >= 1
    assert set(rec.contributions) == {"prophet", "lstm"}
    assert 0 <= rec.confidence <= 1 and not rec.degraded
    raised = loaded.recommend(context={"load_users": 500})
    assert raised.recommendations.cpu_cores != rec.recommendations.cpu_cores


def test_short_history_answers_degraded(bundle: Path, spiked_frame: pd.DataFrame) -> None:
    rec = ServiceModel.load(bundle).recommend(history=spiked_frame.head(3))
    assert rec.degraded
    assert any("prophet alone" in r for r in rec.reasons)
    assert rec.contributions["lstm"].cpu_cores is None


def test_bad_context_is_refused(bundle: Path) -> None:
    model = ServiceModel.load(bundle)
    with pytest.raises(ValueError, match="colour"):
        model.recommend(context={"colour": 3})
    with pytest.raises(ValueError, match="load_users"):
        model.recommend(context={"load_users": "many"})


@pytest.mark.parametrize(
    "victim", ["calibration.json", "prophet_grid.json", "scaler.json", "history_tail.json"]
)
def test_unparseable_file_is_refused_by_name(bundle: Path, tmp_path: Path, victim: str) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / victim).write_text("{not json")
    with pytest.raises(ModelLoadError, match=victim.replace(".", r"\.")):
        ServiceModel.load(copy)
    (copy / victim).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        ServiceModel.load(copy)


def test_coverage_on_daily_cycle_within_3_points() -> None:
    """10 days at 5 min with a daily cycle: the calibrated request covers held-back usage ~95%."""
    frame = synthetic_service_frame(days=10, step_seconds=300, seed=0)
    config = TrainingConfig.model_validate({"lstm": {"units": [8], "dense_units": 0, "epochs": 3}})
    report = fit_service(frame, SERVICE_NAME, config).report
    for target, metrics in report.metrics.items():
        assert metrics.n > 400
        assert metrics.coverage is not None
        assert abs(metrics.coverage - 0.95) <= 0.03, (target, metrics.coverage)


def test_missing_lstm_gives_degraded_ensemble(tmp_path: Path) -> None:
    frame = synthetic_service_frame(days=1.0, step_seconds=300, seed=4)
    (tmp_path / "lstm.keras").write_bytes(b"left over from an earlier run")
    report = train_service(frame, SERVICE_NAME, TrainingConfig(members=["prophet"]), tmp_path)
    assert report.degraded and report.members["lstm"] == "missing"
    assert "lstm.keras" not in report.files
    assert not (tmp_path / "lstm.keras").exists()
    rec = ServiceModel.load(tmp_path).recommend()
    assert rec.degraded and rec.contributions["lstm"].status == "missing"
    assert rec.contributions["prophet"].weight == 1.0


def test_too_short_history_records_fallbacks(tmp_path: Path) -> None:
    frame = synthetic_service_frame(days=20 * 300 / 86_400, step_seconds=300, seed=2)
    report = train_service(frame, SERVICE_NAME, TrainingConfig(), tmp_path)
    assert report.members["lstm"] == "failed"  # 20 rows < seq_len 30 + 1: no windows
    assert any("daily seasonality dropped" in f for f in report.fallbacks)
    assert any("training window" in f for f in report.fallbacks)
    assert ServiceModel.load(tmp_path).recommend().degraded


def _no_target_data() -> pd.DataFrame:
    """No target has a value (one missing target alone is trained without: see test_unavailable_targets)."""
    frame = synthetic_service_frame(days=0.5, seed=1)
    frame[["cpu_cores_value", "mem_bytes_value", "replica_count_value"]] = np.nan
    return frame


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_no_target_data, "no target has data.*cpu_cores_value.*all NaN"),
        (lambda: synthetic_service_frame(days=5 * 300 / 86_400, seed=1), "only 5 usable rows"),
        (lambda: synthetic_service_frame(days=0.5).assign(**{SERVICE: "other"}), "no rows"),
        (lambda: synthetic_service_frame(days=0.5).drop(columns=["load_users"]), "missing column"),
        (lambda: synthetic_service_frame(days=0.5).assign(mem_bytes_value=-1.0), "negative"),
        (lambda: synthetic_service_frame(days=0.5).assign(timestamp="never"), "timestamps"),
    ],
)
def test_bad_data_raises_service_data_error(make, message: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ServiceDataError, match=message) as info:
        train_service(make(), SERVICE_NAME, TrainingConfig(members=["prophet"]), tmp_path)
    assert SERVICE_NAME in str(info.value)


def test_constant_series_trains_on_recorded_fallbacks(tmp_path: Path) -> None:
    frame = synthetic_service_frame(days=0.5, seed=1)
    for column in ("cpu_cores_value", "mem_bytes_value", "replica_count_value"):
        frame[column] = 1.0
    report = train_service(frame, SERVICE_NAME, TrainingConfig(members=["prophet"]), tmp_path)
    assert sum("percentile fallback" in f for f in report.fallbacks) == 3
    rec = ServiceModel.load(tmp_path).recommend()
    # constant usage of 1.0 core: covered exactly (the x1.2 target factor is not paid on top)
    assert rec.recommendations.cpu_millicores == 1000
    assert rec.recommendations.replicas == 1


def test_horizon_calibration_is_recorded_and_served(spiked_frame: pd.DataFrame, tmp_path: Path) -> None:
    """``calibration_horizon_steps``: head-room against the 6-step peak, in calibration.json and the
    report's config (the manifest's); serving uses it, with the config's floors; a level member
    joins the fusion."""
    config = TrainingConfig.model_validate(
        {
            **TINY,
            "calibration_horizon_steps": 6,
            "level_member": True,
            "fusion": "auto",
            "cpu_floor_millicores": 1,
            "memory_floor_mib": 1,
        }
    )
    fitted = fit_service(spiked_frame, SERVICE_NAME, config)
    fitted.save(tmp_path)
    stored = json.loads((tmp_path / "calibration.json").read_text())
    assert stored["horizon_steps"] == 6 and "next_step" in stored
    calibration = fitted.calibration
    for t in ("cpu", "memory"):
        assert (
            calibration.for_mode("fused")[t].quantile
            >= calibration.for_mode("fused", next_step=True)[t].quantile
        )
    assert fitted.report.config["calibration_horizon_steps"] == 6
    assert fitted.report.members == {"prophet": "ok", "lstm": "ok", "naive": "ok"}
    model = ServiceModel.load(tmp_path)
    answer = model.ensemble.explain_next(model.history, {})
    rec = model.recommend()
    expected = answer.point["cpu"] + calibration.for_mode(answer.mode)["cpu"].quantile
    # per pod, at the pods the history ran with; the replica policy may spread the same total over other pods
    decision = rec.replica_decision
    assert decision is not None and decision.current and decision.recommended
    per_pod = expected * decision.current / decision.recommended
    assert rec.recommendations.cpu_millicores == max(1, int(np.ceil(round(1000 * per_pod, 6))))
    assert set(rec.contributions) == {"prophet", "lstm", "naive"}
    # too short for the LSTM: prophet and naive answer, fused, with their own head-room
    assert {"prophet+naive", "prophet+lstm", "lstm+naive"} <= set(calibration.modes)
    short = model.recommend(history=spiked_frame.head(3))
    assert short.degraded and any("answered by prophet+naive" in r for r in short.reasons)
    partial = model.ensemble.explain_next(model.prepare_history(spiked_frame.head(3)), {})
    assert partial.mode == "prophet+naive" and partial.weights["lstm"]["cpu"] == 0.0


def test_relative_head_room_reaches_the_calibration(
    fitted: FittedService, spiked_frame: pd.DataFrame
) -> None:
    relative = fit_service(
        spiked_frame, SERVICE_NAME, TrainingConfig.model_validate({**TINY, "head_room": "relative"})
    )
    assert all(
        c.relative and c.source == "validation" for c in relative.calibration.for_mode("fused").values()
    )
    assert not any(c.relative for c in fitted.calibration.for_mode("fused").values())
