"""Loaders: the shared Online Boutique data, the relative clock, real timestamps, Parquet and round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from online_boutique import experiment_files, experiments_per_service, rows_per_service

from mora_platform.data.loaders import DataLoadError, LoadResult, load_frame, load_path
from mora_platform.data.schema import METRIC_COLUMNS, STEP, UNIFIED_COLUMNS
from mora_platform.data.synthetic import generate_fleet
from mora_platform.data.writers import write_frame


def count_data_rows(directory: Path) -> int:
    total = 0
    for path in directory.glob("*.csv"):
        with path.open(encoding="utf-8") as handle:
            total += sum(1 for line in handle if line.strip()) - 1
    return total


def assert_canonical(frame: pd.DataFrame) -> None:
    assert list(frame.columns[: len(UNIFIED_COLUMNS) + 1]) == [*UNIFIED_COLUMNS, STEP]
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)
    assert str(frame["timestamp"].dt.tz) == "UTC"
    for column in ("experiment_id", "service", "scenario"):
        assert pd.api.types.is_string_dtype(frame[column].dtype), column
    assert frame["replica_count"].dtype == np.int64
    assert frame[STEP].dtype == np.int64
    assert frame["load_users"].dtype == np.float64
    for column in METRIC_COLUMNS:
        assert frame[column].dtype == np.float64, column
    assert isinstance(frame.index, pd.RangeIndex)
    keys = frame[["service", "experiment_id", "timestamp"]]
    assert keys.equals(keys.sort_values(["service", "experiment_id", "timestamp"]).reset_index(drop=True))


def test_shared_data_loads_whole(shared_raw: LoadResult, shared_data_dir: Path) -> None:
    frame = shared_raw.frame
    assert shared_raw.errors == []
    assert shared_raw.skipped == []
    files = experiment_files(shared_data_dir)
    assert len(shared_raw.loaded) == len(files) >= 42  # the shipped subset, or the full set of 252
    assert frame["service"].nunique() == 7
    assert frame["experiment_id"].nunique() == len(files)
    per_service = frame.groupby("service")["experiment_id"].nunique().to_dict()
    assert per_service == dict(experiments_per_service(shared_data_dir))
    assert frame.groupby("service").size().to_dict() == dict(rows_per_service(shared_data_dir))
    expected_rows = count_data_rows(shared_data_dir)
    assert len(frame) == expected_rows
    assert_canonical(frame)


def test_shared_data_has_no_window_or_ordering_violations(shared_raw: LoadResult) -> None:
    frame = shared_raw.frame
    by_experiment = frame.groupby("experiment_id")
    assert not frame.duplicated(["experiment_id", "timestamp"]).any()
    assert by_experiment["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()
    assert by_experiment[STEP].apply(lambda s: s.diff().dropna().gt(0).all()).all()
    assert by_experiment[STEP].min().eq(0).all()
    # experiments of one service sit in disjoint, ordered windows of the synthetic clock
    spans = by_experiment.agg(
        service=("service", "first"), start=("timestamp", "min"), end=("timestamp", "max")
    )
    for _, group in spans.sort_values(["service", "start"]).groupby("service"):
        assert (group["start"].iloc[1:].to_numpy() > group["end"].iloc[:-1].to_numpy()).all()
    # the first experiment of every service starts at the relative epoch
    assert (spans.groupby("service")["start"].min() == pd.Timestamp("2026-01-01T00:00:00Z")).all()


def test_shared_data_clean_load_has_no_missing_metrics(
    shared_clean: pd.DataFrame, shared_data_dir: Path
) -> None:
    assert len(shared_clean) == count_data_rows(shared_data_dir)
    assert shared_clean[list(METRIC_COLUMNS)].notna().all().all()
    assert_canonical(shared_clean)


def relative_frame() -> pd.DataFrame:
    rows = []
    for experiment in ("exp-b", "exp-a"):  # ordinals follow experiment_id order, not input order
        for step in range(3):
            rows.append(
                {
                    "timestamp": f"t_{step}",
                    "experiment_id": experiment,
                    "service": "svc",
                    "scenario": "steady",
                    "replica_count": 1,
                    "load_users": 5,
                    "cpu_cores_value": 0.1,
                    "mem_bytes_value": 1e8,
                    "net_rx_bytes_value": 100.0,
                    "net_tx_bytes_value": 1e7,
                    "pod_restarts_value": 0.0,
                    "replica_count_value": 1.0,
                }
            )
    return pd.DataFrame(rows)


def test_relative_labels_map_to_the_synthetic_clock() -> None:
    result = load_frame(relative_frame(), relative_step_seconds=20)
    frame = result.frame
    assert result.errors == []
    first = frame[frame["experiment_id"] == "exp-a"]
    second = frame[frame["experiment_id"] == "exp-b"]
    epoch = pd.Timestamp("2026-01-01T00:00:00Z")
    assert list(first["timestamp"]) == [epoch + pd.Timedelta(seconds=20 * n) for n in range(3)]
    assert list(second["timestamp"]) == [epoch + pd.Timedelta(days=1, seconds=20 * n) for n in range(3)]
    assert list(second[STEP]) == [0, 1, 2]
    # derived metrics absent from the input are computed
    assert frame["processing_intensity_value"].eq(0.1).all()


def test_naive_iso_is_utc_and_offsets_are_converted(tmp_path: Path) -> None:
    frame = relative_frame().iloc[:3].copy()
    frame["timestamp"] = ["2026-01-01T00:00:00", "2026-01-01T01:00:30+01:00", "2026-01-01T00:01:00Z"]
    frame.to_csv(tmp_path / "iso.csv", index=False)
    result = load_path(tmp_path / "iso.csv")
    assert result.errors == []
    expected = pd.to_datetime(["2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z", "2026-01-01T00:01:00Z"])
    assert list(result.frame["timestamp"]) == list(expected)
    assert list(result.frame[STEP]) == [0, 1, 2]


def test_epoch_seconds(tmp_path: Path) -> None:
    frame = relative_frame().iloc[:3].copy()
    frame["timestamp"] = [1767225660, 1767225600, 1767225630]  # unsorted on purpose
    frame.to_csv(tmp_path / "epoch.csv", index=False)
    result = load_path(tmp_path / "epoch.csv")
    assert result.errors == []
    assert result.frame["timestamp"].iloc[0] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert result.frame["timestamp"].is_monotonic_increasing


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_write_frame_round_trips_through_load_path(tmp_path: Path, suffix: str) -> None:
    fleet = generate_fleet(2, 0.25, step_seconds=300, seed=3)
    path = write_frame(fleet, tmp_path / "out" / f"fleet{suffix}")
    result = load_path(path, clean=False)
    assert result.errors == []
    assert result.loaded == [f"fleet{suffix}"]
    pd.testing.assert_frame_equal(result.frame, fleet, check_dtype=False, rtol=1e-9)
    assert_canonical(result.frame)


def test_write_frame_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported suffix"):
        write_frame(generate_fleet(1, 0.1, step_seconds=600), tmp_path / "fleet.xlsx")


def test_bad_experiment_in_a_multi_experiment_frame_skips_only_it() -> None:
    frame = relative_frame()
    frame.loc[4, "cpu_cores_value"] = -1.0  # row 5, experiment exp-a
    result = load_frame(frame, source="memory")
    assert [str(issue) for issue in result.errors] == [
        "memory: row 5, column 'cpu_cores_value': negative value (usage cannot be negative) '-1.0'"
    ]
    assert result.frame["experiment_id"].unique().tolist() == ["exp-b"]
    assert result.skipped_experiments == ["memory: exp-a"]
    assert result.loaded == ["memory"]


def test_same_experiment_in_two_files_is_loaded_once(tmp_path: Path) -> None:
    relative_frame().to_csv(tmp_path / "a.csv", index=False)
    relative_frame().to_csv(tmp_path / "b.csv", index=False)
    result = load_path(tmp_path)
    assert len(result.frame) == 6
    assert [issue.source for issue in result.errors] == ["b.csv", "b.csv"]
    assert "already loaded from a.csv" in str(result.errors[0])
    assert result.skipped == ["b.csv"]


def test_missing_path_and_empty_directory_raise(tmp_path: Path) -> None:
    with pytest.raises(DataLoadError, match="no such file"):
        load_path(tmp_path / "nope")
    (tmp_path / "readme.md").write_text("nothing here\n")
    with pytest.raises(DataLoadError, match="no CSV or Parquet"):
        load_path(tmp_path)


def test_optional_context_columns_get_defaults() -> None:
    frame = relative_frame().drop(columns=["scenario", "replica_count", "load_users"])
    frame["replica_count_value"] = 3.0
    result = load_frame(frame)
    assert result.errors == []
    assert result.frame["scenario"].eq("unknown").all()
    assert result.frame["replica_count"].eq(3).all()
    assert result.frame["load_users"].isna().all()


def test_real_timestamped_experiment_split_over_files_is_merged(tmp_path: Path) -> None:
    frame = relative_frame().iloc[:3].copy()
    frame["experiment_id"] = "prod"
    day_one = frame.assign(timestamp=["2026-02-01T00:00:00Z", "2026-02-01T00:00:30Z", "2026-02-01T00:01:00Z"])
    day_two = frame.assign(timestamp=["2026-02-01T00:01:00Z", "2026-02-01T00:01:30Z", "2026-02-01T00:02:00Z"])
    day_one.to_csv(tmp_path / "day1.csv", index=False)
    day_two.to_csv(tmp_path / "day2.csv", index=False)
    result = load_path(tmp_path)
    assert result.errors == []
    assert result.loaded == ["day1.csv", "day2.csv"]
    assert len(result.frame) == 5  # the overlapping 00:01:00 row is kept once
    assert list(result.frame[STEP]) == [0, 1, 2, 3, 4]
    assert [str(issue) for issue in result.issues] == [
        "day2.csv: column 'timestamp': 1 row(s) repeat timestamps already loaded from another file; kept the first"
    ]


def test_directory_of_mixed_csv_and_nested_parquet(tmp_path: Path) -> None:
    fleet = generate_fleet(2, 0.1, step_seconds=300, seed=1)
    for service, part in fleet.groupby("service"):
        write_frame(part, tmp_path / f"service={service}" / "part-00000.parquet")
    relative_frame().to_csv(tmp_path / "experiments.csv", index=False)
    (tmp_path / ".hidden").mkdir()
    relative_frame().to_csv(tmp_path / ".hidden" / "ignored.csv", index=False)
    result = load_path(tmp_path)
    assert result.errors == []
    assert result.loaded == [
        "experiments.csv",
        "service=svc-00/part-00000.parquet",
        "service=svc-01/part-00000.parquet",
    ]
    assert sorted(result.frame["service"].unique()) == ["svc", "svc-00", "svc-01"]
    assert len(result.frame) == len(fleet) + 6


def test_the_shipped_example_subset_loads() -> None:
    examples = Path(__file__).resolve().parents[3] / "examples" / "online-boutique"
    result = load_path(examples)
    assert result.errors == []
    assert result.frame["service"].nunique() == 7
    assert result.frame["experiment_id"].nunique() == 42
    assert len(result.frame) == count_data_rows(examples) == 3281
    assert sum(p.stat().st_size for p in examples.iterdir()) < 1_500_000
