"""`mora backtest`: replay history origin by origin and score the platform against VPA, KRR and Crane.

SOURCE is a directory or file of the unified schema (anything DATA's ``load_path`` reads), a
directory / file of two-column ``timestamp,value`` CSVs (one series per file, named after it), or
the name of a dataset in the S3 bucket. Writes ``OUT/backtest.json`` (schema in
``mora_platform.backtest.report``) and PNG plots under ``OUT/plots/``; prints the table.
With ``--ray``, each series (its training included) runs as one Ray task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    import pandas as pd

    from mora_platform.backtest.baselines import Recommender
    from mora_platform.backtest.engine import BacktestConfig, BacktestSeries, SeriesReplay
    from mora_platform.backtest.inputs import SeriesSet

USAGE_ERROR = 2


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USAGE_ERROR)


def _duration(text: str, option: str) -> pd.Timedelta:
    import pandas as pd

    try:
        value = pd.Timedelta(text)
    except ValueError:
        _fail(f"{option}: cannot read {text!r} as a duration (e.g. 1h, 15min, 90s)")
    if value < pd.Timedelta(0):
        _fail(f"{option}: must not be negative, got {text!r}")
    return value


@dataclass(frozen=True)
class MethodSpec:
    """What to build for each series (plain data, so a Ray task can build its own fresh methods)."""

    names: tuple[str, ...]
    refit_seconds: float
    training: dict[str, Any]
    horizon_steps: int = 1
    head_room: str = "auto"  # the platform's head-room: "auto", "recent" rows or training-time "validation"
    recent_rows: int = 1_440  # models.recent.RECENT_ROWS (not imported: the CLI starts without pandas)


def build_methods(spec: MethodSpec) -> list[Recommender]:
    """Fresh recommenders for one series (the platform carries per-series state)."""
    import pandas as pd

    from mora_platform.backtest.baselines import create_recommender
    from mora_platform.backtest.platform import PlatformRecommender

    methods: list[Recommender] = []
    trainer = None
    for name in spec.names:
        if name.startswith("platform"):
            from mora_platform.backtest.baselines import registered_recommenders
            from mora_platform.backtest.platform_training import ServiceModelTrainer

            cls = registered_recommenders()[name]
            assert issubclass(cls, PlatformRecommender)
            trainer = trainer or ServiceModelTrainer(
                spec.training,
                horizon_steps=spec.horizon_steps,
                head_room=spec.head_room,
                recent_rows=spec.recent_rows,
            )
            # "platform" gets the served floors as the training config sets them (default 10m / 32 MiB)
            served = name == "platform"
            methods.append(
                cls(
                    trainer=trainer,
                    refit=pd.Timedelta(seconds=spec.refit_seconds),
                    cpu_floor_millicores=spec.training.get("cpu_floor_millicores") if served else None,
                    memory_floor_mib=spec.training.get("memory_floor_mib") if served else None,
                )
            )
        else:
            methods.append(create_recommender(name))
    return methods


def horizon_steps(series: Sequence[BacktestSeries], horizon: pd.Timedelta) -> int:
    """Rows per horizon at the finest typical sampling interval of the series (at least 1)."""
    import math

    import pandas as pd

    spacings = [(u.index[1:] - u.index[:-1]).median() for s in series for u in s.usage.values() if len(u) > 1]
    spacing = min(spacings) if spacings else horizon
    return max(1, math.ceil(horizon / spacing)) if spacing > pd.Timedelta(0) else 1


def _platform_available() -> str | None:
    """None if MODELS' training code can be imported, else the reason it cannot."""
    try:
        from mora_platform.backtest.platform_training import check_available

        check_available()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _read_source(
    source: str, *, mode: str, unit: str, resource: str, step_seconds: int, services: list[str] | None
) -> tuple[SeriesSet, str]:
    from mora_platform.backtest.inputs import is_value_csv, read_value_csvs, series_from_frame

    path = Path(source)
    if path.exists():
        files = sorted(p for p in path.rglob("*.csv")) if path.is_dir() else [path]
        if files and all(is_value_csv(f) for f in files):
            chosen = [f for f in files if services is None or f.stem in services]
            return read_value_csvs(
                chosen, resource=resource, unit=unit
            ), f"{len(chosen)} timestamp,value CSV file(s)"
        from mora_platform.data.loaders import load_path

        loaded = load_path(path, relative_step_seconds=step_seconds)
        for issue in loaded.issues:
            typer.echo(f"warning: {issue}", err=True)
        if loaded.frame.empty:
            _fail(f"{source}: no usable rows ({len(loaded.skipped)} file(s) skipped)")
        result = series_from_frame(loaded.frame, mode=mode, step_seconds=step_seconds, services=services)
        return result, f"unified schema, {len(loaded.loaded)} file(s)"
    from mora_platform.settings import MoraSettings
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.object_store import ObjectStore

    settings = MoraSettings()  # type: ignore[call-arg]  # fields come from the environment
    frame = DatasetStore(ObjectStore.from_settings(settings)).read(source)
    result = series_from_frame(frame, mode=mode, step_seconds=step_seconds, services=services)
    return result, f"dataset {source!r}"


def _replay_all(
    series: Sequence[BacktestSeries],
    spec: MethodSpec,
    config: BacktestConfig,
    use_ray: bool,
    ray_address: str | None,
) -> list[SeriesReplay]:
    from mora_platform.backtest.engine import replay_series

    if not use_ray:
        return [replay_series(s, build_methods(spec), config) for s in series]
    import ray

    if not ray.is_initialized():
        from mora_platform.settings import MoraSettings

        settings = MoraSettings()  # type: ignore[call-arg]  # fields come from the environment
        ray.init(address=ray_address or settings.ray_address or None, log_to_driver=False)

    @ray.remote(num_cpus=1, max_retries=0)
    def replay_remote(one: BacktestSeries) -> SeriesReplay:
        return replay_series(one, build_methods(spec), config)

    return list(ray.get([replay_remote.remote(s) for s in series]))


def register(app: typer.Typer) -> None:
    """Add ``mora backtest`` to ``app``."""

    @app.command("backtest")
    def backtest(
        source: str = typer.Argument(
            ..., help="Unified-schema dir/file, timestamp,value CSV(s), or dataset name"
        ),
        out: Path = typer.Option(
            Path("backtest-out"), "--out", help="Output directory (backtest.json, plots/)"
        ),
        step: str = typer.Option("1h", "--step", help="Time between origins"),
        horizon: str = typer.Option("1h", "--horizon", help="How long each request is held and scored"),
        warmup: str = typer.Option("24h", "--warmup", help="History before the first origin"),
        season: str = typer.Option("24h", "--season", help="Season of the naive forecast behind MASE"),
        refit: str = typer.Option("24h", "--refit", help="Retrain the platform this often"),
        methods: str = typer.Option(
            "platform,platform-min-floors,platform-validation,platform-1step,vpa,krr,crane,max,reactive",
            "--methods",
            help="Comma-separated methods to compare",
        ),
        mode: str = typer.Option("auto", "--mode", help="auto | continuous | concatenated | experiment"),
        unit: str = typer.Option(
            "cores", "--unit", help="Unit of timestamp,value CSVs: percent|cores|millicores|bytes|mib"
        ),
        resource: str = typer.Option(
            "cpu", "--resource", help="Resource of timestamp,value CSVs: cpu | memory"
        ),
        step_seconds: int = typer.Option(15, "--relative-step-seconds", help="Clock of relative t_N labels"),
        services: str | None = typer.Option(None, "--services", help="Comma-separated services to keep"),
        epochs: int = typer.Option(3, "--epochs", help="LSTM epochs per platform fit (training budget)"),
        ray_flag: bool = typer.Option(False, "--ray", help="Run one Ray task per series"),
        ray_address: str | None = typer.Option(
            None, "--ray-address", help="Ray address (default: MORA_RAY_ADDRESS, else a local Ray)"
        ),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots"),
        calibrate_on: str = typer.Option(
            "auto",
            "--calibrate-on",
            help="Platform head-room: 'recent' (rows before each origin: fused forecast or recent peak) unless "
            "'validation' (training time) covered unseen rows as promised at no higher cost: 'auto'; or either alone",
        ),
        recent_rows: int = typer.Option(
            1_440, "--recent-rows", min=50, help="Rows the recent head-room uses"
        ),
    ) -> None:
        """Rolling-origin backtest: slack and under-provisioning of each method, per series and averaged."""
        from mora_platform.backtest.baselines import RESOURCES
        from mora_platform.backtest.engine import BacktestConfig
        from mora_platform.backtest.inputs import MODES, BacktestInputError
        from mora_platform.backtest.plots import write_plots
        from mora_platform.backtest.report import build_report, format_table, write_report

        if mode not in MODES:
            _fail(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        if resource not in RESOURCES:
            _fail(f"--resource must be cpu or memory, got {resource!r}")
        config = BacktestConfig(
            step=_duration(step, "--step"),
            horizon=_duration(horizon, "--horizon"),
            warmup=_duration(warmup, "--warmup"),
            season=_duration(season, "--season"),
        )
        from mora_platform.backtest.platform_training import HEAD_ROOM_MODES

        if calibrate_on not in HEAD_ROOM_MODES:
            _fail(f"--calibrate-on must be one of {', '.join(HEAD_ROOM_MODES)}, got {calibrate_on!r}")
        names = tuple(n.strip() for n in methods.split(",") if n.strip())
        notes: list[str] = []
        if any(n.startswith("platform") for n in names):
            reason = _platform_available()
            if reason is not None:
                names = tuple(n for n in names if not n.startswith("platform"))
                notes.append(f"platform left out: {reason}")
                typer.echo(f"warning: platform left out ({reason})", err=True)
        try:
            from mora_platform.backtest.baselines import create_recommender

            for name in names:
                if not name.startswith("platform"):
                    create_recommender(name)
        except ValueError as exc:
            _fail(str(exc))
        wanted = [s.strip() for s in services.split(",")] if services else None
        try:
            series_set, described = _read_source(
                source, mode=mode, unit=unit, resource=resource, step_seconds=step_seconds, services=wanted
            )
        except BacktestInputError as exc:
            _fail(str(exc))
        for skipped in series_set.skipped:
            typer.echo(f"warning: skipped {skipped}", err=True)
        if not series_set.series:
            _fail(f"{source}: no series to backtest")
        spec = MethodSpec(
            names=names,
            refit_seconds=_duration(refit, "--refit").total_seconds(),
            training={"epochs": epochs},
            horizon_steps=horizon_steps(series_set.series, config.horizon),
            head_room=calibrate_on,
            recent_rows=recent_rows,
        )
        replays = _replay_all(series_set.series, spec, config, ray_flag, ray_address)
        report = build_report(
            replays,
            build_methods(MethodSpec(names=names, refit_seconds=spec.refit_seconds, training=spec.training)),
            config,
            source=f"{source} ({described})",
            mode=series_set.mode,
            notes=notes + [f"skipped: {s}" for s in series_set.skipped],
            extra_config={
                "refit_seconds": spec.refit_seconds,
                "training": spec.training,
                "horizon_steps": spec.horizon_steps,
                "platform_head_room": spec.head_room,
                "recent_rows": spec.recent_rows,
                "ray": ray_flag,
            },
        )
        path = write_report(report, out)
        typer.echo(format_table(report))
        for replay in replays:
            for error in replay.errors:
                typer.echo(f"warning: {error}", err=True)
        if plots:
            written = write_plots(replays, report, out)
            typer.echo(f"plots: {len(written)} PNG file(s) in {out / 'plots'}")
        typer.echo(f"report: {path}")
