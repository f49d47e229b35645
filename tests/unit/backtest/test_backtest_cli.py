"""`mora backtest` end to end on two-column CSVs (baselines only: fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from mora_platform.cli import app


def write_csvs(directory: Path) -> None:
    directory.mkdir()
    index = pd.date_range("2026-01-01T00:00:00Z", periods=3 * 24 * 6, freq="10min")
    rng = np.random.default_rng(5)
    for name in ("web", "api"):
        values = 40 + 20 * np.sin(2 * np.pi * index.hour / 24) + rng.normal(0, 2, len(index))
        pd.DataFrame({"timestamp": index.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": values}).to_csv(
            directory / f"{name}.csv", index=False
        )


def test_backtest_command_on_value_csvs(tmp_path: Path) -> None:
    write_csvs(tmp_path / "traces")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "backtest",
            str(tmp_path / "traces"),
            "--out",
            str(out),
            "--unit",
            "percent",
            "--methods",
            "vpa,krr,reactive",
            "--step",
            "2h",
            "--warmup",
            "12h",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "backtest.json").read_text())
    assert [s["name"] for s in report["series"]] == ["api", "web"]
    cpu = report["series"][0]["resources"]["cpu"]
    assert cpu["origins"] == 30  # (72 h - 12 h warm-up - 1 h horizon) / 2 h + 1
    assert 0.2 < cpu["methods"]["krr"]["score"]["mean_usage"] < 0.6  # percent -> cores
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["api.png", "summary.png", "web.png"]
    assert "AVERAGE (2 series)" in result.output


def test_backtest_command_errors_are_clear(tmp_path: Path) -> None:
    write_csvs(tmp_path / "traces")
    runner = CliRunner()
    bad_step = runner.invoke(
        app, ["backtest", str(tmp_path / "traces"), "--step", "soon", "--methods", "max"]
    )
    assert bad_step.exit_code == 2 and "--step" in bad_step.output and "'soon'" in bad_step.output
    bad_method = runner.invoke(app, ["backtest", str(tmp_path / "traces"), "--methods", "max,oracle"])
    assert bad_method.exit_code == 2 and "unknown recommender 'oracle'" in bad_method.output
    bad_head_room = runner.invoke(
        app, ["backtest", str(tmp_path / "traces"), "--methods", "max", "--calibrate-on", "tomorrow"]
    )
    assert bad_head_room.exit_code == 2 and "--calibrate-on" in bad_head_room.output
    assert "'tomorrow'" in bad_head_room.output
