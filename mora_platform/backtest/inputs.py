"""Turn the backtest's inputs into ``BacktestSeries``: unified-schema frames and two-column CSVs.

Unified frames (DATA's ``load_path`` output, or a DatasetStore dataset) are split by service in
one of three modes:

- ``continuous``: the service's rows on their own timestamps (Prometheus exports, synthetic fleets);
- ``concatenated``: for short experiments on a relative clock (the shared Online Boutique data:
  30-190 rows each, ``t_N`` labels). A service's experiments are replayed back to back in
  experiment-id order on one fresh clock, ``step_seconds`` apart, so a backtest sees a run of load
  changes (scenario, replicas, users) the way a long-lived Deployment would. Rows keep their
  ``experiment_id``, so the platform still never builds a window across two experiments;
- ``experiment``: each experiment alone (very short: use a short warmup, step and horizon).

``auto`` picks ``concatenated`` when some service has more than one experiment, else ``continuous``.
Memory samples <= 0 are collection gaps in the shared data (a running container never uses 0
bytes) and are dropped, not scored. Two-column ``timestamp,value`` CSVs give one series per file
(the file name is the series); timestamps are ISO 8601 or epoch seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mora_platform.backtest.engine import BacktestSeries
from mora_platform.data import schema
from mora_platform.features.targets import POD_CPU, POD_MEMORY, pod_usage

USAGE_COLUMNS: dict[str, str] = {"cpu": "cpu_cores_value", "memory": "mem_bytes_value"}
POD_USAGE_COLUMNS: dict[str, str] = {"cpu": POD_CPU, "memory": POD_MEMORY}
MODES: tuple[str, ...] = ("auto", "continuous", "concatenated", "experiment")
CPU_UNITS: dict[str, float] = {"cores": 1.0, "millicores": 1e-3, "percent": 1e-2}
MEMORY_UNITS: dict[str, float] = {"bytes": 1.0, "mib": 2.0**20, "mb": 1e6}


class BacktestInputError(ValueError):
    """An input cannot be turned into series; the message names the file / field / value."""


@dataclass
class SeriesSet:
    """Series ready to replay, the mode used, and the inputs that were skipped (with reasons)."""

    series: list[BacktestSeries]
    mode: str
    skipped: list[str] = field(default_factory=list)


def _usage(frame: pd.DataFrame, name: str) -> dict[str, pd.Series]:
    """Per-pod usage per resource (what one pod's request must cover; ``features.targets.pod_usage``)."""
    index = pd.DatetimeIndex(frame[schema.TIMESTAMP])
    out: dict[str, pd.Series] = {}
    per_pod, _ = pod_usage(frame)
    for resource, column in USAGE_COLUMNS.items():
        if column not in frame.columns:
            continue
        values = per_pod[POD_USAGE_COLUMNS[resource]].to_numpy(dtype="float64")
        series = pd.Series(values, index=index, name=resource)
        if resource == "memory":
            series = series[series > 0]
        series = series.dropna()
        if not series.empty:
            out[resource] = series
    if not out:
        raise BacktestInputError(
            f"series {name!r}: neither {USAGE_COLUMNS['cpu']} nor {USAGE_COLUMNS['memory']} has data"
        )
    return out


def _concatenate(frame: pd.DataFrame, step_seconds: int, start: pd.Timestamp) -> pd.DataFrame:
    """Experiments back to back on one clock, in experiment-id then step order."""
    order = [c for c in (schema.EXPERIMENT_ID, schema.STEP, schema.TIMESTAMP) if c in frame.columns]
    ordered = frame.sort_values(order, kind="stable").reset_index(drop=True)
    ordered[schema.TIMESTAMP] = start + pd.to_timedelta(np.arange(len(ordered)) * step_seconds, unit="s")
    return ordered


def series_from_frame(
    frame: pd.DataFrame,
    *,
    mode: str = "auto",
    step_seconds: int = schema.DEFAULT_RELATIVE_STEP_SECONDS,
    services: Iterable[str] | None = None,
    start: str = "2026-01-01T00:00:00Z",
) -> SeriesSet:
    """Split a unified-schema frame into series (see the module docstring for the modes)."""
    if mode not in MODES:
        raise BacktestInputError(f"mode must be one of {MODES}, got {mode!r}")
    for column in (schema.TIMESTAMP, schema.SERVICE, schema.EXPERIMENT_ID):
        if column not in frame.columns:
            raise BacktestInputError(f"frame lacks the column {column!r}")
    frame = frame.copy()
    frame[schema.TIMESTAMP] = pd.to_datetime(frame[schema.TIMESTAMP], utc=True)
    wanted = set(services) if services is not None else None
    if mode == "auto":
        per_service = frame.groupby(schema.SERVICE)[schema.EXPERIMENT_ID].nunique()
        mode = "concatenated" if (per_service > 1).any() else "continuous"
    origin = pd.Timestamp(start)
    result = SeriesSet(series=[], mode=mode)
    key = schema.EXPERIMENT_ID if mode == "experiment" else schema.SERVICE
    for name, group in frame.groupby(key, sort=True):
        service = str(group[schema.SERVICE].iloc[0])
        if wanted is not None and service not in wanted:
            continue
        notes: list[str] = []
        if mode == "concatenated":
            group = _concatenate(group, step_seconds, origin)
            notes.append(
                f"{group[schema.EXPERIMENT_ID].nunique()} experiments concatenated, {step_seconds} s per row"
            )
        else:
            group = group.sort_values(schema.TIMESTAMP, kind="stable").reset_index(drop=True)
        try:
            usage = _usage(group, str(name))
        except BacktestInputError as exc:
            result.skipped.append(str(exc))
            continue
        dropped = (
            int((pd.to_numeric(group.get(USAGE_COLUMNS["memory"]), errors="coerce") <= 0).sum())
            if USAGE_COLUMNS["memory"] in group
            else 0
        )
        if dropped:
            notes.append(f"{dropped} memory samples <= 0 dropped as collection gaps")
        result.series.append(BacktestSeries(name=str(name), usage=usage, frame=group, notes=notes))
    return result


def _parse_timestamps(raw: pd.Series, source: str) -> pd.DatetimeIndex:
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().all():
        return pd.DatetimeIndex(pd.to_datetime(numeric.astype("float64"), unit="s", utc=True))
    parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise BacktestInputError(
            f"{source}: row {row + 1}, column 'timestamp': cannot parse {raw.iloc[row]!r} as a time"
        )
    return pd.DatetimeIndex(parsed)


def read_value_csv(path: Path, *, resource: str = "cpu", unit: str = "cores") -> BacktestSeries:
    """One ``timestamp,value`` CSV as a series named after the file (value converted by ``unit``)."""
    units = CPU_UNITS if resource == "cpu" else MEMORY_UNITS
    if resource not in USAGE_COLUMNS:
        raise BacktestInputError(f"resource must be cpu or memory, got {resource!r}")
    if unit not in units:
        raise BacktestInputError(f"unit {unit!r} is not a {resource} unit; use one of {', '.join(units)}")
    try:
        raw = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BacktestInputError(f"{path.name}: cannot read as CSV ({exc})") from exc
    columns = [c.strip().lower() for c in raw.columns]
    if columns != ["timestamp", "value"]:
        raise BacktestInputError(
            f"{path.name}: expected the header 'timestamp,value', got {','.join(raw.columns)!r}"
        )
    if raw.empty:
        raise BacktestInputError(f"{path.name}: no data rows")
    raw.columns = pd.Index(columns)
    index = _parse_timestamps(raw["timestamp"], path.name)
    values = pd.to_numeric(raw["value"], errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy() | (values < 0).to_numpy())
    if bad.size:
        row = int(bad[0])
        raise BacktestInputError(
            f"{path.name}: row {row + 1}, column 'value': {raw['value'].iloc[row]!r} is not a non-negative number"
        )
    usage = pd.Series(values.to_numpy(dtype="float64") * units[unit], index=index, name=resource)
    usage = usage[~usage.index.duplicated(keep="last")].sort_index()
    frame = _minimal_frame(path.stem, usage, resource)
    return BacktestSeries(
        name=path.stem, usage={resource: usage}, frame=frame, notes=[f"{path.name}, unit {unit}"]
    )


def _minimal_frame(service: str, usage: pd.Series, resource: str) -> pd.DataFrame:
    """A unified-schema frame around one usage series (other metrics unknown: NaN), for the platform."""
    n = len(usage)
    frame = pd.DataFrame({column: np.full(n, np.nan) for column in schema.METRIC_COLUMNS})
    frame.insert(0, schema.TIMESTAMP, usage.index)
    frame.insert(1, schema.EXPERIMENT_ID, f"csv-{service}")
    frame.insert(2, schema.SERVICE, service)
    frame.insert(3, schema.SCENARIO, "unknown")
    frame.insert(4, schema.REPLICA_COUNT, 1)
    frame.insert(5, schema.LOAD_USERS, np.nan)
    frame[schema.STEP] = np.arange(n)
    frame[USAGE_COLUMNS[resource]] = usage.to_numpy()
    return frame


def is_value_csv(path: Path) -> bool:
    """True if the file's header is exactly ``timestamp,value``."""
    try:
        with path.open() as handle:
            header = handle.readline()
    except OSError:
        return False
    return [c.strip().lower() for c in header.split(",")] == ["timestamp", "value"]


def read_value_csvs(paths: Iterable[Path], *, resource: str = "cpu", unit: str = "cores") -> SeriesSet:
    """Many two-column CSVs; a bad file is skipped with its reason, the others load."""
    result = SeriesSet(series=[], mode="continuous")
    for path in sorted(paths):
        try:
            result.series.append(read_value_csv(path, resource=resource, unit=unit))
        except BacktestInputError as exc:
            result.skipped.append(str(exc))
    return result
