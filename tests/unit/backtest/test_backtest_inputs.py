"""Inputs: two-column CSVs and unified frames become series."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mora_platform.backtest.inputs import (
    BacktestInputError,
    read_value_csv,
    read_value_csvs,
    series_from_frame,
)
from mora_platform.data import schema


def test_value_csv_percent_and_epoch(tmp_path: Path) -> None:
    path = tmp_path / "checkout.csv"
    path.write_text("timestamp,value\n1767225600,50\n1767225660,25\n")
    series = read_value_csv(path, unit="percent")
    assert series.name == "checkout"
    cpu = series.usage["cpu"]
    assert cpu.tolist() == [0.5, 0.25]
    assert cpu.index[0] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert series.frame is not None and series.frame["cpu_cores_value"].tolist() == [0.5, 0.25]


def test_value_csv_errors_name_file_row_and_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2026-01-01T00:00:00Z,1\n2026-01-01T00:01:00Z,abc\n")
    with pytest.raises(BacktestInputError, match=r"bad.csv: row 2, column 'value': 'abc'"):
        read_value_csv(bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,cpu\n1,2\n")
    good = tmp_path / "good.csv"
    good.write_text("timestamp,value\n2026-01-01T00:00:00Z,1\n")
    result = read_value_csvs([bad, wrong, good])
    assert [s.name for s in result.series] == ["good"]
    assert len(result.skipped) == 2 and any("wrong.csv" in s for s in result.skipped)


def unified(experiments: dict[str, int]) -> pd.DataFrame:
    rows = []
    for ordinal, (exp, n) in enumerate(experiments.items()):
        for step in range(n):
            rows.append(
                {
                    schema.TIMESTAMP: pd.Timestamp("2026-01-01T00:00:00Z")
                    + pd.Timedelta(days=ordinal, seconds=15 * step),
                    schema.EXPERIMENT_ID: exp,
                    schema.SERVICE: "frontend",
                    schema.STEP: step,
                    "cpu_cores_value": 0.001 * (ordinal + 1),
                    "mem_bytes_value": 0.0 if exp == "e2" else 1e7,
                }
            )
    return pd.DataFrame(rows)


def test_concatenated_mode_replays_experiments_back_to_back() -> None:
    result = series_from_frame(unified({"e1": 3, "e2": 2, "e3": 4}))
    assert result.mode == "concatenated"
    (series,) = result.series
    cpu = series.usage["cpu"]
    assert len(cpu) == 9
    assert ((cpu.index[1:] - cpu.index[:-1]) == pd.Timedelta(seconds=15)).all()
    assert cpu.tolist()[:5] == [0.001] * 3 + [0.002] * 2
    assert len(series.usage["memory"]) == 7  # e2's zero memory is a gap
    assert series.frame is not None and series.frame[schema.EXPERIMENT_ID].tolist()[3] == "e2"
    assert any("concatenated" in n for n in series.notes)


def test_experiment_mode_and_bad_mode() -> None:
    result = series_from_frame(unified({"e1": 3, "e3": 4}), mode="experiment")
    assert [s.name for s in result.series] == ["e1", "e3"]
    with pytest.raises(BacktestInputError, match="mode"):
        series_from_frame(unified({"e1": 3}), mode="weird")
