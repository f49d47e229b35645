"""Loaders: experiment CSVs, single CSV / Parquet files and in-memory frames into the canonical frame.

Every source is validated on its own (`validation.validate_table`); a bad file is reported and skipped,
a bad experiment inside a good file is reported and dropped, and the rest of the load goes on.

The canonical frame: `UNIFIED_COLUMNS` + ``step`` (+ any extra columns, kept as read), ``timestamp``
tz-aware UTC, ``experiment_id`` / ``service`` / ``scenario`` str, ``replica_count`` int, ``load_users``
and the 12 metrics float64, sorted by (service, experiment_id, timestamp), RangeIndex.

Relative labels ``t_N`` become ``step = N`` and ``timestamp = 2026-01-01T00:00Z + ordinal * 1 day +
N * relative_step_seconds``, where ``ordinal`` is the position of the experiment among the service's
relative experiments sorted by ``experiment_id``. (Should an experiment ever be longer than a day at
that step, the spacing grows to whole days that fit the longest one, so experiments never overlap.)
Optional context columns get defaults: ``scenario`` "unknown", ``replica_count`` from
``replica_count_value`` (else 1), ``load_users`` NaN.

Limits (`LoadLimits`, asked for by ``mora data import``; ``DEFAULT_LIMITS`` are its defaults):
before any file is parsed, every file is checked against a
cap on its size, its number of columns and its number of rows, and the whole load is refused with
`LoadLimitError` naming the file and the count when one is over. The check streams: the size comes
from the file system, a CSV's columns from its header line and its rows from its line count (an
upper bound: a quoted newline counts), both read in fixed-size chunks; a Parquet file's from its
footer (whose own size is capped). So a hostile file (a million columns, a billion rows) is refused
in a fraction of a second with bounded memory instead of being handed to the CSV parser.
``check_service_names`` (what ``mora data import`` asks for) refuses, with `InvalidNameError` naming
the file and the value, a ``service`` that is not a Kubernetes-style name: it becomes a partition
of the stored dataset (`validation.kubernetes_name_problem`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mora_platform.data.issues import ERROR, INFO, DataIssue
from mora_platform.data.schema import (
    DATASET_METADATA_FILE,
    DEFAULT_RELATIVE_STEP_SECONDS,
    EXPERIMENT_ID,
    LOAD_USERS,
    METRIC_COLUMNS,
    REPLICA_COUNT,
    SCENARIO,
    SERVICE,
    STEP,
    TIMESTAMP,
    UNIFIED_COLUMNS,
    USAGE_SCOPE,
    USAGE_SCOPES,
)
from mora_platform.data.validation import (
    InvalidNameError,
    ValidatedTable,
    check_kubernetes_name,
    validate_rows,
    validate_table,
)

__all__ = [
    "ERROR",
    "INFO",
    "DataIssue",
    "DataLoadError",
    "InvalidNameError",
    "LoadLimitError",
    "LoadLimits",
    "LoadResult",
    "load_frame",
    "load_path",
    "load_rows",
]

RELATIVE_EPOCH = pd.Timestamp("2026-01-01T00:00:00Z")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
UNKNOWN_SCENARIO = "unknown"
_SECONDS_PER_DAY = 86_400
_LINE_NUMBER = re.compile(r"line (\d+)")


class DataLoadError(ValueError):
    """The path itself cannot be loaded (does not exist, or holds no CSV / Parquet file)."""


class LoadLimitError(DataLoadError):
    """A file is over one of the `LoadLimits`; ``limit`` says which ("bytes", "columns" or "rows")."""

    def __init__(self, message: str, *, source: str, limit: str, count: int) -> None:
        super().__init__(message)
        self.source = source
        self.limit = limit
        self.count = count


MIB = 2**20
DEFAULT_MAX_FILE_MIB = 256
DEFAULT_MAX_COLUMNS = 1_000
DEFAULT_MAX_ROWS = 5_000_000
PARQUET_FOOTER_MAX_BYTES = 16 * MIB  # a Parquet file's metadata (its schema and row groups)
_CHUNK_BYTES = MIB


@dataclass(frozen=True)
class LoadLimits:
    """Caps per file, checked before it is parsed: size in bytes, columns, rows (data rows)."""

    max_file_bytes: int = DEFAULT_MAX_FILE_MIB * MIB
    max_columns: int = DEFAULT_MAX_COLUMNS
    max_rows: int = DEFAULT_MAX_ROWS

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_columns", "max_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LoadLimits.{name} must be at least 1, got {getattr(self, name)!r}")


DEFAULT_LIMITS = LoadLimits()


@dataclass
class LoadResult:
    """The canonical frame plus what went wrong; ``loaded`` / ``skipped`` list source names."""

    frame: pd.DataFrame
    issues: list[DataIssue]
    loaded: list[str]
    skipped: list[str]
    skipped_experiments: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[DataIssue]:
        """Issues that caused data to be skipped."""
        return [issue for issue in self.issues if issue.is_error]


def empty_frame() -> pd.DataFrame:
    """A zero-row frame with the canonical columns and dtypes."""
    frame = pd.DataFrame({column: pd.Series(dtype="float64") for column in (*UNIFIED_COLUMNS, STEP)})
    frame[TIMESTAMP] = pd.Series(dtype="datetime64[ns, UTC]")
    for column in (EXPERIMENT_ID, SERVICE, SCENARIO):
        frame[column] = pd.Series(dtype=str)
    frame[REPLICA_COUNT] = pd.Series(dtype="int64")
    frame[STEP] = pd.Series(dtype="int64")
    return frame


def _read_csv(path: Path, source: str) -> tuple[pd.DataFrame | None, DataIssue | None]:
    try:
        # Types are inferred: a numeric column with a bad cell stays text and is reported by validation.
        table = pd.read_csv(path, encoding="utf-8", skipinitialspace=True, low_memory=False)
    except pd.errors.EmptyDataError:
        return None, DataIssue(source, "empty file: no header and no data")
    except UnicodeDecodeError as error:
        return None, DataIssue(source, f"not UTF-8 text (garbled or binary file, byte {error.start})")
    except pd.errors.ParserError as error:
        text = str(error).strip()
        line = _LINE_NUMBER.search(text)
        row = int(line.group(1)) - 1 if line else None  # file line 1 is the header
        return None, DataIssue(source, f"malformed CSV: {text.splitlines()[-1]}", row=row)
    except OSError as error:
        return None, DataIssue(source, f"cannot read file: {error.strerror or error}")
    return table, None


def _read_parquet(path: Path, source: str) -> tuple[pd.DataFrame | None, DataIssue | None]:
    try:
        return pd.read_parquet(path), None
    except Exception as error:  # pyarrow raises several unrelated types for a corrupt file
        return None, DataIssue(source, f"unreadable Parquet file: {type(error).__name__}: {error}")


def _read_source(path: Path, source: str) -> tuple[pd.DataFrame | None, DataIssue | None]:
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path, source)
    return _read_csv(path, source)


def _is_data_file(path: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return not hidden and path.suffix.lower() in CSV_SUFFIXES + PARQUET_SUFFIXES and path.is_file()


def _discover(path: Path) -> list[tuple[Path, str]]:
    if not path.exists():
        raise DataLoadError(f"{path}: no such file or directory")
    if path.is_file():
        return [(path, path.name)]
    files = sorted(p for p in path.rglob("*") if _is_data_file(p, path))
    if not files:
        raise DataLoadError(f"{path}: no CSV or Parquet files found")
    return [(p, p.relative_to(path).as_posix()) for p in files]


def _chunks(handle: object, first: bytes = b"") -> Iterator[bytes]:
    if first:
        yield first
    while chunk := handle.read(_CHUNK_BYTES):  # type: ignore[attr-defined]
        yield chunk


def _line_end(segment: bytes) -> int:
    ends = [i for i in (segment.find(b"\n"), segment.find(b"\r")) if i >= 0]
    return min(ends) if ends else -1


def _header_columns(chunks: Iterator[bytes]) -> tuple[int, bytes, bool]:
    """Columns of a CSV header line (commas outside double quotes, + 1), read chunk by chunk; returns
    the count, the rest of the chunk the header ended in, and whether the header line ended."""
    commas, quoted = 0, False
    for chunk in chunks:
        position = 0
        segments = chunk.split(b'"')  # a quote toggles the state: every other segment is outside
        for k, segment in enumerate(segments):
            inside = quoted != (k % 2 == 1)
            if not inside:
                end = _line_end(segment)
                if end >= 0:
                    return commas + segment.count(b",", 0, end) + 1, chunk[position + end :], True
                commas += segment.count(b",")
            position += len(segment) + 1
        quoted = quoted != ((len(segments) - 1) % 2 == 1)
    return commas + 1, b"", False


def _check_csv(path: Path, source: str, limits: LoadLimits) -> None:
    """Columns from the header line, rows from the line count: streamed, stopping at the first cap."""
    with path.open("rb") as handle:
        chunks = _chunks(handle)
        columns, rest, has_rows = _header_columns(chunks)
        if columns > limits.max_columns:
            raise LoadLimitError(
                f"{source}: {columns:,} columns in the header, more than the limit of {limits.max_columns:,}",
                source=source,
                limit="columns",
                count=columns,
            )
        if not has_rows:
            return
        newlines = carriage_returns = 0
        last = b""
        for chunk in _chunks(handle, rest):  # the file's size is capped: so is this loop's time
            newlines += chunk.count(b"\n")
            carriage_returns += chunk.count(b"\r")
            last = chunk
        # a line per row after the header's; old Mac files end lines with a lone CR
        lines = (newlines or carriage_returns) + (0 if last.endswith((b"\n", b"\r")) else 1)
        rows = lines - 1
        if rows > limits.max_rows:
            raise LoadLimitError(
                f"{source}: {rows:,} rows (lines after the header), more than the limit of {limits.max_rows:,}",
                source=source,
                limit="rows",
                count=rows,
            )


def _check_parquet(path: Path, source: str, limits: LoadLimits) -> None:
    """Columns and rows from the footer, whose size is read (and capped) first; an unreadable file is
    left to `_read_parquet` to report."""
    import pyarrow.parquet as pq

    size = path.stat().st_size
    if size >= 12:
        with path.open("rb") as handle:
            handle.seek(size - 8)
            tail = handle.read(8)
        footer = int.from_bytes(tail[:4], "little")
        if tail[4:] == b"PAR1" and footer > PARQUET_FOOTER_MAX_BYTES:
            raise LoadLimitError(
                f"{source}: Parquet metadata of {footer / MIB:.1f} MiB, more than "
                f"{PARQUET_FOOTER_MAX_BYTES // MIB} MiB (far too many columns or row groups)",
                source=source,
                limit="columns",
                count=footer,
            )
    try:
        metadata = pq.read_metadata(path)
    except Exception:
        return
    columns = len(metadata.schema.to_arrow_schema().names)
    if columns > limits.max_columns:
        raise LoadLimitError(
            f"{source}: {columns:,} columns, more than the limit of {limits.max_columns:,}",
            source=source,
            limit="columns",
            count=columns,
        )
    if metadata.num_rows > limits.max_rows:
        raise LoadLimitError(
            f"{source}: {metadata.num_rows:,} rows, more than the limit of {limits.max_rows:,}",
            source=source,
            limit="rows",
            count=metadata.num_rows,
        )


def _size(count: int) -> str:
    return f"{count / MIB:,.1f} MiB" if count >= MIB else f"{count:,} bytes"


def check_limits(path: Path, source: str, limits: LoadLimits) -> None:
    """Refuse ``path`` with `LoadLimitError` if it is over ``limits`` (without parsing it)."""
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise LoadLimitError(
            f"{source}: {_size(size)}, more than the limit of {_size(limits.max_file_bytes)} per file",
            source=source,
            limit="bytes",
            count=size,
        )
    if path.suffix.lower() in PARQUET_SUFFIXES:
        _check_parquet(path, source, limits)
    else:
        _check_csv(path, source, limits)


def _apply_relative_clock(frame: pd.DataFrame, relative: pd.Series, step_seconds: int) -> pd.Series:
    """Wall time for rows with relative labels; other rows keep their parsed timestamps."""
    stamps = frame[TIMESTAMP].copy()
    if not relative.any():
        return stamps
    rows = frame.loc[relative, [SERVICE, EXPERIMENT_ID, STEP]]
    longest = float(rows[STEP].max() + 1) * step_seconds
    spacing_days = max(1, math.ceil(longest / _SECONDS_PER_DAY))
    experiments = rows[[SERVICE, EXPERIMENT_ID]].drop_duplicates().sort_values([SERVICE, EXPERIMENT_ID])
    experiments["ordinal"] = experiments.groupby(SERVICE).cumcount()
    ordinal = rows.merge(experiments, on=[SERVICE, EXPERIMENT_ID], how="left")["ordinal"].to_numpy()
    seconds = ordinal * spacing_days * _SECONDS_PER_DAY + rows[STEP].to_numpy() * step_seconds
    stamps.loc[relative] = RELATIVE_EPOCH + pd.to_timedelta(seconds, unit="s")
    return stamps


def _canonical(frame: pd.DataFrame, relative: pd.Series, step_seconds: int) -> pd.DataFrame:
    frame = frame.copy()
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True).astype("datetime64[ns, UTC]")
    if STEP in frame.columns:
        frame[STEP] = frame[STEP].astype("Int64")
    frame[TIMESTAMP] = _apply_relative_clock(frame, relative, step_seconds)
    if SCENARIO not in frame.columns:
        frame[SCENARIO] = UNKNOWN_SCENARIO
    frame[SCENARIO] = frame[SCENARIO].astype("string").str.strip().fillna(UNKNOWN_SCENARIO).astype(str)
    for column in METRIC_COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
        frame[column] = frame[column].astype("float64")
    if LOAD_USERS not in frame.columns:
        frame[LOAD_USERS] = np.nan
    frame[LOAD_USERS] = frame[LOAD_USERS].astype("float64")
    if REPLICA_COUNT not in frame.columns:
        frame[REPLICA_COUNT] = np.nan
    replicas = frame[REPLICA_COUNT].astype("float64")
    from_metric = frame.groupby(EXPERIMENT_ID)["replica_count_value"].transform(lambda s: s.ffill().bfill())
    replicas = replicas.fillna(from_metric).fillna(1.0)
    frame[REPLICA_COUNT] = np.rint(replicas).astype("int64")
    frame = frame.sort_values([SERVICE, EXPERIMENT_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
    rank = frame.groupby(EXPERIMENT_ID, sort=False).cumcount().to_numpy(dtype="float64")
    given = (
        frame[STEP].to_numpy(dtype="float64", na_value=np.nan)
        if STEP in frame.columns
        else np.full(len(frame), np.nan)
    )
    frame[STEP] = np.where(np.isnan(given), rank, given).astype("int64")
    extras = [c for c in frame.columns if c not in (*UNIFIED_COLUMNS, STEP)]
    return frame[[*UNIFIED_COLUMNS, STEP, *extras]]


def _merge_overlaps(
    combined: pd.DataFrame, sources: np.ndarray, merged: set[str], issues: list[DataIssue]
) -> pd.DataFrame:
    """Experiments with real timestamps spread over several files: keep the first row of each timestamp."""
    if not merged:
        return combined
    in_merged = combined[EXPERIMENT_ID].isin(merged).to_numpy()
    repeated = combined.duplicated([EXPERIMENT_ID, TIMESTAMP], keep="first").to_numpy() & in_merged
    for source in dict.fromkeys(sources[repeated]):
        count = int((repeated & (sources == source)).sum())
        issues.append(
            DataIssue(
                source,
                f"{count} row(s) repeat timestamps already loaded from another file; kept the first",
                column=TIMESTAMP,
                severity=INFO,
            )
        )
    combined = combined.loc[~repeated].copy()
    if STEP in combined.columns:
        combined.loc[combined[EXPERIMENT_ID].isin(merged), STEP] = np.nan  # renumbered in time order
    return combined


def _assemble(
    tables: list[tuple[str, ValidatedTable]],
    issues: list[DataIssue],
    step_seconds: int,
    clean: bool,
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Concatenate validated tables, then canonicalise.

    An experiment found in several sources is merged when all of them carry real timestamps (e.g. one
    export per day); with relative ``t_N`` labels the copies cannot be told apart, so the first wins.
    """
    parts: list[pd.DataFrame] = []
    flags: list[np.ndarray] = []
    part_sources: list[np.ndarray] = []
    loaded: list[str] = []
    skipped_experiments: list[str] = []
    owner: dict[str, tuple[str, bool]] = {}
    merged: set[str] = set()
    for source, table in tables:
        skipped_experiments.extend(f"{source}: {e}" for e in table.skipped_experiments)
        if table.frame is None:
            continue
        frame = table.frame
        clash = [e for e in frame[EXPERIMENT_ID].unique() if e in owner]
        conflicting = [e for e in clash if table.relative or owner[e][1]]
        merged.update(e for e in clash if e not in conflicting)
        for experiment in conflicting:
            issues.append(
                DataIssue(
                    source, f"experiment '{experiment}' already loaded from {owner[experiment][0]}; skipped"
                )
            )
            skipped_experiments.append(f"{source}: {experiment}")
        if conflicting:
            frame = frame.loc[~frame[EXPERIMENT_ID].isin(conflicting)]
        if frame.empty:
            continue
        for experiment in frame[EXPERIMENT_ID].unique():
            owner.setdefault(experiment, (source, table.relative))
        parts.append(frame)
        flags.append(np.full(len(frame), table.relative))
        part_sources.append(np.full(len(frame), source, dtype=object))
        loaded.append(source)
    if not parts:
        return empty_frame(), loaded, skipped_experiments
    combined = pd.concat(parts, ignore_index=True, sort=False)
    combined["__relative"] = np.concatenate(flags)
    combined = _merge_overlaps(combined, np.concatenate(part_sources), merged, issues)
    relative = combined.pop("__relative").astype(bool).reset_index(drop=True)
    frame = _canonical(combined.reset_index(drop=True), relative, step_seconds)
    if clean:
        from mora_platform.data.cleaning import clean_frame

        frame = clean_frame(frame)
    return frame, loaded, skipped_experiments


def load_path(
    path: str | Path,
    *,
    relative_step_seconds: int = DEFAULT_RELATIVE_STEP_SECONDS,
    clean: bool = True,
    limits: LoadLimits | None = None,
    check_service_names: bool = False,
    usage_scope: str | None = None,
) -> LoadResult:
    """Load a directory of CSV / Parquet files (searched recursively), one CSV or one Parquet file.

    ``usage_scope`` (``service`` or ``pod``, see ``schema.USAGE_SCOPE``) is set on rows that do not
    carry one; None takes it from the directory's ``mora-dataset.json`` when there is one.

    Every file is checked against ``limits`` (None, the default: no limits) before any is parsed
    (`LoadLimitError`); with ``check_service_names`` a ``service`` value that is not a
    Kubernetes-style name refuses the load (`InvalidNameError`, naming the file and the value).
    """
    if relative_step_seconds <= 0:
        raise ValueError(f"relative_step_seconds must be positive, got {relative_step_seconds}")
    files = _discover(Path(path))
    if limits is not None:
        for file_path, source in files:
            check_limits(file_path, source, limits)
    issues: list[DataIssue] = []
    tables: list[tuple[str, ValidatedTable]] = []
    skipped: list[str] = []
    for file_path, source in files:
        raw, problem = _read_source(file_path, source)
        if raw is None:
            issues.append(problem or DataIssue(source, "unreadable file"))
            skipped.append(source)
            continue
        table = validate_table(raw, source)
        if check_service_names and table.frame is not None:
            for service in table.frame[SERVICE].unique():
                check_kubernetes_name("service", service, where=source)
        issues.extend(table.issues)
        if table.frame is None:
            skipped.append(source)
        tables.append((source, table))
    frame, loaded, skipped_experiments = _assemble(tables, issues, relative_step_seconds, clean)
    skipped.extend(s for s, t in tables if t.frame is not None and s not in loaded)
    scope = usage_scope if usage_scope is not None else dataset_metadata(Path(path)).get(USAGE_SCOPE)
    if scope is not None:
        frame = with_usage_scope(frame, str(scope))
    return LoadResult(frame, issues, loaded, skipped, skipped_experiments)


def dataset_metadata(path: Path) -> dict[str, str]:
    """A directory's ``mora-dataset.json`` (what its files' figures mean), or ``{}`` without one."""
    import json

    meta_file = path / DATASET_METADATA_FILE
    if not path.is_dir() or not meta_file.is_file():
        return {}
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataLoadError(f"{meta_file}: not valid JSON ({error})") from error
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise DataLoadError(f'{meta_file}: expected a JSON object of strings, e.g. {{"usage_scope": "pod"}}')
    unknown = sorted(set(meta) - {USAGE_SCOPE, "note"})
    if unknown:
        raise DataLoadError(f"{meta_file}: unknown key(s) {', '.join(unknown)}; known: {USAGE_SCOPE}, note")
    return {k: v for k, v in meta.items() if k == USAGE_SCOPE}


def with_usage_scope(frame: pd.DataFrame, scope: str) -> pd.DataFrame:
    """``frame`` with ``usage_scope`` set to ``scope`` where a row has none (``service`` or ``pod``)."""
    if scope not in USAGE_SCOPES:
        raise DataLoadError(f"usage_scope must be one of {', '.join(USAGE_SCOPES)}, got {scope!r}")
    out = frame.copy()
    if USAGE_SCOPE in out.columns:
        out[USAGE_SCOPE] = out[USAGE_SCOPE].where(out[USAGE_SCOPE].notna(), scope).astype(str)
    else:
        out[USAGE_SCOPE] = scope
    return out


def load_frame(
    frame: pd.DataFrame,
    source: str = "<frame>",
    clean: bool = True,
    *,
    relative_step_seconds: int = DEFAULT_RELATIVE_STEP_SECONDS,
) -> LoadResult:
    """Validate and canonicalise an in-memory frame exactly as a file would be."""
    return _load_validated(validate_table(frame, source), source, clean, relative_step_seconds)


def load_rows(
    frame: pd.DataFrame,
    source: str = "<rows>",
    clean: bool = True,
    *,
    relative_step_seconds: int = DEFAULT_RELATIVE_STEP_SECONDS,
) -> LoadResult:
    """`load_frame` for rows that need not carry every metric column (a request's history): validated by
    `validation.validate_rows`, then canonicalised (``t_N`` on the relative clock) and cleaned the same way."""
    return _load_validated(validate_rows(frame, source), source, clean, relative_step_seconds)


def _load_validated(
    table: ValidatedTable, source: str, clean: bool, relative_step_seconds: int
) -> LoadResult:
    issues = list(table.issues)
    result_frame, loaded, skipped_experiments = _assemble(
        [(source, table)], issues, relative_step_seconds, clean
    )
    skipped = [] if loaded else [source]
    return LoadResult(result_frame, issues, loaded, skipped, skipped_experiments)
