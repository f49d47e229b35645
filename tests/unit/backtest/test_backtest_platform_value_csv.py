"""The platform answers on two-column ``timestamp,value`` CSVs (one resource, no replica metric).

Such a series has one usage column: the platform trains on it (the other targets unavailable) and
is scored beside the baselines, instead of failing on the missing columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mora_platform.backtest.baselines import create_recommender
from mora_platform.backtest.engine import BacktestConfig, replay_series
from mora_platform.backtest.inputs import read_value_csv
from mora_platform.backtest.platform import PlatformRecommender
from mora_platform.backtest.platform_training import ServiceModelTrainer
from mora_platform.backtest.report import build_report

TINY = {"epochs": 1, "seq_len": 12, "lstm": {"units": [4], "dense_units": 0}}


def _write_csv(path: Path, resource: str) -> None:
    times = pd.date_range("2026-03-01", periods=int(1.5 * 288), freq="5min", tz="UTC")
    phase = 2 * np.pi * np.arange(len(times)) / 288
    rng = np.random.default_rng(3)
    if resource == "cpu":
        values = 400 + 200 * np.sin(phase) + rng.normal(0, 20, len(times))  # millicores
    else:
        values = 300 + 50 * np.sin(phase) + rng.normal(0, 5, len(times))  # MiB
    pd.DataFrame({"timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": values.round(3)}).to_csv(
        path, index=False
    )


@pytest.mark.parametrize(("resource", "unit"), [("cpu", "millicores"), ("memory", "mib")])
def test_platform_is_scored_on_a_single_value_csv(
    resource: str, unit: str, tmp_path: Path, small_config: BacktestConfig
) -> None:
    path = tmp_path / f"web-{resource}.csv"
    _write_csv(path, resource)
    series = read_value_csv(path, resource=resource, unit=unit)
    platform = PlatformRecommender(trainer=ServiceModelTrainer(TINY), refit=pd.Timedelta(days=30))
    methods = [platform, create_recommender("max")]
    replay = replay_series(series, methods, small_config)
    assert not replay.errors, replay.errors
    trace = replay.resources[resource].traces["platform"]
    assert trace.ok and np.isfinite(trace.base).all() and (trace.base > 0).all()
    report = build_report([replay], methods, small_config, source=str(path), mode="continuous")
    row = report["series"][0]["resources"][resource]["methods"]["platform"]
    assert row["status"] == "ok" and row["score"] is not None
    assert row["forecast"] is not None  # the point forecast is scored too
    assert len(platform.fits) == 1
