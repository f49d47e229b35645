"""`mora data import` is bounded and safe (issue 14 item 7): hostile files and bad names are refused
early, naming the file, and nothing is written."""

from __future__ import annotations

import re
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from mora_platform.cli import app
from mora_platform.cli import data as data_cli
from mora_platform.data import loaders
from mora_platform.data.loaders import (
    DEFAULT_LIMITS,
    InvalidNameError,
    LoadLimitError,
    LoadLimits,
    check_limits,
    load_path,
)
from mora_platform.data.schema import RAW_METRICS, UNIFIED_COLUMNS
from mora_platform.data.validation import check_kubernetes_name, kubernetes_name_problem
from mora_platform.storage.datasets import DatasetStore


class RecordingStore:
    """Stands in for the ObjectStore: remembers every key written."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def write_parquet(self, key: str, frame: pd.DataFrame) -> None:
        self.written.append(key)

    def uri(self, key: str) -> str:
        return f"s3://test/{key}"


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> RecordingStore:
    recording = RecordingStore()
    monkeypatch.setattr(data_cli, "_dataset_store", lambda: DatasetStore(recording))  # type: ignore[arg-type]
    return recording


def service_csv(path: Path, service: str, experiment: str | None = None, rows: int = 6) -> Path:
    """A valid unified-schema CSV of one service (relative t_N clock)."""
    columns = list(UNIFIED_COLUMNS)
    values: dict[str, Any] = {c: 1.0 for c in RAW_METRICS}
    lines = [",".join(columns)]
    for i in range(rows):
        row = {
            **values,
            "timestamp": f"t_{i}",
            "experiment_id": experiment or f"exp-{service}",
            "service": service,
            "scenario": "browsing",
            "replica_count": 1,
            "load_users": 10,
            "cpu_cores_value": 0.01 + 0.001 * i,
        }
        lines.append(",".join(str(row.get(c, "")) for c in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


def million_columns_csv(path: Path) -> Path:
    """~10 MB: a header of a million columns and one row (the drill's file)."""
    n = 1_000_000
    header = ",".join(f"c{i}" for i in range(n))
    path.write_text(header + "\n" + ",".join(["1"] * n) + "\n")
    return path


def flat(text: str) -> str:
    """Output without the console's line wrapping."""
    return " ".join(text.split())


def import_args(path: Path, *extra: str) -> list[str]:
    return ["data", "import", str(path), "--dataset", "shop", *extra]


# -- limits --------------------------------------------------------------------------------------


def test_a_million_columns_is_refused_fast_with_bounded_memory(tmp_path: Path) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    service_csv(directory / "a-good.csv", "web")
    million_columns_csv(directory / "b-wide.csv")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(LoadLimitError) as caught:
            load_path(directory, limits=DEFAULT_LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 64 * 2**20
    assert caught.value.source == "b-wide.csv" and caught.value.limit == "columns"
    assert "b-wide.csv: 1,000,000 columns" in str(caught.value) and "1,000" in str(caught.value)


def test_cli_refuses_the_million_columns_file_and_writes_nothing(
    tmp_path: Path, store: RecordingStore
) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    service_csv(directory / "a-good.csv", "web")
    million_columns_csv(directory / "b-wide.csv")
    started = time.perf_counter()
    result = CliRunner().invoke(app, import_args(directory))
    assert time.perf_counter() - started < 2.0
    assert result.exit_code == 2, result.output
    assert "b-wide.csv: 1,000,000 columns" in flat(result.output) and "--max-columns" in flat(result.output)
    assert "nothing written" in flat(result.output)
    assert store.written == []


def test_row_and_size_caps_are_configurable(tmp_path: Path, store: RecordingStore) -> None:
    source = service_csv(tmp_path / "web.csv", "web", rows=50)
    runner = CliRunner()
    rows = runner.invoke(app, import_args(source, "--max-rows", "49"))
    assert (
        rows.exit_code == 2 and "web.csv: 50 rows" in flat(rows.output) and "--max-rows" in flat(rows.output)
    )
    big = tmp_path / "big.csv"
    big.write_bytes(b"a,b\n" + b"1,2\n" * 300_000)  # 1.1 MiB
    size = runner.invoke(app, import_args(big, "--max-file-mib", "1"))
    assert (
        size.exit_code == 2
        and "big.csv: 1.1 MiB" in flat(size.output)
        and "--max-file-mib" in flat(size.output)
    )
    assert store.written == []
    ok = runner.invoke(app, import_args(source, "--max-rows", "50"))
    assert ok.exit_code == 0, ok.output
    assert store.written == ["datasets/shop/service=web/part-00000.parquet"]


def test_row_count_is_streamed_not_parsed(tmp_path: Path) -> None:
    tall = tmp_path / "tall.csv"
    tall.write_bytes(b"a,b\r\n" + b"1,2\r\n" * 2_000_000)  # CRLF, 10 MB
    started = time.perf_counter()
    with pytest.raises(LoadLimitError, match=re.escape("tall.csv: 2,000,000 rows")):
        check_limits(tall, "tall.csv", LoadLimits(max_rows=1_000_000))
    assert time.perf_counter() - started < 1.0
    check_limits(tall, "tall.csv", LoadLimits(max_rows=2_000_000))
    last = tmp_path / "no-final-newline.csv"
    last.write_bytes(b"a,b\n1,2\n3,4")
    with pytest.raises(LoadLimitError, match="2 rows"):
        check_limits(last, last.name, LoadLimits(max_rows=1))


def test_header_columns_count_quotes_and_small_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loaders, "_CHUNK_BYTES", 3)
    quoted = tmp_path / "q.csv"
    quoted.write_bytes(b'"a,b","c\nd",e\n1,2,3\n')  # three columns, one with a newline inside quotes
    check_limits(quoted, "q.csv", LoadLimits(max_columns=3))
    with pytest.raises(LoadLimitError, match=re.escape("q.csv: 3 columns")):
        check_limits(quoted, "q.csv", LoadLimits(max_columns=2))


def test_parquet_limits_come_from_the_footer(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    pd.DataFrame({f"c{i}": [1.0, 2.0, 3.0] for i in range(20)}).to_parquet(path)
    check_limits(path, path.name, LoadLimits(max_columns=20, max_rows=3))
    with pytest.raises(LoadLimitError, match=re.escape("wide.parquet: 20 columns")):
        check_limits(path, path.name, LoadLimits(max_columns=19))
    with pytest.raises(LoadLimitError, match=re.escape("wide.parquet: 3 rows")):
        check_limits(path, path.name, LoadLimits(max_rows=2))


def test_cli_defaults_are_the_loader_defaults() -> None:
    assert DEFAULT_LIMITS.max_file_bytes == data_cli.DEFAULT_MAX_FILE_MIB * 2**20
    assert DEFAULT_LIMITS.max_columns == data_cli.DEFAULT_MAX_COLUMNS
    assert DEFAULT_LIMITS.max_rows == data_cli.DEFAULT_MAX_ROWS
    help_text = CliRunner().invoke(app, ["data", "import", "--help"], terminal_width=200).output
    for flag in ("--max-file-mib", "--max-columns", "--max-rows"):
        assert flag in help_text


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "..", ".", "a..b", "Web", "web_1", " web", "-web", "web-", "a\\b", "x" * 254, "service=.."],
)
def test_bad_names_are_not_kubernetes_names(name: str) -> None:
    assert kubernetes_name_problem(name) is not None
    with pytest.raises(InvalidNameError, match="invalid service name"):
        check_kubernetes_name("service", name, where="f.csv")


@pytest.mark.parametrize("name", ["web", "svc-00", "cart.v2", "a", "0", "x" * 63])
def test_kubernetes_names_pass(name: str) -> None:
    assert kubernetes_name_problem(name) is None


def test_bad_service_names_refuse_the_import_before_anything_is_written(
    tmp_path: Path, store: RecordingStore
) -> None:
    directory = tmp_path / "in"
    directory.mkdir()
    for service in ("cart", "web", "api", "db", "frontend"):
        service_csv(directory / f"a-{service}.csv", service)
    service_csv(directory / "m-dots.csv", "..")
    service_csv(directory / "z-slash.csv", "a/b")
    result = CliRunner().invoke(app, import_args(directory))
    assert result.exit_code == 2, result.output
    assert "m-dots.csv" in flat(result.output) and "'..'" in flat(result.output)
    assert "nothing written" in flat(result.output)
    assert store.written == []
    (directory / "m-dots.csv").unlink()
    result = CliRunner().invoke(app, import_args(directory))
    assert result.exit_code == 2 and "z-slash.csv" in flat(result.output) and "'a/b'" in flat(result.output)
    assert store.written == []


def test_without_the_check_the_loader_still_loads_any_service(tmp_path: Path) -> None:
    source = service_csv(tmp_path / "odd.csv", "Odd_Name")
    assert load_path(source).frame["service"].unique().tolist() == ["Odd_Name"]
    with pytest.raises(InvalidNameError, match=re.escape("odd.csv: invalid service name 'Odd_Name'")):
        load_path(source, check_service_names=True)


@pytest.mark.parametrize("dataset", ["a/b", "..", "", "Shop", "shop_1"])
def test_bad_dataset_names_are_refused_first(
    tmp_path: Path, dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_store() -> None:
        raise AssertionError("the store must not be reached")

    monkeypatch.setattr(data_cli, "_dataset_store", no_store)
    source = service_csv(tmp_path / "web.csv", "web")
    result = CliRunner().invoke(app, ["data", "import", str(source), "--dataset", dataset])
    assert result.exit_code == 2
    assert "invalid dataset name" in flat(result.output)
