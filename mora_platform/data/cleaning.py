"""Cleaning of a canonical frame: collection gaps, implausible values, imputation, counters, derived metrics.

`clean_frame` runs, in this order:

1. **Collection gaps.** ``mem_bytes_value == 0`` is a failed scrape (a running container never has an
   empty working set), so it becomes NaN; a network column that is 0.0 in the same row, or on every row
   of an experiment, is part of the same gap and becomes NaN too. Derived metrics computed from a gap
   row are recomputed.
2. **Implausible values** become NaN: +/-inf anywhere, negative usage, node utilisation outside
   [0, 100] %, ``service_stability_value`` outside (0, 1], ``resource_pressure_value`` outside [0, 1]
   (the seed's stability formula divides by zero on counter resets and ships ``inf`` / negatives).
3. **Outlier bounds.** CPU, memory and network usage above ``Q3 + OUTLIER_IQR_FACTOR * max(IQR, |median|)``
   of the service are clipped to that bound. ``OUTLIER_IQR_FACTOR = 50`` is deliberately large: real
   bursts must survive because requests have to cover them (in the Online Boutique data the largest value
   lies 18 IQRs above Q3, so nothing there is clipped); only values no workload produces, such as a
   counter glitch of 1e15 bytes, are cut. The ``|median|`` floor keeps near-constant series (IQR ~ 0)
   from clipping an ordinary step up. Services with fewer than ``MIN_ROWS_FOR_BOUNDS`` values are left alone.
4. **Counters.** ``pod_restarts_value`` is cumulative: gaps are forward- then back-filled within the
   experiment (0 if the experiment has none). `restart_increments` gives the per-step restart count with
   resets handled the way Prometheus' ``increase()`` does (a drop means the counter restarted from 0).
5. **Median imputation** of the measured metrics (CPU, memory, network, node utilisation): the
   experiment's median, falling back to the service's median. ``replica_count_value`` is a step function,
   so it is forward/back-filled within the experiment and falls back to the ``replica_count`` context.
6. **Derived metrics** (`add_derived_metrics`) fill whatever is still NaN.

Derived metrics. Inferred from the Online Boutique data (they reproduce the shipped values exactly):

- ``processing_intensity_value = cpu_cores_value``;
- ``network_activity_rate_value`` = step-to-step change of ``net_rx_bytes_value / 1000`` within the
  experiment, 0 on its first row (may be negative);
- ``resource_pressure_value = 0.5 * cpu / max_experiment(cpu) + 0.5 * mem / max_experiment(mem)``;
- ``service_stability_value = 1 / (1 + restarts in this step)``; the seed used the raw counter difference
  and so produced ``inf`` and negative values at resets; here the reset-aware increment is used, which
  agrees with the seed wherever the counter did not drop.

Not inferable (node metrics are measured on the node, not derived from the service), so defined here as a
lower-bound proxy used only where no measured value exists for the whole service:

- ``node_cpu_util_value = 100 * cpu_cores_value / node_cpu_cores`` (default 4 cores);
- ``node_mem_util_value = 100 * mem_bytes_value / node_memory_bytes`` (default 16 GiB); both clipped to [0, 100].
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mora_platform.data.schema import (
    EXPERIMENT_ID,
    METRIC_COLUMNS,
    NON_NEGATIVE_METRICS,
    REPLICA_COUNT,
    SERVICE,
    STEP,
    TIMESTAMP,
)

OUTLIER_IQR_FACTOR = 50.0
MIN_ROWS_FOR_BOUNDS = 20
CLIPPED_METRICS: tuple[str, ...] = (
    "cpu_cores_value",
    "mem_bytes_value",
    "net_rx_bytes_value",
    "net_tx_bytes_value",
)
MEDIAN_IMPUTED_METRICS: tuple[str, ...] = (*CLIPPED_METRICS, "node_cpu_util_value", "node_mem_util_value")
NETWORK_METRICS: tuple[str, ...] = ("net_rx_bytes_value", "net_tx_bytes_value")
PERCENT_METRICS: tuple[str, ...] = ("node_cpu_util_value", "node_mem_util_value")
DEFAULT_NODE_CPU_CORES = 4.0
DEFAULT_NODE_MEMORY_BYTES = 16 * 1024**3
NETWORK_RATE_SCALE = 1000.0

CPU = "cpu_cores_value"
MEMORY = "mem_bytes_value"
RESTARTS = "pod_restarts_value"
REPLICAS_METRIC = "replica_count_value"


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in time order within each experiment (needed by diffs and fills); index unchanged."""
    keys = [c for c in (SERVICE, EXPERIMENT_ID, TIMESTAMP, STEP) if c in frame.columns]
    return frame.sort_values(keys, kind="stable")


def restart_increments(frame: pd.DataFrame) -> pd.Series:
    """Restarts per step from the cumulative ``pod_restarts_value`` (a drop is a counter reset)."""
    ordered = _ordered(frame)
    counter = ordered[RESTARTS]
    delta = counter.groupby(ordered[EXPERIMENT_ID], sort=False).diff()
    increments = delta.where(delta >= 0, counter)  # after a reset the counter counts from 0 again
    increments = increments.where(delta.notna(), 0.0).fillna(0.0)
    return increments.reindex(frame.index)


def add_derived_metrics(
    frame: pd.DataFrame,
    *,
    node_cpu_cores: float = DEFAULT_NODE_CPU_CORES,
    node_memory_bytes: float = DEFAULT_NODE_MEMORY_BYTES,
) -> pd.DataFrame:
    """Fill the 6 derived metrics from the raw metrics where they are absent or NaN (never overwrite)."""
    out = frame.copy()
    for column in METRIC_COLUMNS:
        if column not in out.columns:
            out[column] = np.nan
    ordered = _ordered(out)
    groups = ordered[EXPERIMENT_ID]
    rx = ordered["net_rx_bytes_value"] / NETWORK_RATE_SCALE
    rate = rx.groupby(groups, sort=False).diff()
    first = ordered.groupby(EXPERIMENT_ID, sort=False).cumcount() == 0
    rate = rate.mask(first, 0.0).fillna(0.0).where(rx.notna())
    cpu_max = ordered[CPU].groupby(groups, sort=False).transform("max")
    mem_max = ordered[MEMORY].groupby(groups, sort=False).transform("max")
    cpu_share = (ordered[CPU] / cpu_max.where(cpu_max > 0)).where(cpu_max != 0, 0.0)
    mem_share = (ordered[MEMORY] / mem_max.where(mem_max > 0)).where(mem_max != 0, 0.0)
    computed = {
        "processing_intensity_value": ordered[CPU],
        "network_activity_rate_value": rate,
        "resource_pressure_value": 0.5 * cpu_share + 0.5 * mem_share,
        "service_stability_value": 1.0 / (1.0 + restart_increments(ordered)).where(ordered[RESTARTS].notna()),
        "node_cpu_util_value": (100.0 * ordered[CPU] / node_cpu_cores).clip(0.0, 100.0),
        "node_mem_util_value": (100.0 * ordered[MEMORY] / node_memory_bytes).clip(0.0, 100.0),
    }
    for column, values in computed.items():
        out[column] = out[column].astype("float64").fillna(values.reindex(out.index))
    return out


def mark_collection_gaps(frame: pd.DataFrame) -> pd.DataFrame:
    """Zero memory (and the network zeros of the same scrape, or of a whole experiment) become NaN."""
    out = frame.copy()
    gap = (out[MEMORY] == 0).to_numpy()
    for column in NETWORK_METRICS:
        values = out[column]
        zero = values.eq(0)
        all_zero = (zero | values.isna()).groupby(out[EXPERIMENT_ID]).transform("all") & zero
        out.loc[(zero & gap) | all_zero, column] = np.nan
    out.loc[gap, MEMORY] = np.nan
    out.loc[gap, "resource_pressure_value"] = np.nan
    return out


def drop_implausible(frame: pd.DataFrame) -> pd.DataFrame:
    """Values no measurement can take become NaN (inf, negative usage, out-of-range ratios)."""
    out = frame.copy()
    for column in METRIC_COLUMNS:
        out[column] = out[column].astype("float64").replace([np.inf, -np.inf], np.nan)
    for column in NON_NEGATIVE_METRICS:
        out[column] = out[column].mask(out[column] < 0)
    for column in PERCENT_METRICS:
        out[column] = out[column].where(out[column].between(0.0, 100.0) | out[column].isna())
    stability = out["service_stability_value"]
    out["service_stability_value"] = stability.mask((stability <= 0) | (stability > 1))
    pressure = out["resource_pressure_value"]
    out["resource_pressure_value"] = pressure.mask((pressure < 0) | (pressure > 1))
    return out


def outlier_bounds(frame: pd.DataFrame, factor: float = OUTLIER_IQR_FACTOR) -> pd.DataFrame:
    """Per service and usage metric, the upper bound ``Q3 + factor * max(IQR, |median|)`` (NaN: no bound)."""
    grouped = frame.groupby(SERVICE)[list(CLIPPED_METRICS)]
    q1 = grouped.quantile(0.25)
    q3 = grouped.quantile(0.75)
    median = grouped.median()
    spread = np.maximum(q3 - q1, median.abs())
    bounds = q3 + factor * spread
    return bounds.where(grouped.count() >= MIN_ROWS_FOR_BOUNDS)


def clip_outliers(frame: pd.DataFrame, factor: float = OUTLIER_IQR_FACTOR) -> pd.DataFrame:
    """Clip usage metrics to their service's `outlier_bounds`; bursts inside the bound are untouched."""
    out = frame.copy()
    bounds = outlier_bounds(out, factor)
    for column in CLIPPED_METRICS:
        upper = out[SERVICE].map(bounds[column])
        out[column] = out[column].where(~(out[column] > upper), upper)
    return out


def _fill_counters_and_replicas(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    ordered = _ordered(out)
    groups = ordered.groupby(EXPERIMENT_ID, sort=False)
    restarts = groups[RESTARTS].ffill()
    restarts = restarts.fillna(restarts.groupby(ordered[EXPERIMENT_ID], sort=False).bfill()).fillna(0.0)
    replicas = groups[REPLICAS_METRIC].ffill()
    replicas = replicas.fillna(replicas.groupby(ordered[EXPERIMENT_ID], sort=False).bfill())
    replicas = replicas.fillna(ordered[REPLICA_COUNT].astype("float64"))
    out[RESTARTS] = restarts.reindex(out.index)
    out[REPLICAS_METRIC] = replicas.reindex(out.index)
    return out


def impute_medians(frame: pd.DataFrame) -> pd.DataFrame:
    """NaN in measured metrics -> the experiment's median, else the service's median."""
    out = frame.copy()
    columns = list(MEDIAN_IMPUTED_METRICS)
    per_experiment = out.groupby(EXPERIMENT_ID)[columns].transform("median")
    per_service = out.groupby(SERVICE)[columns].transform("median")
    out[columns] = out[columns].fillna(per_experiment).fillna(per_service)
    return out


def clean_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Gaps, implausible values, outlier bounds, counters, median imputation, then derived metrics."""
    if frame.empty:
        return frame.copy()
    out = mark_collection_gaps(drop_implausible(frame))
    out = clip_outliers(out)
    out = _fill_counters_and_replicas(out)
    out = impute_medians(out)
    return add_derived_metrics(out)
