"""What a bundle keeps of its data beside the models: the stored history tail (serving's default
history, ``history_tail.json``), which targets it was trained without and what their columns are filled
with, the check of a history far beyond the training rows, and the peak-quantile candidate's file
(issue 16), read only when it was fitted on the same data as the ensemble."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mora_platform.data.schema import EXPERIMENT_ID, REPLICA_COUNT, SCENARIO, STEP, TIMESTAMP
from mora_platform.features.targets import (
    FEATURE_COLUMNS,
    TARGET_COLUMNS,
    TARGET_DATA_COLUMNS,
    TARGET_SOURCES,
)
from mora_platform.models.base import ModelLoadError, read_json, write_json
from mora_platform.models.peak import PEAK_FILE, PeakQuantileModel
from mora_platform.recommend.types import TARGETS

HISTORY_FILE = "history_tail.json"
#: the columns of the stored history tail
HISTORY_COLUMNS: tuple[str, ...] = (
    TIMESTAMP,
    EXPERIMENT_ID,
    SCENARIO,
    REPLICA_COUNT,
    STEP,
    *FEATURE_COLUMNS,
    *TARGET_COLUMNS.values(),
)

#: What an unavailable target's collected column is filled with before ``prepare_frame``: a harmless
#: constant the models can be fitted on (no usage; one pod, so per-pod figures are the totals). The
#: numbers the models make of it are never served: the answering layer returns NaN for that target.
UNAVAILABLE_FILL: dict[str, float] = {"cpu": 0.0, "memory": 0.0, "replicas": 1.0}


#: A history whose per-pod usage exceeds this multiple of the most the stored training rows show is far
#: beyond anything the model saw (a unit mistake, a metric at its maximum): the answer is flagged.
IMPLAUSIBLE_USAGE_FACTOR = 100.0


def history_beyond_training(trained: pd.DataFrame, history: pd.DataFrame) -> list[str]:
    """Notes for each of CPU and memory whose per-pod usage in ``history`` (a prepared frame) exceeds
    ``IMPLAUSIBLE_USAGE_FACTOR`` times the most that ``trained`` (the stored training rows) shows."""
    notes = []
    for target in ("cpu", "memory"):
        column, factor = TARGET_COLUMNS[target], TARGET_SOURCES[target][1]
        if column not in trained.columns or column not in history.columns or not factor:
            continue
        seen = float(pd.to_numeric(trained[column], errors="coerce").max()) / factor
        sent = float(pd.to_numeric(history[column], errors="coerce").max()) / factor
        if (
            math.isfinite(seen)
            and seen > 0
            and math.isfinite(sent)
            and sent > IMPLAUSIBLE_USAGE_FACTOR * seen
        ):
            notes.append(
                f"history {target} per pod reaches {sent:.4g}, {sent / seen:,.0f}x the most the training rows "
                f"show ({seen:.4g}): an answer this far beyond the data is not a measurement (check the units)"
            )
    return notes


def target_availability(frame: pd.DataFrame) -> dict[str, str]:
    """Target -> reason, for each target whose collected column (``TARGET_DATA_COLUMNS``) is absent
    or holds no numeric value in ``frame`` (e.g. no replica metric without kube-state-metrics)."""
    unavailable: dict[str, str] = {}
    for target in TARGETS:
        column = TARGET_DATA_COLUMNS[target]
        if column not in frame.columns:
            unavailable[target] = f"no data: column {column!r} is missing"
        elif pd.to_numeric(frame[column], errors="coerce").isna().all():
            unavailable[target] = f"no data: column {column!r} has no numeric values (all NaN)"
    return unavailable


def fill_unavailable(frame: pd.DataFrame, unavailable: Collection[str]) -> pd.DataFrame:
    """``frame`` with each unavailable target's collected column set to ``UNAVAILABLE_FILL`` (a copy;
    ``frame`` itself when nothing is unavailable)."""
    if not unavailable:
        return frame
    frame = frame.copy()
    for target in unavailable:
        frame[TARGET_DATA_COLUMNS[target]] = UNAVAILABLE_FILL[target]
    return frame


def unavailable_from(meta: Any) -> dict[str, str]:
    """``config.json``'s ``unavailable_targets`` (absent in older bundles: none)."""
    raw = meta.get("unavailable_targets") or {}
    if not isinstance(raw, dict) or any(t not in TARGETS for t in raw):
        raise ValueError(f"unavailable_targets must map targets {list(TARGETS)} to reasons, got {raw!r}")
    return {str(t): str(reason) for t, reason in raw.items()}


def history_tail(prepared: pd.DataFrame, seq_len: int) -> pd.DataFrame:
    """The last ``seq_len`` rows of the latest experiment, in ``HISTORY_COLUMNS``."""
    latest = prepared[EXPERIMENT_ID].iloc[-1]
    tail = prepared[prepared[EXPERIMENT_ID] == latest].tail(seq_len)
    return tail[list(HISTORY_COLUMNS)].reset_index(drop=True)


def write_history_tail(directory: Path, prepared: pd.DataFrame, seq_len: int) -> str:
    """Store ``history_tail`` (serving's default history) as ``history_tail.json``."""
    tail = history_tail(prepared, seq_len)
    data: dict[str, list[Any]] = {}
    for column in HISTORY_COLUMNS:
        if column == TIMESTAMP:
            data[column] = [ts.isoformat() for ts in tail[column]]
        elif column in (EXPERIMENT_ID, SCENARIO):
            data[column] = [str(v) for v in tail[column]]
        else:
            data[column] = [float(v) for v in tail[column]]
    return write_json(directory / HISTORY_FILE, {"format": 1, "columns": data})


def read_history_tail(directory: Path) -> pd.DataFrame:
    raw = read_json(directory / HISTORY_FILE)
    try:
        columns = raw["columns"]
        frame = pd.DataFrame({c: columns[c] for c in HISTORY_COLUMNS})
        frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{HISTORY_FILE}: malformed ({exc})") from exc
    if frame.empty:
        raise ModelLoadError(f"{HISTORY_FILE}: no rows")
    return frame


# --- issue 16: the peak-quantile candidate's file -------------------------------------------------
def read_peak_candidate(directory: Path, metrics: Mapping[str, Any]) -> PeakQuantileModel | None:
    """``peak_quantile.json`` if the bundle has one fitted on the same data as its ensemble (its
    ``data_end`` and ``data_rows`` match ``metrics.json``'s data window); a file left from an earlier
    training is ignored. ``ModelLoadError`` if the file cannot be parsed."""
    if not (directory / PEAK_FILE).is_file():
        return None
    model = PeakQuantileModel.load(directory)
    window = metrics.get("data_window") or {}
    end, rows = window.get("end"), window.get("rows")
    if end is None or model.data_end is None or pd.Timestamp(end) != model.data_end:
        return None
    if rows is not None and int(rows) != model.data_rows:
        return None
    return model


# --- end issue 16 ---
