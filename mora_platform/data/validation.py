"""Validation of one input table (one file, or one in-memory frame) against the unified schema.

`validate_table` turns a raw table (strings from a CSV, or typed columns from Parquet / memory) into typed
columns and reports every problem as one `DataIssue` naming the source, column, first row and value
(further rows with the same problem are counted, not listed).

What is checked, and what happens:

- file-level (the whole source is skipped): no columns at all (empty file), header without data rows,
  a header that looks like another delimiter, missing required columns, missing ``experiment_id`` /
  ``service`` values (rows could not be attributed);
- experiment-level (that experiment is skipped, the rest of the source loads): non-numeric or infinite
  values in raw metrics and numeric context columns, negative usage (`NON_NEGATIVE_METRICS` only; derived
  metrics such as ``network_activity_rate_value`` may be negative), a raw metric that is NaN on every row
  of an experiment, missing / unparseable / duplicate timestamps;
- informational (loads unchanged; cleaning repairs it): a memory or network column that is 0.0 on every
  row of an experiment. That is a collection gap, not usage (see the Online Boutique README), so
  cleaning treats it as missing and imputes it.

Names that become storage partitions (a dataset's name, each ``service`` value) must be
Kubernetes-style names (`kubernetes_name_problem`: RFC 1123 subdomains, as Kubernetes names its
objects): lowercase letters, digits, ``-`` and ``.``, each dot-separated part starting and ending
with a letter or digit, at most 253 characters. So ``/``, ``..``, an empty name, spaces or ``=``
never reach a key; `check_kubernetes_name` raises `InvalidNameError` naming the offending value.

Timestamps: relative labels ``t_N`` (every value of the source matches) give ``step = N`` and no
wall time yet (the loader maps them to a synthetic clock); otherwise numbers are epoch seconds and
strings are ISO 8601 (naive times are taken as UTC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mora_platform.data.issues import ERROR, INFO, DataIssue
from mora_platform.data.schema import (
    DERIVED_METRICS,
    EXPERIMENT_ID,
    LOAD_USERS,
    NON_NEGATIVE_METRICS,
    RAW_METRICS,
    REPLICA_COUNT,
    SERVICE,
    STEP,
    TIMESTAMP,
)

REQUIRED_COLUMNS: tuple[str, ...] = (TIMESTAMP, EXPERIMENT_ID, SERVICE, *RAW_METRICS)
# Metrics whose all-zero experiments are collection gaps rather than usage.
GAP_ZERO_METRICS: tuple[str, ...] = ("mem_bytes_value", "net_rx_bytes_value", "net_tx_bytes_value")
RELATIVE_LABEL = re.compile(r"^\s*t_(\d+)\s*$")
_OTHER_DELIMITERS = (";", "\t", "|")


KUBERNETES_NAME_MAX_LENGTH = 253
_KUBERNETES_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_KUBERNETES_NAME = re.compile(rf"^{_KUBERNETES_LABEL}(?:\.{_KUBERNETES_LABEL})*$")


class InvalidNameError(ValueError):
    """A dataset or service name that cannot be a storage partition (see `kubernetes_name_problem`)."""


def kubernetes_name_problem(value: object) -> str | None:
    """Why ``value`` is not a Kubernetes-style name (RFC 1123 subdomain), or None when it is one."""
    if not isinstance(value, str):
        return f"not a string ({type(value).__name__})"
    if not value:
        return "empty"
    if len(value) > KUBERNETES_NAME_MAX_LENGTH:
        return f"{len(value)} characters, more than {KUBERNETES_NAME_MAX_LENGTH}"
    if _KUBERNETES_NAME.match(value):
        return None
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if ".." in value or value.startswith(".") or value.endswith("."):
        return "empty part between dots (e.g. '..')"
    if value != value.lower():
        return "upper-case letters"
    if any(len(part) > 63 for part in value.split(".")):
        return "a dot-separated part is longer than 63 characters"
    return "only lowercase letters, digits, '-' and '.' allowed, starting and ending with a letter or digit"


def check_kubernetes_name(kind: str, value: object, where: str | None = None) -> str:
    """``value`` if it is a Kubernetes-style name, else `InvalidNameError` naming ``kind``, the value
    and (if given) where it came from, e.g. the file."""
    problem = kubernetes_name_problem(value)
    if problem is None:
        assert isinstance(value, str)
        return value
    prefix = f"{where}: " if where else ""
    raise InvalidNameError(
        f"{prefix}invalid {kind} name {value!r}: {problem} (use a Kubernetes-style name: lowercase "
        "letters, digits, '-' and '.', starting and ending with a letter or digit)"
    )


@dataclass
class ValidatedTable:
    """Typed rows that passed validation (``frame`` is None when the whole source was rejected)."""

    frame: pd.DataFrame | None
    issues: list[DataIssue] = field(default_factory=list)
    skipped_experiments: list[str] = field(default_factory=list)
    relative: bool = False


class _Collector:
    """Collects issues for one source and remembers which experiments they condemn."""

    def __init__(self, source: str, experiments: pd.Series | None) -> None:
        self.source = source
        self.experiments = experiments
        self.issues: list[DataIssue] = []
        self.bad_experiments: set[str] = set()

    def file_issue(self, message: str, column: str | None = None, row: int | None = None) -> None:
        self.issues.append(DataIssue(self.source, message, column=column, row=row))

    def rows_issue(
        self, mask: np.ndarray, message: str, column: str | None, values: pd.Series, severity: str = ERROR
    ) -> None:
        """One issue for all rows in ``mask``: the first row and value shown, the rest counted."""
        positions = np.flatnonzero(mask)
        if positions.size == 0:
            return
        first = int(positions[0])
        value = values.iloc[first]
        self.issues.append(
            DataIssue(
                self.source,
                message,
                column=column,
                row=first + 1,
                value=None if _is_missing(value) else str(value).strip(),
                severity=severity,
                more_rows=int(positions.size - 1),
            )
        )
        if severity == ERROR and self.experiments is not None:
            self.bad_experiments.update(self.experiments.iloc[positions].astype(str))


def _is_missing(value: object) -> bool:
    try:
        return bool(pd.isna(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _blank(series: pd.Series) -> np.ndarray:
    """True where a cell is missing or only whitespace."""
    missing = np.asarray(pd.isna(series.to_numpy()), dtype=bool).copy()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        values = series.to_numpy(dtype=object)
        missing |= np.fromiter((isinstance(v, str) and not v.strip() for v in values), bool, len(values))
    return missing


def _text(series: pd.Series) -> pd.Series:
    """Cells as stripped ``str`` (identity columns), index kept."""
    values = [v.strip() if isinstance(v, str) else str(v) for v in series.to_numpy(dtype=object)]
    return pd.Series(values, index=series.index, dtype=str)


def _to_float(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Numeric values of a column and a mask of cells that held something non-numeric."""
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        return values, np.zeros(len(values), dtype=bool)
    text = series.astype("string").str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = (~_blank(series)) & np.isnan(values)
    return values, bad


def _check_columns(table: pd.DataFrame, out: _Collector) -> bool:
    if table.shape[1] == 0:
        out.file_issue("empty file: no header and no data")
        return False
    columns = [str(c) for c in table.columns]
    if len(columns) == 1:
        for delimiter in _OTHER_DELIMITERS:
            if delimiter in columns[0]:
                shown = "tab" if delimiter == "\t" else f"'{delimiter}'"
                out.file_issue(f"only one column found: the header looks {shown}-delimited, expected ','")
                return False
    if len(table) == 0:
        out.file_issue("no data rows (header only)")
        return False
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    for column in missing:
        out.file_issue("required column is missing", column=column)
    return not missing


def _check_identity(table: pd.DataFrame, out: _Collector) -> bool:
    ok = True
    for column in (EXPERIMENT_ID, SERVICE):
        blank = _blank(table[column])
        if blank.any():
            out.rows_issue(blank, "missing value: rows cannot be attributed", column, table[column])
            ok = False
    return ok


def _convert_numeric(table: pd.DataFrame, out: _Collector) -> dict[str, np.ndarray]:
    """Typed metric / numeric-context columns, reporting bad cells of the ones that must be clean."""
    converted: dict[str, np.ndarray] = {}
    checked = (*RAW_METRICS, REPLICA_COUNT, LOAD_USERS)
    for column in (*RAW_METRICS, *DERIVED_METRICS, REPLICA_COUNT, LOAD_USERS):
        if column not in table.columns:
            continue
        values, bad = _to_float(table[column])
        converted[column] = values
        if column not in checked:
            continue  # derived: recomputed by cleaning when unusable
        if bad.any():
            out.rows_issue(bad, "non-numeric value", column, table[column])
        infinite = np.isinf(values)
        if infinite.any():
            out.rows_issue(infinite, "infinite value", column, table[column])
            converted[column] = np.where(infinite, np.nan, values)
        if column in NON_NEGATIVE_METRICS or column == REPLICA_COUNT:
            negative = values < 0
            if negative.any():
                out.rows_issue(negative, "negative value (usage cannot be negative)", column, table[column])
    return converted


def _check_experiment_coverage(
    converted: dict[str, np.ndarray], experiments: pd.Series, out: _Collector
) -> None:
    """All-NaN raw metrics (an error) and all-zero gap metrics (informational) per experiment."""
    codes, names = pd.factorize(experiments, sort=True)
    values = np.column_stack([converted[column] for column in RAW_METRICS])
    present = np.zeros((len(names), len(RAW_METRICS)), dtype=bool)
    np.logical_or.at(present, codes, ~np.isnan(values))
    nonzero = np.zeros_like(present)
    np.logical_or.at(nonzero, codes, np.nan_to_num(values, nan=0.0) != 0)
    for j, column in enumerate(RAW_METRICS):
        for i in np.flatnonzero(~present[:, j]):
            experiment = str(names[i])
            if experiment in out.bad_experiments:
                continue  # already reported (e.g. every cell non-numeric)
            out.issues.append(
                DataIssue(out.source, f"no values at all in experiment '{experiment}'", column=column)
            )
            out.bad_experiments.add(experiment)
        if column not in GAP_ZERO_METRICS:
            continue
        for i in np.flatnonzero(present[:, j] & ~nonzero[:, j]):
            out.issues.append(
                DataIssue(
                    out.source,
                    f"0.0 on every row of experiment '{names[i]}': a collection gap, treated as missing",
                    column=column,
                    severity=INFO,
                )
            )


def _parse_timestamps(raw: pd.Series, out: _Collector) -> tuple[pd.Series, pd.Series | None, bool]:
    """(UTC timestamps or all-NaT, relative steps or None, relative?) with bad cells reported."""
    missing = _blank(raw)
    out.rows_issue(missing, "missing timestamp", TIMESTAMP, raw)
    if isinstance(raw.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(raw.dtype):
        stamps = pd.to_datetime(raw, utc=True)
        return stamps, None, False
    present = ~missing
    matches = [RELATIVE_LABEL.match(v) if isinstance(v, str) else None for v in raw.to_numpy(dtype=object)]
    if all(m is not None for m, p in zip(matches, present, strict=True) if p):
        steps = pd.Series(
            [int(m.group(1)) if m else np.nan for m in matches], index=raw.index, dtype="float64"
        )
        return pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]"), steps, True
    text = raw.astype("string").str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    numeric = numbers.notna().to_numpy()
    if numeric[present].all():
        stamps = pd.to_datetime(numbers, unit="s", utc=True, errors="coerce")
    else:
        stamps = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    unparseable = present & stamps.isna().to_numpy()
    out.rows_issue(unparseable, "unparseable timestamp", TIMESTAMP, raw)
    return stamps, None, False


def _check_duplicates(key: pd.Series, experiments: pd.Series, raw: pd.Series, out: _Collector) -> None:
    if not pd.Series(key.to_numpy()).duplicated().any():
        return  # fast path: no repeated key at all, whatever the experiment
    frame = pd.DataFrame({"e": experiments.to_numpy(), "k": key.to_numpy()})
    valid = frame["k"].notna().to_numpy()
    duplicated = frame.duplicated(["e", "k"], keep="first").to_numpy() & valid
    if not duplicated.any():
        return
    first_dup = int(np.flatnonzero(duplicated)[0])
    match = (frame["e"] == frame["e"].iloc[first_dup]) & (frame["k"] == frame["k"].iloc[first_dup])
    original = int(np.flatnonzero(match.to_numpy())[0]) + 1
    experiment = frame["e"].iloc[first_dup]
    out.rows_issue(
        duplicated,
        f"duplicate timestamp in experiment '{experiment}' (first seen at row {original})",
        TIMESTAMP,
        raw,
    )


def _step_column(table: pd.DataFrame) -> pd.Series | None:
    """An existing integer ``step`` column (e.g. from a canonical Parquet export), else None."""
    if STEP not in table.columns:
        return None
    values, bad = _to_float(table[STEP])
    if bad.any() or np.isnan(values).any() or not np.allclose(values, np.round(values)):
        return None
    return pd.Series(values.astype("int64"), index=table.index)


def validate_table(table: pd.DataFrame, source: str) -> ValidatedTable:
    """Check one table and return its typed rows minus the rejected experiments, with every issue."""
    table = table.rename(columns=lambda c: str(c).strip())
    out = _Collector(source, None)
    if not _check_columns(table, out) or not _check_identity(table, out):
        return ValidatedTable(None, out.issues)
    return _typed_rows(table, out, coverage=True)


def validate_rows(table: pd.DataFrame, source: str) -> ValidatedTable:
    """`validate_table`'s row rules alone, for rows that need not carry every column (a request's history).

    ``timestamp``, ``experiment_id`` and ``service`` must be columns; the metric and numeric context columns
    present are checked cell by cell, and the timestamps and identity as in `validate_table`. Left out: the
    required metric columns and the experiment-level "no values at all" check.
    """
    table = table.rename(columns=lambda c: str(c).strip())
    out = _Collector(source, None)
    missing = [c for c in (TIMESTAMP, EXPERIMENT_ID, SERVICE) if c not in table.columns]
    for column in missing:
        out.file_issue("required column is missing", column=column)
    if missing or len(table) == 0 or not _check_identity(table, out):
        return ValidatedTable(None, out.issues)
    return _typed_rows(table, out, coverage=False)


def _typed_rows(table: pd.DataFrame, out: _Collector, coverage: bool) -> ValidatedTable:
    """The typed rows of a table whose columns and identity passed, minus the rejected experiments."""
    table = table.reset_index(drop=True)
    experiments = _text(table[EXPERIMENT_ID])
    out.experiments = experiments
    converted = _convert_numeric(table, out)
    if coverage:
        _check_experiment_coverage(converted, experiments, out)
    stamps, steps, relative = _parse_timestamps(table[TIMESTAMP], out)
    key = steps if relative and steps is not None else stamps
    _check_duplicates(key, experiments, table[TIMESTAMP], out)

    columns: dict[str, object] = {c: table[c] for c in table.columns if c != STEP}
    columns.update(converted)
    columns[EXPERIMENT_ID] = experiments
    columns[SERVICE] = _text(table[SERVICE])
    columns[TIMESTAMP] = stamps
    existing_step = _step_column(table)
    if relative and steps is not None:
        columns[STEP] = steps
    elif existing_step is not None:
        columns[STEP] = existing_step
    typed = pd.DataFrame(columns, index=table.index)
    if out.bad_experiments:
        keep = ~experiments.isin(out.bad_experiments).to_numpy()
        typed = typed.loc[keep].reset_index(drop=True)
    skipped = sorted(out.bad_experiments)
    return ValidatedTable(typed if len(typed) else None, out.issues, skipped, relative)
