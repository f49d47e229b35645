"""Targets and model features derived from a canonical frame.

A Kubernetes request is per container, per pod, so the CPU and memory targets are per pod: the usage of
the service's busiest pod where the frame has it (``cpu_cores_busiest_pod_value`` /
``mem_bytes_busiest_pod_value``, which ``mora collect`` writes), else the service's total divided by
its pods (``replica_count_value``), i.e. an even spread. ``pod_usage`` computes both and says which
basis it used. Targets (what a request should be, per the seed's head-room): ``cpu = pod CPU x 1.2``,
``memory = pod memory x 1.15``, ``replicas = replica_count_value`` (the pods the per-pod figures were
measured at). Model features (14): the 12 metrics (service totals), ``load_users`` and the scenario
code (``SCENARIO_CODES``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mora_platform.data.schema import (
    CPU_BUSIEST_POD,
    CPU_TARGET_FACTOR,
    EXPERIMENT_ID,
    LOAD_USERS,
    MEM_BUSIEST_POD,
    MEMORY_TARGET_FACTOR,
    METRIC_COLUMNS,
    REPLICA_COUNT,
    SCENARIO,
    SCENARIO_CODES,
    SCOPE_POD,
    STEP,
    TIMESTAMP,
    UNKNOWN_SCENARIO_CODE,
    USAGE_SCOPE,
)
from mora_platform.recommend.types import TARGETS

SCENARIO_CODE = "scenario_code"
#: Per-pod usage columns the prepared frame carries (what one pod's containers use together).
POD_CPU = "cpu_cores_pod_value"
POD_MEMORY = "mem_bytes_pod_value"
PODS = "replica_count_value"
#: Service totals and their busiest-pod column, per resource.
_POD_SOURCES: dict[str, tuple[str, str, str]] = {
    POD_CPU: ("cpu_cores_value", CPU_BUSIEST_POD, "cpu"),
    POD_MEMORY: ("mem_bytes_value", MEM_BUSIEST_POD, "memory"),
}
BUSIEST = "busiest-pod"
EVEN_SPREAD = "even-spread"
AS_RECORDED = "per-pod-as-recorded"  # rows whose usage_scope is "pod": the data's own per-pod figure

# target name -> (source column, factor); the prepared frame carries the target as column ``target_{name}``.
TARGET_SOURCES: dict[str, tuple[str, float]] = {
    "cpu": (POD_CPU, CPU_TARGET_FACTOR),
    "memory": (POD_MEMORY, MEMORY_TARGET_FACTOR),
    "replicas": (PODS, 1.0),
}
#: The collected column behind each target (service totals; the per-pod figures derive from them).
TARGET_DATA_COLUMNS: dict[str, str] = {
    "cpu": "cpu_cores_value",
    "memory": "mem_bytes_value",
    "replicas": PODS,
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


def pod_usage(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per-pod CPU cores and memory bytes per row (``POD_CPU``, ``POD_MEMORY``) and the basis of each.

    Where the frame has a positive busiest-pod value, that is the pod's usage (basis ``busiest-pod``);
    rows whose ``usage_scope`` is ``pod`` already hold one pod's figure (``per-pod-as-recorded``);
    elsewhere the service total divided by its pods (at least 1), an even spread (``even-spread``,
    which under-states a skewed pod: the answer's reasons say so). A total of 0 or a missing value
    stays as it is (the caller treats it as a gap). The basis is per resource: ``busiest-pod`` when
    every row with a value had one, ``mixed`` when some did, else how the others were taken.
    """
    pods = pd.to_numeric(frame[PODS], errors="coerce") if PODS in frame.columns else None
    divisor = pd.Series(1.0, index=frame.index) if pods is None else pods.where(pods >= 1, 1.0).fillna(1.0)
    per_pod_rows = (
        frame[USAGE_SCOPE].astype(str).eq(SCOPE_POD).to_numpy()
        if USAGE_SCOPE in frame.columns
        else np.zeros(len(frame), dtype=bool)
    )
    divisor = divisor.where(~per_pod_rows, 1.0)  # already one pod's figure: nothing to divide
    rest = AS_RECORDED if len(frame) and per_pod_rows.all() else EVEN_SPREAD
    out = pd.DataFrame(index=frame.index)
    basis: dict[str, str] = {}
    for column, (total_column, busiest_column, resource) in _POD_SOURCES.items():
        total = (
            pd.to_numeric(frame[total_column], errors="coerce")
            if total_column in frame.columns
            else pd.Series(np.nan, index=frame.index)
        )
        spread = total / divisor
        basis[resource] = rest
        out[column] = spread
        if busiest_column in frame.columns:
            busiest = pd.to_numeric(frame[busiest_column], errors="coerce")
            has = busiest.notna() & (busiest > 0)
            out[column] = spread.where(~has, busiest)
            seen = int(has.sum())
            if seen:
                basis[resource] = BUSIEST if seen >= int(total.notna().sum()) else "mixed"
    return out.astype("float64"), basis


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
    # one resolution whatever the source (pandas 3 parses text at microseconds, files load at nanoseconds)
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True).dt.as_unit("ns")
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
    # forward then backward inside each experiment (the grouped fills are vectorised, unlike a transform)
    experiments = out[EXPERIMENT_ID]
    filled = out[numeric].groupby(experiments, sort=False).ffill()
    filled = filled.groupby(experiments, sort=False).bfill()
    out[numeric] = filled.fillna(0.0)
    out[SCENARIO_CODE] = out[SCENARIO].map(scenario_code).astype("float64")
    if STEP not in out.columns:
        out[STEP] = out.groupby(EXPERIMENT_ID, sort=False).cumcount()
    pod, _ = pod_usage(out)
    out[POD_CPU], out[POD_MEMORY] = pod[POD_CPU], pod[POD_MEMORY]
    for name, (source, factor) in TARGET_SOURCES.items():
        out[TARGET_COLUMNS[name]] = out[source] * factor
    return out


def target_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The prepared frame's targets as an (n, 3) float array in ``TARGETS`` order."""
    return _columns(frame, [TARGET_COLUMNS[t] for t in TARGETS])


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The prepared frame's 14 model features as an (n, 14) float array."""
    return _columns(frame, FEATURE_COLUMNS)


def _columns(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """``frame[names]`` as an (n, len(names)) float array, column by column (selecting a list of
    columns builds a new frame first, which costs a millisecond per call on the answering path)."""
    if not len(frame):
        return np.empty((0, len(names)), dtype="float64")
    return np.column_stack([frame[name].to_numpy(dtype="float64") for name in names])


def median_step_seconds(frame: pd.DataFrame, default: float = 15.0) -> float:
    """Typical spacing between consecutive rows inside experiments (seconds)."""
    diffs = frame.groupby(EXPERIMENT_ID, sort=False)[TIMESTAMP].diff().dt.total_seconds().dropna()
    diffs = diffs[diffs > 0]
    return float(diffs.median()) if len(diffs) else default
