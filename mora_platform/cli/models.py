"""`mora train`, `mora models list`, `mora recommend`: one service from dataset to published model to answer.

Models live in the registry on S3 (or in a local directory with ``--registry-dir`` /
``MORA_REGISTRY_DIR``, for offline use). Failures a user can fix print one ``error:`` line and
exit with code 2.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from mora_platform.registry import ModelRegistry
    from mora_platform.settings import MoraSettings

USAGE_ERROR = 2

# Metric names shown in the `mora train` summary (per split and target); the manifest keeps all.
SUMMARY_METRICS: tuple[str, ...] = ("mae", "coverage", "usage_coverage", "mean_slack")

RegistryDirOption = typer.Option(
    None,
    "--registry-dir",
    envvar="MORA_REGISTRY_DIR",
    help="Use a local directory as the model registry instead of the S3 bucket (offline mode).",
)

# Exceptions that carry a message meant for the user, by (module, class name): matched against
# the exception's MRO, so checking needs no import of the layers that define them.
_USER_ERRORS: frozenset[tuple[str, str]] = frozenset(
    {
        ("mora_platform.registry.errors", "RegistryError"),
        ("mora_platform.recommend.formatters", "UnknownFormatError"),
        ("mora_platform.storage.errors", "StorageError"),
        ("mora_platform.training.report", "ServiceDataError"),
        ("mora_platform.models.base", "ModelError"),
    }
)


def _fail(message: str) -> NoReturn:
    """Print one ``error:`` line to stderr and exit with the usage-error code."""
    one_line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(USAGE_ERROR)


def _is_user_error(exc: BaseException) -> bool:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    return any((cls.__module__, cls.__name__) in _USER_ERRORS for cls in type(exc).__mro__)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can act on into ``_fail``; let real bugs surface with a traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        if _is_user_error(exc):
            _fail(str(exc))
        raise


def _settings() -> MoraSettings:
    from mora_platform.settings import MoraSettings

    return MoraSettings()  # type: ignore[call-arg]  # fields come from the environment


def _object_store(settings: MoraSettings) -> Any:
    """The S3 store, checked reachable (clear error otherwise)."""
    from mora_platform.storage.object_store import ObjectStore

    store = ObjectStore.from_settings(settings)
    store.check()
    return store


def _registry(settings: MoraSettings, registry_dir: Path | None, store: Any = None) -> ModelRegistry:
    from mora_platform.registry import LocalBlobBackend, ModelRegistry

    if registry_dir is not None:
        return ModelRegistry(LocalBlobBackend(registry_dir))
    return ModelRegistry(store if store is not None else _object_store(settings))


def _print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, 20 * len(columns))).print(table)


# ---- metrics: whatever nesting the training report uses, show one row per target ----------


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _leaves(inner, (*path, str(key)))
    else:
        yield path, value


def metric_rows(metrics: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(metric columns, {target: {column: value}}): the target key is lifted out of each path."""
    from mora_platform.recommend.types import TARGETS

    rows: dict[str, dict[str, Any]] = {}
    columns: list[str] = []
    for path, value in _leaves(metrics):
        target = next((part for part in path if part in TARGETS), "all")
        column = ".".join(part for part in path if part != target) or "value"
        rows.setdefault(target, {})[column] = value
        if column not in columns:
            columns.append(column)
    order = {name: i for i, name in enumerate((*TARGETS, "all"))}
    return columns, dict(sorted(rows.items(), key=lambda item: order.get(item[0], len(order))))


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        magnitude = abs(value)
        return f"{value:.4g}" if magnitude < 1e5 else f"{value:.3e}"
    return str(value)


def _compact_metrics(metrics: Mapping[str, Any]) -> str:
    """One line per target with the test (else all) MAE / coverage numbers."""
    columns, rows = metric_rows(metrics)
    wanted = [c for c in columns if c.rsplit(".", 1)[-1] in ("mae", "coverage")] or columns
    tested = [c for c in wanted if "test" in c.lower()] or wanted
    return "\n".join(
        f"{target}: " + ", ".join(f"{c} {_number(values[c])}" for c in tested if c in values)
        for target, values in rows.items()
        if any(c in values for c in tested)
    )


# ---- commands ---------------------------------------------------------------------------


def _training_config(
    registry: ModelRegistry, service: str, config_file: Path | None, epochs: int | None, use_tuned: bool
) -> tuple[Any, str]:
    """(TrainingConfig, where it came from), resolved as the fleet job does (``training.publish``):
    defaults < the tuned config < the --config file, merged key by key < --epochs."""
    from mora_platform.training.publish import resolve_config

    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = json.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            _fail(f"--config {config_file}: cannot read ({exc.strerror or exc})")
        except json.JSONDecodeError as exc:
            _fail(f"--config {config_file}: not valid JSON ({exc})")
        if not isinstance(loaded, dict):
            _fail(f"--config {config_file}: must hold a JSON object")
        data = loaded
    tuned = registry.load_tuned_config(service) if use_tuned else None
    return resolve_config(tuned, data, overrides_label=f"file {config_file}", epochs=epochs)


def train(
    dataset: str = typer.Option(..., "--dataset", help="Dataset name in the bucket (see `mora data list`)."),
    service: str = typer.Option(..., "--service", help="Service to train."),
    config: Path | None = typer.Option(
        None, "--config", help="JSON file merged over the service's tuned config (as `mora retrain` does)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the LSTM's maximum epochs."),
    no_tuned: bool = typer.Option(False, "--no-tuned", help="Ignore the tuned config in the registry."),
    registry_dir: Path | None = RegistryDirOption,
) -> None:
    """Train one service from a stored dataset, publish the bundle, print its metrics."""
    from mora_platform.registry import validate_service_name

    settings = _settings()
    with _user_errors():
        validate_service_name(service)
        store = _object_store(settings)
        registry = _registry(settings, registry_dir, store)
        training_config, source = _training_config(registry, service, config, epochs, not no_tuned)
        typer.echo(f"config: {source}")

        from mora_platform.storage.datasets import DatasetStore

        frame = DatasetStore(store).read(dataset, service)
        from mora_platform.training.publish import train_and_publish  # heavy: after the cheap checks

        with tempfile.TemporaryDirectory(prefix=f"mora-train-{service}-") as tmp:
            trained = train_and_publish(
                frame, service, training_config, registry, Path(tmp), dataset=dataset, config_source=source
            )
            report, version, size = trained.report, trained.version, trained.bundle_bytes
            dumped = report.model_dump(mode="json")

    dumped_metrics = {"validation": dumped.get("validation") or {}, "test": dumped.get("metrics") or {}}
    columns, rows = metric_rows(dumped_metrics)
    columns = [c for c in columns if c.rsplit(".", 1)[-1] in SUMMARY_METRICS] or columns
    _print_table(
        f"{service} {version}",
        ["target", *columns],
        [[target, *(_number(values.get(c)) for c in columns)] for target, values in rows.items()],
    )
    typer.echo(f"fallbacks: {', '.join(report.fallbacks) or 'none'}")
    typer.echo(f"seconds: {report.seconds:.1f}  bundle: {size / 1024:.1f} KiB")
    typer.echo(f"published: {service} {version}")


def list_models(
    service: str | None = typer.Option(None, "--service", help="Only this service."),
    output: str = typer.Option("table", "--format", help="table | json"),
    registry_dir: Path | None = RegistryDirOption,
) -> None:
    """Published services, their LATEST version, when it was made and its test metrics."""
    if output not in ("table", "json"):
        _fail(f"--format {output!r}: use table or json")
    settings = _settings()
    entries: list[dict[str, Any]] = []
    with _user_errors():
        from mora_platform.registry import validate_service_name

        registry = _registry(settings, registry_dir)
        services = [validate_service_name(service)] if service else registry.list_services()
        for name in services:
            latest = registry.latest_version(name)
            if latest is None:
                if service:
                    _fail(f"no published model for service {name!r}")
                entries.append({"service": name, "latest": None})
                continue
            manifest = registry.read_manifest(name, latest)
            entries.append(
                {
                    "service": name,
                    "latest": latest,
                    "created_at": manifest.created_at.isoformat(timespec="seconds"),
                    "versions": len(registry.list_versions(name)),
                    "bytes": manifest.total_bytes,
                    "fallbacks": manifest.fallbacks,
                    "metrics": manifest.metrics,
                }
            )
    if output == "json":
        typer.echo(json.dumps(entries, indent=2))
        return
    rows = [
        [
            entry["service"],
            entry["latest"] or "(none)",
            entry.get("created_at", "-"),
            str(entry.get("versions", 0)),
            f"{entry.get('bytes', 0) / 1024:.0f} KiB",
            _compact_metrics(entry.get("metrics", {})) or "-",
        ]
        for entry in entries
    ]
    _print_table("Models", ["service", "LATEST", "created_at", "versions", "size", "metrics"], rows)


def prune_models(
    service: str = typer.Option(..., "--service", help="Service whose old versions to delete."),
    keep: int = typer.Option(
        5, "--keep", min=1, help="Newest complete versions to keep (LATEST is always kept)."
    ),
    registry_dir: Path | None = RegistryDirOption,
) -> None:
    """Delete old versions of a service, never the one LATEST names."""
    settings = _settings()
    with _user_errors():
        from mora_platform.registry import validate_service_name

        registry = _registry(settings, registry_dir)
        deleted = registry.prune(validate_service_name(service), keep)
    typer.echo(
        f"deleted {len(deleted)} version(s) of {service}" + (f": {', '.join(deleted)}" if deleted else "")
    )


def _parse_context(context: str | None) -> dict[str, float | str] | None:
    if context is None:
        return None
    try:
        data = json.loads(context)
    except json.JSONDecodeError as exc:
        _fail(f"--context is not valid JSON: {exc}")
    if not isinstance(data, dict):
        _fail(f"--context must be a JSON object like '{{\"load_users\": 50}}', got {type(data).__name__}")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            _fail(f"--context field {key!r}: value {value!r} must be a number or a string")
    return data


def recommend(
    service: str = typer.Argument(..., help="Service to recommend for."),
    context: str | None = typer.Option(
        None, "--context", help='JSON object, e.g. \'{"load_users": 50, "replica_count": 2}\'.'
    ),
    version: str | None = typer.Option(None, "--version", help="Model version (default: LATEST)."),
    output: str = typer.Option("table", "--format", "--output", "-o", help="table | json | yaml | k8s-patch"),
    container: str | None = typer.Option(
        None,
        "--container",
        help="The container to recommend for when mora collect recorded none (default: the service name).",
    ),
    registry_dir: Path | None = RegistryDirOption,
    recent: bool = typer.Option(
        True,
        "--recent/--no-recent",
        help="Without --context: calibrate the head-room on the service's newest rows, live from Prometheus "
        "when MORA_PROMETHEUS_URL is set, else from its dataset (what the backtest measures, and what the "
        "endpoint serves); --no-recent answers from the model "
        "alone with the training-time head-room.",
    ),
) -> None:
    """Answer from the published model: fetch, verify, load, recommend.

    As the endpoint does: without --context, the service's newest rows (live from Prometheus when
    MORA_PROMETHEUS_URL is set, else, or when it fails, from the dataset the model was trained on)
    calibrate the CPU and memory head-room (the answer says where they came from and how old they are);
    with --context, a what-if
    question, the model answers from its stored history with the training-time head-room.
    """
    from mora_platform.recommend.formatters import available_formats, format_recommendations
    from mora_platform.registry import validate_service_name, validate_version

    if output not in available_formats():
        _fail(f"--format {output!r}: known formats: {', '.join(available_formats())}")
    options = {"container": container} if container and output == "k8s-patch" else {}
    parsed_context = _parse_context(context)
    settings = _settings()
    with _user_errors():
        validate_service_name(service)
        store = _object_store(settings) if registry_dir is None else None
        registry = _registry(settings, registry_dir, store)
        fallback_notes: list[str] = []
        if version is None:
            # as the endpoint serves: LATEST if it verifies, else the newest older version that does
            version, fetched, fallback_notes = _servable(registry, service, Path(settings.home))
        else:
            validate_version(version)
            fetched = registry.fetch(
                service, version, Path(settings.home) / "cache" / "models" / service / version
            )
        from mora_platform.training.bundle import ServiceModel

        model = ServiceModel.load(fetched.path)
        from mora_platform.registry.recent_history import (
            RecentHistory,
            history_from_settings,
            history_used,
            pick_history,
            prometheus_for_history,
        )

        wanted = recent and store is not None and settings.serve_history_rows > 0
        window = None
        dataset = fetched.manifest.extra.get("dataset")
        reader = None
        if store is not None:  # live from Prometheus when one is configured, as the endpoint reads them
            prometheus = prometheus_for_history(settings) if wanted and not parsed_context else None
            reader = history_from_settings(settings, store, prometheus) or RecentHistory(store, rows=1)
        if wanted and not parsed_context:
            assert reader is not None
            window = reader.get(model.service, str(dataset) if dataset else None)
        workload = reader.workload(model.service, str(dataset) if dataset else None) if reader else None
        history, source, notes = pick_history(None, window, what_if=wanted and bool(parsed_context))
        try:
            rec = model.recommend(
                history, parsed_context, model_version=version, workload=workload, container=container
            )
        except ValueError as exc:  # the model refuses a context it cannot use, saying why
            _fail(f"--context: {exc}")
        used = history_used(source, history if history is not None else model.history)
        update: dict[str, Any] = {"history": used, "reasons": [*rec.reasons, *notes, *fallback_notes]}
        if fallback_notes:
            update["degraded"] = True
        rec = rec.model_copy(update=update)
        typer.echo(format_recommendations([rec], output, **options), nl=False)


def _servable(registry: Any, service: str, home: Path) -> tuple[str, Any, list[str]]:
    """(version, fetched bundle, notes): what LATEST names if it verifies, else the newest older version
    that does, with the notes saying why (the endpoint's rule); refuses when none verifies."""
    from mora_platform.registry.errors import ArtifactIntegrityError, ModelNotFoundError

    resolved = registry.resolve_latest(service)
    if resolved.version is None:
        raise ModelNotFoundError(service)
    notes = [resolved.problem] if resolved.problem else []
    refusals: list[str] = []
    first: ArtifactIntegrityError | None = None
    for candidate in registry.serving_candidates(resolved):
        try:
            fetched = registry.fetch(service, candidate, home / "cache" / "models" / service / candidate)
        except ArtifactIntegrityError as exc:
            first = first or exc
            refusals.append(f"{service}/{candidate} refused: {exc}")
            continue
        return candidate, fetched, [*notes, *refusals, *([f"answered by {candidate}"] if refusals else [])]
    assert first is not None  # resolve_latest named a version, so at least one candidate was tried
    raise first


def register(app: typer.Typer) -> None:
    """Add ``train``, ``models list`` and ``recommend`` to ``app``."""
    app.command("train")(train)
    models_app = typer.Typer(help="Published model versions.", no_args_is_help=True)
    models_app.command("list")(list_models)
    models_app.command("prune")(prune_models)
    app.add_typer(models_app, name="models")
    app.command("recommend")(recommend)
