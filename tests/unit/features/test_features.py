"""Features: targets, time-ordered split, train-only scaling, windows inside one experiment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import EXPERIMENT_ID, LOAD_USERS, SCENARIO, TIMESTAMP
from mora_platform.features import (
    FEATURE_COLUMNS,
    TARGET_COLUMNS,
    MinMaxScaler,
    Split,
    build_windows,
    prepare_frame,
    split_frame,
)
from mora_platform.features.split import split_sizes
from mora_platform.features.targets import FeatureError, feature_matrix, target_matrix


@pytest.fixture(scope="module")
def three_experiments() -> pd.DataFrame:
    """Three experiments whose load_users encode (experiment, step) so a crossing window shows."""
    frame = synthetic_service_frame(days=1.0, step_seconds=600, seed=3, experiments=3)
    exp_index = frame[EXPERIMENT_ID].astype("category").cat.codes.to_numpy()
    frame[LOAD_USERS] = exp_index * 1000.0 + frame["step"].to_numpy()
    return prepare_frame(frame)


def test_targets_and_scenario_code() -> None:
    frame = prepare_frame(synthetic_service_frame(days=0.2, seed=1))
    pods = frame["replica_count_value"].clip(lower=1)
    assert np.allclose(frame[TARGET_COLUMNS["cpu"]], frame["cpu_cores_value"] / pods * 1.2)  # per pod
    assert np.allclose(frame[TARGET_COLUMNS["memory"]], frame["mem_bytes_value"] / pods * 1.15)
    assert np.allclose(frame[TARGET_COLUMNS["replicas"]], frame["replica_count_value"])
    assert (frame["scenario_code"] == 3).all()
    assert len(FEATURE_COLUMNS) == 14
    assert feature_matrix(frame).shape == (len(frame), 14)
    assert target_matrix(frame).shape == (len(frame), 3)


def test_prepare_frame_names_missing_column() -> None:
    frame = synthetic_service_frame(days=0.1).drop(columns=["mem_bytes_value"])
    with pytest.raises(FeatureError, match="mem_bytes_value"):
        prepare_frame(frame)


def test_prepare_frame_fills_gaps_within_experiment_only() -> None:
    frame = synthetic_service_frame(days=0.5, step_seconds=600, seed=2, experiments=2)
    second = frame[EXPERIMENT_ID] == frame[EXPERIMENT_ID].iloc[-1]
    first_row_of_second = int(np.flatnonzero(second.to_numpy())[0])
    frame.loc[first_row_of_second, "cpu_cores_value"] = np.nan
    prepared = prepare_frame(frame)
    # Back-filled from the same experiment's next row, not forward-filled from the previous experiment.
    expected = frame.loc[first_row_of_second + 1, "cpu_cores_value"]
    assert prepared.loc[first_row_of_second, "cpu_cores_value"] == pytest.approx(expected)


def test_windows_never_cross_experiments(three_experiments: pd.DataFrame) -> None:
    frame = three_experiments
    seq_len = 5
    windows = build_windows(
        feature_matrix(frame), target_matrix(frame), frame[EXPERIMENT_ID].to_numpy(), seq_len
    )
    load_col = list(FEATURE_COLUMNS).index(LOAD_USERS)
    sizes = frame.groupby(EXPERIMENT_ID).size()
    assert len(windows) == int((sizes - seq_len).clip(lower=0).sum())
    for x, row in zip(windows.x, windows.rows, strict=True):
        target_load = frame.loc[row, LOAD_USERS]
        # Same experiment (thousands digit) and exactly the seq_len previous steps.
        assert np.array_equal(x[:, load_col], target_load - np.arange(seq_len, 0, -1))
        assert (x[:, load_col] // 1000 == target_load // 1000).all()


def test_short_experiment_yields_no_windows() -> None:
    labels = np.array(["a"] * 4 + ["b"] * 5)
    features = np.arange(9, dtype=float)[:, None]
    windows = build_windows(features, features, labels, seq_len=4)
    assert windows.rows.tolist() == [8]  # "a" (4 rows = seq_len) gives none, "b" gives one
    assert windows.x[0, :, 0].tolist() == [4, 5, 6, 7]
    masked = build_windows(features, features, labels, seq_len=4, target_mask=np.zeros(9, dtype=bool))
    assert len(masked) == 0


def test_split_is_time_ordered_per_experiment(three_experiments: pd.DataFrame) -> None:
    labels = split_frame(three_experiments, 0.2, 0.1)
    frame = three_experiments.assign(split=labels.to_numpy())
    for _, group in frame.groupby(EXPERIMENT_ID):
        order = {Split.TRAIN.value: 0, Split.VALIDATION.value: 1, Split.TEST.value: 2}
        codes = group.sort_values(TIMESTAMP)["split"].map(order).to_numpy()
        assert (np.diff(codes) >= 0).all()
        n = len(group)
        assert (codes == 2).sum() == round(n * 0.1)
        assert (codes == 1).sum() == round(n * 0.2)


def test_split_sizes_keep_a_training_row() -> None:
    assert split_sizes(2, 0.4, 0.4)[0] >= 1
    assert sum(split_sizes(7, 0.15, 0.15)) == 7
    with pytest.raises(ValueError):
        split_frame(prepare_frame(synthetic_service_frame(days=0.1)), 0.6, 0.5)


def test_scaler_round_trip_and_constant_column() -> None:
    values = np.array([[0.0, 5.0], [10.0, 5.0], [5.0, 5.0]])
    scaler = MinMaxScaler.fit(values, ["a", "b"])
    scaled = scaler.transform(values)
    assert scaled[:, 0].tolist() == [0.0, 1.0, 0.5]
    assert scaled[:, 1].tolist() == [0.0, 0.0, 0.0]
    again = MinMaxScaler.from_dict(scaler.to_dict())
    assert np.allclose(again.inverse(again.transform(values)), values)
    with pytest.raises(ValueError, match="malformed"):
        MinMaxScaler.from_dict({"columns": ["a"], "minimum": [0.0]})


def test_unknown_scenario_gets_unknown_code() -> None:
    frame = synthetic_service_frame(days=0.05)
    frame[SCENARIO] = "surprise"
    assert (prepare_frame(frame)["scenario_code"] == -1).all()


def test_split_by_experiments_holds_out_the_latest_whole_experiments(three_experiments: pd.DataFrame) -> None:
    # ten experiments whose ids do not sort in start order: the split follows start times
    parts = []
    first = three_experiments[EXPERIMENT_ID].iloc[0]
    for k in range(10):
        part = three_experiments[three_experiments[EXPERIMENT_ID] == first].copy()
        part[EXPERIMENT_ID] = f"exp-{9 - k}"
        part[TIMESTAMP] = part[TIMESTAMP] + pd.Timedelta(days=k)
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    labels = split_frame(frame, 0.15, 0.15, by="experiments")
    per_experiment = frame.assign(split=labels.to_numpy()).groupby(EXPERIMENT_ID)["split"].agg(set)
    assert all(len(s) == 1 for s in per_experiment)
    assert per_experiment["exp-0"] == {Split.TEST.value} and per_experiment["exp-9"] == {Split.TRAIN.value}
    assert sorted(per_experiment.map(lambda s: next(iter(s))).value_counts().to_dict().items()) == [
        ("test", 2),
        ("train", 6),
        ("validation", 2),
    ]
    # too few experiments: the split inside each experiment
    assert split_frame(three_experiments, 0.2, 0.1, by="experiments").equals(
        split_frame(three_experiments, 0.2, 0.1)
    )
    with pytest.raises(ValueError, match="split by"):
        split_frame(three_experiments, 0.2, 0.1, by="days")  # type: ignore[arg-type]


def test_targets_are_per_pod_busiest_pod_where_collected_else_an_even_spread() -> None:
    from mora_platform.data.schema import CPU_BUSIEST_POD
    from mora_platform.features.targets import BUSIEST, EVEN_SPREAD, POD_CPU, POD_MEMORY, pod_usage

    frame = pd.DataFrame(
        {
            "cpu_cores_value": [0.4, 0.4, 0.9],
            "mem_bytes_value": [400.0, 800.0, 900.0],
            "replica_count_value": [4.0, 2.0, 0.0],  # 0 pods reported: taken as one
        }
    )
    per_pod, basis = pod_usage(frame)
    assert per_pod[POD_CPU].tolist() == pytest.approx([0.1, 0.2, 0.9])
    assert per_pod[POD_MEMORY].tolist() == pytest.approx([100.0, 400.0, 900.0])
    assert basis == {"cpu": EVEN_SPREAD, "memory": EVEN_SPREAD}
    frame[CPU_BUSIEST_POD] = [0.25, 0.3, 0.9]
    per_pod, basis = pod_usage(frame)
    assert per_pod[POD_CPU].tolist() == pytest.approx([0.25, 0.3, 0.9])  # the busiest pod, not the mean
    assert basis["cpu"] == BUSIEST and basis["memory"] == EVEN_SPREAD


def test_rows_recorded_per_pod_are_not_divided_again() -> None:
    from mora_platform.data.schema import USAGE_SCOPE
    from mora_platform.features.targets import AS_RECORDED, POD_MEMORY, pod_usage

    frame = pd.DataFrame(
        {
            "cpu_cores_value": [0.4, 0.4],
            "mem_bytes_value": [400.0, 400.0],
            "replica_count_value": [4.0, 4.0],
            USAGE_SCOPE: ["pod", "service"],
        }
    )
    per_pod, basis = pod_usage(frame)
    assert per_pod[POD_MEMORY].tolist() == pytest.approx([400.0, 100.0])
    per_pod, basis = pod_usage(frame.assign(**{USAGE_SCOPE: "pod"}))
    assert per_pod[POD_MEMORY].tolist() == pytest.approx([400.0, 400.0])
    assert basis == {"cpu": AS_RECORDED, "memory": AS_RECORDED}
