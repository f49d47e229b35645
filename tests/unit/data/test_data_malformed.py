"""Table-driven: many malformed files in one directory with two valid ones; each bad file gets its own issue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mora_platform.data.issues import INFO
from mora_platform.data.loaders import LoadResult, load_path
from mora_platform.data.schema import UNIFIED_COLUMNS

Rows = list[dict[str, str]]


def make_rows(experiment: str, n: int = 6, service: str = "svc-a") -> Rows:
    """``n`` valid rows of one experiment with relative labels; network rate deliberately negative."""
    rows = []
    for i in range(n):
        rows.append(
            {
                "timestamp": f"t_{i}",
                "experiment_id": experiment,
                "service": service,
                "scenario": "browsing",
                "replica_count": "2",
                "load_users": "10",
                "cpu_cores_value": f"{0.01 + 0.001 * i:.4f}",
                "mem_bytes_value": f"{1e8 + 1e5 * i:.1f}",
                "net_rx_bytes_value": f"{10 + i:.1f}",
                "net_tx_bytes_value": f"{1e7:.1f}",
                "pod_restarts_value": "1",
                "replica_count_value": "2",
                "node_cpu_util_value": "12.5",
                "node_mem_util_value": "60.0",
                "network_activity_rate_value": "-0.002",
                "processing_intensity_value": "0.01",
                "service_stability_value": "1.0",
                "resource_pressure_value": "0.5",
            }
        )
    return rows


def to_csv(rows: Rows, columns: list[str] | None = None, delimiter: str = ",") -> str:
    columns = columns or list(UNIFIED_COLUMNS)
    lines = [delimiter.join(columns)]
    lines += [delimiter.join(row.get(c, "") for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def with_cell(experiment: str, row: int, column: str, value: str) -> str:
    """A valid experiment whose 1-based data ``row`` holds ``value`` in ``column``."""
    rows = make_rows(experiment)
    rows[row - 1][column] = value
    return to_csv(rows)


def without_column(experiment: str, column: str) -> str:
    return to_csv(make_rows(experiment), [c for c in UNIFIED_COLUMNS if c != column])


def all_empty(experiment: str, column: str) -> str:
    rows = make_rows(experiment)
    for row in rows:
        row[column] = ""
    return to_csv(rows)


def iso_with_bad_stamp(experiment: str) -> str:
    rows = make_rows(experiment)
    for i, row in enumerate(rows):
        row["timestamp"] = f"2026-03-01T10:0{i}:00Z"
    rows[2]["timestamp"] = "not-a-time"
    return to_csv(rows)


def ragged(experiment: str) -> str:
    lines = to_csv(make_rows(experiment)).splitlines()
    lines[3] += ",1,2,3"  # data row 3 has three fields too many
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    name: str
    content: Callable[[], str | bytes]
    expect: str  # a phrase of the issue message
    column: str | None = None
    row: int | None = None
    value: str | None = None


CASES: list[Case] = [
    Case(
        "missing_column.csv",
        lambda: without_column("e01", "cpu_cores_value"),
        "required column is missing",
        "cpu_cores_value",
    ),
    Case(
        "missing_experiment_id.csv",
        lambda: without_column("e02", "experiment_id"),
        "required column is missing",
        "experiment_id",
    ),
    Case(
        "non_numeric.csv",
        lambda: with_cell("e03", 3, "cpu_cores_value", "abc"),
        "non-numeric value",
        "cpu_cores_value",
        3,
        "abc",
    ),
    Case("empty.csv", lambda: "", "empty file"),
    Case("header_only.csv", lambda: to_csv([]), "no data rows"),
    Case("all_nan.csv", lambda: all_empty("e06", "mem_bytes_value"), "no values at all", "mem_bytes_value"),
    Case(
        "negative.csv",
        lambda: with_cell("e07", 2, "net_rx_bytes_value", "-5.0"),
        "negative value",
        "net_rx_bytes_value",
        2,
        "-5.0",
    ),
    Case(
        "duplicate_timestamp.csv",
        lambda: with_cell("e08", 4, "timestamp", "t_2"),
        "duplicate timestamp",
        "timestamp",
        4,
        "t_2",
    ),
    Case(
        "unparseable_timestamp.csv",
        lambda: iso_with_bad_stamp("e09"),
        "unparseable timestamp",
        "timestamp",
        3,
        "not-a-time",
    ),
    Case("garbled.csv", lambda: b"\xff\xfe\x00\x81garbage\x80\x00\x9f" * 20, "not UTF-8"),
    Case("wrong_delimiter.csv", lambda: to_csv(make_rows("e11"), delimiter=";"), "';'-delimited"),
    Case(
        "infinite.csv",
        lambda: with_cell("e12", 5, "mem_bytes_value", "inf"),
        "infinite value",
        "mem_bytes_value",
        5,
        "inf",
    ),
    Case("ragged.csv", lambda: ragged("e13"), "malformed CSV", None, 3),
    Case("missing_service.csv", lambda: with_cell("e14", 2, "service", ""), "missing value", "service", 2),
    Case(
        "missing_timestamp.csv",
        lambda: with_cell("e15", 4, "timestamp", ""),
        "missing timestamp",
        "timestamp",
        4,
    ),
    Case(
        "negative_restarts.csv",
        lambda: with_cell("e16", 6, "pod_restarts_value", "-1"),
        "negative value",
        "pod_restarts_value",
        6,
        "-1",
    ),
    Case("corrupt.parquet", lambda: b"PAR1 this is not really parquet", "unreadable Parquet file"),
]

VALID_A_ROWS = 6
VALID_B_ROWS = 7


def valid_b() -> str:
    """Real timestamps (ISO), an extra column, and a whole experiment of zero network (a collection gap)."""
    rows = make_rows("good-b", n=VALID_B_ROWS)
    for i, row in enumerate(rows):
        row["timestamp"] = f"2026-02-01T00:0{i}:30Z"
        row["net_tx_bytes_value"] = "0.0"
        row["pod_name"] = f"pod-{i}"
    return to_csv(rows, [*UNIFIED_COLUMNS, "pod_name"])


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadResult:
    directory = tmp_path_factory.mktemp("malformed")
    for case in CASES:
        content = case.content()
        path = directory / case.name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    (directory / "valid_a.csv").write_text(to_csv(make_rows("good-a", n=VALID_A_ROWS)), encoding="utf-8")
    (directory / "valid_b.csv").write_text(valid_b(), encoding="utf-8")
    (directory / "notes.txt").write_text("not data, ignored\n", encoding="utf-8")
    return load_path(directory)


def test_at_least_twelve_malformed_cases() -> None:
    assert len(CASES) >= 12
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_bad_file_gets_one_clear_issue(loaded: LoadResult, case: Case) -> None:
    issues = [issue for issue in loaded.errors if issue.source == case.name]
    assert len(issues) == 1, [str(issue) for issue in issues]
    issue = issues[0]
    text = str(issue)
    assert case.name in text
    assert case.expect in text
    if case.column is not None:
        assert issue.column == case.column
        assert f"column '{case.column}'" in text
    if case.row is not None:
        assert issue.row == case.row
        assert f"row {case.row}" in text
    if case.value is not None:
        assert f"'{case.value}'" in text
    assert case.name in loaded.skipped
    assert case.name not in loaded.loaded


def test_valid_files_still_load(loaded: LoadResult) -> None:
    assert sorted(loaded.loaded) == ["valid_a.csv", "valid_b.csv"]
    frame = loaded.frame
    assert len(frame) == VALID_A_ROWS + VALID_B_ROWS
    assert sorted(frame["experiment_id"].unique()) == ["good-a", "good-b"]
    assert "pod_name" in frame.columns  # extra columns are kept
    assert (frame["network_activity_rate_value"] < 0).any()  # derived metrics may be negative
    assert frame["net_tx_bytes_value"].notna().all()


def test_only_the_bad_files_have_errors(loaded: LoadResult) -> None:
    assert {issue.source for issue in loaded.errors} == {case.name for case in CASES}
    assert len(loaded.errors) == len(CASES)


def test_whole_experiment_zero_network_is_informational(loaded: LoadResult) -> None:
    notes = [issue for issue in loaded.issues if issue.severity == INFO]
    assert len(notes) == 1
    assert notes[0].source == "valid_b.csv"
    assert notes[0].column == "net_tx_bytes_value"
    assert "collection gap" in str(notes[0])
    gap = loaded.frame.loc[loaded.frame["experiment_id"] == "good-b", "net_tx_bytes_value"]
    assert (gap > 0).all()  # treated as missing and imputed from the service, not kept as 0
