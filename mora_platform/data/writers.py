"""`write_frame`: one frame to one CSV or Parquet file, chosen by the file's suffix."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mora_platform.data.schema import TIMESTAMP

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")


def write_frame(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` (``.csv``: ISO 8601 UTC timestamps; ``.parquet`` / ``.pq``: typed)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        raise ValueError(f"{path}: unsupported suffix '{path.suffix}', use .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in PARQUET_SUFFIXES:
        frame.to_parquet(path, index=False)
        return path
    out = frame.copy()
    if TIMESTAMP in out.columns and isinstance(out[TIMESTAMP].dtype, pd.DatetimeTZDtype):
        out[TIMESTAMP] = out[TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.to_csv(path, index=False)
    return path
