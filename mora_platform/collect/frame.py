"""Turn per-metric Prometheus series of one service into rows of the unified frame.

Pure: no I/O. Rows exist for the grid points where at least one of the service's own (raw)
metrics has a value; node-level series alone do not make a row. The busiest-pod columns
(``schema.POD_COLUMNS``) follow the metrics when they were queried. The derived metrics come
from the data layer's ``add_derived_metrics`` (the same formulas as for CSV data), computed
over the chunk plus a few context steps before it, which are then dropped. Metrics that are
normalised by a whole-series statistic (resource pressure: share of the series maximum) are
therefore normalised by the chunk's maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mora_platform.collect.queries import LOAD_USERS_KEY
from mora_platform.data import schema

Derive = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass
class ChunkFrame:
    """The rows of one chunk window plus what is missing from them."""

    frame: pd.DataFrame
    missing_points: int
    gaps: int
    empty_metrics: list[str] = field(default_factory=list)


def default_derive(frame: pd.DataFrame) -> pd.DataFrame:
    """The data layer's derived metrics (imported late: the data layer is a sibling package)."""
    from mora_platform.data.cleaning import add_derived_metrics

    return add_derived_metrics(frame)


def experiment_id_for(namespace: str, service: str) -> str:
    """One continuous series per service and namespace."""
    return f"prometheus-{namespace}-{service}"


def build_chunk_frame(
    samples: Mapping[str, Sequence[tuple[float, float]]],
    *,
    service: str,
    namespace: str,
    scenario: str,
    first: int,
    last: int,
    step: int,
    derive: Derive = default_derive,
) -> ChunkFrame:
    """Rows for grid points ``first``..``last`` from ``samples`` (metric -> (unix s, value)).

    Samples before ``first`` are context for the derived metrics and are not returned.
    """
    pod_columns = [c for c in schema.POD_COLUMNS if c in samples]
    metric_names = [m for m in (*schema.METRIC_COLUMNS, *pod_columns) if m in samples]
    columns: dict[str, pd.Series] = {}
    for metric, points in samples.items():
        if points:
            times = np.array([round(t) for t, _ in points], dtype=np.int64)
            values = np.array([v for _, v in points], dtype=np.float64)
            columns[metric] = pd.Series(values, index=times, dtype="float64")
    empty_metrics = [m for m in metric_names if m not in columns]
    own = [m for m in schema.RAW_METRICS if m in columns]
    if not own:  # node-level series alone do not make a row of this service
        expected = 0 if last < first else (last - first) // step + 1
        return ChunkFrame(_empty_frame(), expected, 1 if expected else 0, empty_metrics)

    wide = pd.DataFrame(columns).sort_index()
    wide = wide[~wide.index.duplicated(keep="last")]
    wide = wide[wide[own].notna().any(axis=1)]
    raw = pd.DataFrame(index=wide.index)
    for metric in schema.METRIC_COLUMNS:
        raw[metric] = wide.get(metric, np.nan)
    raw = raw.astype("float64")

    replicas = raw["replica_count_value"].ffill().bfill().fillna(0.0)
    load = wide[LOAD_USERS_KEY] if LOAD_USERS_KEY in wide else pd.Series(0.0, index=wide.index)
    frame = pd.DataFrame(
        {
            schema.TIMESTAMP: pd.to_datetime(raw.index.to_numpy(), unit="s", utc=True),
            schema.EXPERIMENT_ID: experiment_id_for(namespace, service),
            schema.SERVICE: service,
            schema.SCENARIO: scenario,
            schema.REPLICA_COUNT: replicas.round().astype("int64").to_numpy(),
            schema.LOAD_USERS: load.fillna(0.0).astype("float64").to_numpy(),
        }
    )
    for metric in schema.METRIC_COLUMNS:
        frame[metric] = raw[metric].to_numpy()
    frame = derive(frame)

    keep = (raw.index.to_numpy() >= first) & (raw.index.to_numpy() <= last)
    for column in pod_columns:  # after derive: the data layer's formulas never see them
        frame[column] = wide[column].to_numpy(dtype="float64") if column in wide else np.nan
    frame = frame.loc[keep, [*schema.UNIFIED_COLUMNS, *pod_columns]].reset_index(drop=True)
    for metric in (*schema.METRIC_COLUMNS, *pod_columns):
        frame[metric] = frame[metric].astype("float64")

    present = raw.index.to_numpy()[keep]
    missing, gaps = count_missing(present, first, last, step)
    return ChunkFrame(frame, missing, gaps, empty_metrics)


def count_missing(present: np.ndarray, first: int, last: int, step: int) -> tuple[int, int]:
    """(grid points of ``first``..``last`` without a row, number of runs of such points)."""
    if last < first:
        return 0, 0
    grid = np.arange(first, last + 1, step, dtype=np.int64)
    have = np.isin(grid, present)
    missing = int((~have).sum())
    starts = (~have) & np.concatenate(([True], have[:-1]))
    return missing, int(starts.sum())


def _empty_frame() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype="float64") for column in schema.UNIFIED_COLUMNS})
    frame[schema.TIMESTAMP] = pd.Series(dtype="datetime64[ns, UTC]")
    for column in (schema.EXPERIMENT_ID, schema.SERVICE, schema.SCENARIO):
        frame[column] = pd.Series(dtype="object")
    frame[schema.REPLICA_COUNT] = pd.Series(dtype="int64")
    return frame
