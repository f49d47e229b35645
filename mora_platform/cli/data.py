"""`mora data import | list | synth`: datasets in object storage and the synthetic fleet.

`mora data import` checks before it writes anything: the dataset name and every service name must be
Kubernetes-style names (they become the stored partitions), and every file must be within the limits
(``--max-file-mib``, ``--max-columns``, ``--max-rows``, checked by streaming each file's size, header
and line count before any is parsed). A refusal names the file and the value or count, exits 2 and
writes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mora_platform.data.schema import DEFAULT_RELATIVE_STEP_SECONDS

# mora_platform.data.loaders' defaults (not imported: the CLI starts without pandas)
DEFAULT_MAX_FILE_MIB = 256
DEFAULT_MAX_COLUMNS = 1_000
DEFAULT_MAX_ROWS = 5_000_000
_LIMIT_FLAGS = {"bytes": "--max-file-mib", "columns": "--max-columns", "rows": "--max-rows"}

if TYPE_CHECKING:
    import pandas as pd

    from mora_platform.storage.datasets import DatasetStore, ServiceSummary

data_app = typer.Typer(
    help="Datasets: import CSV / Parquet into S3, list what is stored, generate a synthetic fleet.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``"30s"``, ``"5m"``, ``"1h"`` (or plain seconds) -> seconds."""
    match = _DURATION.match(text.lower())
    if not match or int(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r}: expected a positive duration like 30s, 5m or 1h")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def _dataset_store() -> DatasetStore:
    """The dataset store for the current settings, checked to be reachable (bucket created if missing)."""
    from infra.local.envfile import load_settings
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.errors import BucketNotFoundError, StorageError
    from mora_platform.storage.object_store import ObjectStore

    settings = load_settings()
    try:
        store = ObjectStore.from_settings(settings)
        try:
            store.check()
        except BucketNotFoundError:
            store.ensure_bucket()
    except (StorageError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    return DatasetStore(store)


def _stamp(value: pd.Timestamp | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _summary_table(title: str, summaries: list[ServiceSummary]) -> Table:
    table = Table(title=title)
    for column, justify in (("service", "left"), ("rows", "right"), ("experiments", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("start (UTC)")
    table.add_column("end (UTC)")
    for summary in summaries:
        table.add_row(
            summary.service,
            str(summary.rows),
            str(summary.experiments),
            _stamp(summary.start),
            _stamp(summary.end),
        )
    table.add_section()
    table.add_row(
        f"{len(summaries)} services",
        str(sum(s.rows for s in summaries)),
        str(sum(s.experiments for s in summaries)),
        "",
        "",
    )
    return table


@data_app.command("import")
def import_data(
    path: Path = typer.Argument(..., help="A directory of CSV / Parquet files, one CSV or one Parquet file."),
    dataset: str = typer.Option(
        ...,
        "--dataset",
        "-d",
        help="Dataset name, Kubernetes-style: lowercase letters, digits, '-' and '.' (as service names must be).",
    ),
    relative_step_seconds: int = typer.Option(
        DEFAULT_RELATIVE_STEP_SECONDS, "--relative-step-seconds", min=1, help="Clock for t_N step labels."
    ),
    part: str = typer.Option(
        "part-00000", "--part", help="Part name; importing the same part again replaces it."
    ),
    max_file_mib: int = typer.Option(
        DEFAULT_MAX_FILE_MIB, "--max-file-mib", min=1, help="Refuse a file larger than this many MiB."
    ),
    max_columns: int = typer.Option(
        DEFAULT_MAX_COLUMNS,
        "--max-columns",
        min=1,
        help="Refuse a file with more columns (read from its header).",
    ),
    max_rows: int = typer.Option(
        DEFAULT_MAX_ROWS,
        "--max-rows",
        min=1,
        help="Refuse a file with more data rows (lines after the header).",
    ),
    usage_scope: str | None = typer.Option(
        None,
        "--usage-scope",
        help="What the files' CPU / memory figures cover: 'service' (summed over the pods, as mora collect "
        "writes) or 'pod' (one pod's figure); default: the directory's mora-dataset.json, else service.",
    ),
) -> None:
    """Validate and load PATH, report every problem, write one Parquet per service to S3.

    Refused before anything is written (exit 2, naming the file): a dataset or service name that is not
    Kubernetes-style (lowercase letters, digits, '-', '.'; no '/', '..' or empty name), and a file over
    --max-file-mib, --max-columns or --max-rows (checked by streaming, before any file is parsed).
    """
    from mora_platform.data.loaders import (
        DataLoadError,
        InvalidNameError,
        LoadLimitError,
        LoadLimits,
        load_path,
    )
    from mora_platform.data.validation import check_kubernetes_name
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.errors import StorageError

    try:
        check_kubernetes_name("dataset", dataset)
        DatasetStore.part_key(dataset, "x", part)
    except ValueError as exc:
        raise _fail(str(exc), code=2) from exc
    datasets = _dataset_store()
    limits = LoadLimits(max_file_bytes=max_file_mib * 2**20, max_columns=max_columns, max_rows=max_rows)
    try:
        result = load_path(
            path,
            relative_step_seconds=relative_step_seconds,
            limits=limits,
            check_service_names=True,
            usage_scope=usage_scope,
        )
    except LoadLimitError as exc:
        where = f" in {path}" if path.is_dir() else ""
        raise _fail(
            f"refused{where}: {exc} (raise {_LIMIT_FLAGS[exc.limit]} to allow it); nothing written", code=2
        ) from exc
    except InvalidNameError as exc:
        where = f" in {path}" if path.is_dir() else ""
        raise _fail(f"refused{where}: {exc}; nothing written", code=2) from exc
    except (DataLoadError, OSError, ValueError) as exc:
        raise _fail(f"cannot load {path}: {exc}") from exc

    problems = [issue for issue in result.issues if issue.is_error]
    notes = [issue for issue in result.issues if not issue.is_error]
    for issue in problems:
        errors.print(f"[red]skipped:[/red] {escape(str(issue))}")
    for issue in notes:
        console.print(f"[yellow]note:[/yellow] {escape(str(issue))}")
    console.print(
        f"{len(result.loaded)} source(s) loaded, {len(result.skipped)} skipped; "
        f"{len(problems)} error(s), {len(notes)} note(s)"
    )
    if result.frame.empty:
        raise _fail(f"nothing loaded from {path}; nothing written")
    try:
        summaries = datasets.write(dataset, result.frame, part=part)
    except (StorageError, ValueError) as exc:
        raise _fail(f"writing dataset {dataset!r}: {exc}") from exc
    console.print(_summary_table(f"dataset {dataset} ({len(result.frame)} rows)", summaries))
    console.print(f"written to {datasets.store.uri(DatasetStore.dataset_prefix(dataset))}")


@data_app.command("list")
def list_data(
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Show the services of this dataset."),
) -> None:
    """Datasets in the bucket and their services."""
    from mora_platform.storage.errors import StorageError

    datasets = _dataset_store()
    try:
        if dataset is None:
            names = datasets.list_datasets()
            table = Table(title=f"datasets in {datasets.store.uri('datasets/')}")
            table.add_column("dataset")
            table.add_column("services", justify="right")
            table.add_column("service names", overflow="fold")
            for name in names:
                services = datasets.list_services(name)
                table.add_row(name, str(len(services)), ", ".join(services))
            if not names:
                console.print("no datasets yet (`mora data import PATH --dataset NAME`)")
                return
        else:
            services = datasets.list_services(dataset)
            table = Table(title=f"dataset {dataset}")
            table.add_column("service")
            table.add_column("parts", justify="right")
            table.add_column("size (KiB)", justify="right")
            for service in services:
                objects = datasets.store.list_objects(datasets.service_prefix(dataset, service))
                table.add_row(service, str(len(objects)), f"{sum(o.size for o in objects) / 1024:.1f}")
    except (StorageError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    console.print(table)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .parquet or .csv."),
    services: int = typer.Option(
        3, "--services", "-n", min=1, help="How many services (svc-00, svc-01, ...)."
    ),
    days: float = typer.Option(7.0, "--days", min=0.0, help="Length of each series in days."),
    step: str = typer.Option("30s", "--step", help="Sample interval: 30s, 5m, 1h."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed; the same seed gives the same fleet."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Also write it to S3 as this dataset."),
) -> None:
    """Generate a deterministic synthetic fleet (daily/weekly cycles, bursts, restarts) in the unified schema."""
    from mora_platform.data.synthetic import generate_fleet
    from mora_platform.data.writers import write_frame
    from mora_platform.storage.datasets import summarize

    step_seconds = parse_duration(step)
    try:
        frame = generate_fleet(services, days, step_seconds=step_seconds, seed=seed)
        written = write_frame(frame, out)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc), code=2) from exc
    summaries = [summarize(str(name), rows) for name, rows in frame.groupby("service", sort=True)]
    console.print(_summary_table(f"synthetic fleet: seed {seed}, step {step_seconds}s", summaries))
    console.print(f"written to {written}")
    if dataset is not None:
        from mora_platform.storage.errors import StorageError

        datasets = _dataset_store()
        try:
            datasets.write(dataset, frame)
        except (StorageError, ValueError) as exc:
            raise _fail(f"writing dataset {dataset!r}: {exc}") from exc
        console.print(f"and to {datasets.store.uri(datasets.dataset_prefix(dataset))}")


def register(app: typer.Typer) -> None:
    """Add ``mora data ...`` to ``app``."""
    app.add_typer(data_app, name="data")
