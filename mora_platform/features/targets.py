"""Targets and model features derived from a canonical frame.

Targets (what a request should be, per the seed): ``cpu = cpu_cores_value x 1.2``,
``memory = mem_bytes_value x 1.15``, ``replicas = replica_count_value``.
Model features (14): the 12 metrics, ``load_users`` and the scenario code (``SCENARIO_CODES``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mora_platform.data.schema import (
    CPU_TARGET_FACTOR,
    EXPERIMENT_ID,
    LOAD_USERS,
    MEMORY_TARGET_FACTOR,
    METRIC_COLUMNS,
    REPLICA_COUNT,
    SCENARIO,
    SCENARIO_CODES,
    STEP,
    TIMESTAMP,
    UNKNOWN_SCENARIO_CODE,
)
from mora_platform.recommend.types import TARGETS

SCENARIO_CODE = "scenario_code"

# target name -> (source column, factor); the prepared frame carries the target as column ``target_{name}``.
TARGET_SOURCES: dict[str, tuple[str, float]] = {
    "cpu": ("cpu_cores_value", CPU_TARGET_FACTOR),
    "memory": ("mem_bytes_value", MEMORY_TARGET_FACTOR),
    "replicas": ("replica_count_value", 1.0),
}
TARGET_COLUMNS: dict[str, str] = {name: f"target_{name}" for name in TARGETS}
FEATURE_COLUMNS: tuple[str, ...] = (*METRIC_COLUMNS, LOAD_USERS, SCENARIO_CODE)
REQUIRED_COLUMNS: tuple[str, ...] = (
    TIMESTAMP,
    EXPERIMENT_ID,
    SCENARIO,
    REPLICA_COUNT,
    LOAD_USERS,
    *METRIC_COLUMNS,
)


class FeatureError(ValueError):
    """The frame cannot be turned into features (missing column, unusable values)."""


def scenario_code(scenario: str) -> int:
    """Stable integer code of a scenario name; unknown names get ``UNKNOWN_SCENARIO_CODE``."""
    return SCENARIO_CODES.get(str(scenario), UNKNOWN_SCENARIO_CODE)


def prepare_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Sorted copy of ``frame`` with the scenario code, the three targets and ``step`` added.

    Rows are ordered by (experiment, timestamp); gaps in metrics are filled forward then backward
    inside each experiment (never from a neighbouring experiment), remaining gaps with 0.
    Raises ``FeatureError`` naming the column when a required column is missing.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise FeatureError(f"frame lacks required column(s): {', '.join(missing)}")
    out = frame.copy()
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
    out[EXPERIMENT_ID] = out[EXPERIMENT_ID].astype(str)
    out = out.sort_values([EXPERIMENT_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
    # Experiments in time order of their first row, so "latest experiment" is the last block.
    first = out.groupby(EXPERIMENT_ID, sort=False)[TIMESTAMP].transform("min")
    out = (
        out.assign(_first=first)
        .sort_values(["_first", EXPERIMENT_ID, TIMESTAMP], kind="stable")
        .drop(columns="_first")
        .reset_index(drop=True)
    )
    numeric = [*METRIC_COLUMNS, LOAD_USERS, REPLICA_COUNT]
    for column in numeric:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    groups = out.groupby(EXPERIMENT_ID, sort=False)
    filled = groups[numeric].transform(lambda s: s.ffill().bfill())
    out[numeric] = filled.fillna(0.0)
    out[SCENARIO_CODE] = out[SCENARIO].map(scenario_code).astype("float64")
    if STEP not in out.columns:
        out[STEP] = out.groupby(EXPERIMENT_ID, sort=False).cumcount()
    for name, (source, factor) in TARGET_SOURCES.items():
        out[TARGET_COLUMNS[name]] = out[source] * factor
    return out


def target_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The prepared frame's targets as an (n, 3) float array in ``TARGETS`` order."""
    return frame[[TARGET_COLUMNS[t] for t in TARGETS]].to_numpy(dtype="float64")


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The prepared frame's 14 model features as an (n, 14) float array."""
    return frame[list(FEATURE_COLUMNS)].to_numpy(dtype="float64")


def median_step_seconds(frame: pd.DataFrame, default: float = 15.0) -> float:
    """Typical spacing between consecutive rows inside experiments (seconds)."""
    diffs = frame.groupby(EXPERIMENT_ID, sort=False)[TIMESTAMP].diff().dt.total_seconds().dropna()
    diffs = diffs[diffs > 0]
    return float(diffs.median()) if len(diffs) else default
