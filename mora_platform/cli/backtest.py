"""`mora backtest`: replay history origin by origin and score the platform against VPA, KRR and Crane.

SOURCE is a directory or file of the unified schema (anything DATA's ``load_path`` reads), a
directory / file of two-column ``timestamp,value`` CSVs (one series per file, named after it), or
the name of a dataset in the S3 bucket. Writes ``OUT/backtest.json`` (schema in
``mora_platform.backtest.report``), ``OUT/summary.md`` and PNG plots under ``OUT/plots/``; prints
the table. With ``--ray``, each series (its training included) runs as one Ray task (see
``mora_platform.backtest.runner``): one CPU each (``--ray-task-cpus``), longest series first, a worker process
replaced after each series (``--ray-max-calls``), a line per finished series; a series that fails,
in process or on Ray (its worker lost included), is reported with its error and the others go on.
Without ``--ray-address`` or ``MORA_RAY_ADDRESS`` (or with ``--ray-address local``) a Ray of the run's
own is started on this machine (no dashboard; ``--ray-cpus`` caps its CPUs).

Memory stays flat in the in-process run: each platform fit's leftovers are released after it
(``runner.release_memory``: TensorFlow's gradient registry keeps every traced train step otherwise, about
16 MB a fit), and what a series keeps is its scored windows (``SeriesReplay``), not its models.

``--warmup``, ``--step``, ``--horizon`` and ``--refit`` left unset are derived from the series'
spacing and length (``mora_platform.backtest.defaults``); the settings in effect are printed.
Settings that leave no origin for any series exit 2 with the flag to change; series too short for
them are skipped (and listed) while the others run. Progress goes to stderr (``backtest:`` lines).

``--floors`` is one floor policy for every method's requests, the platform's and every baseline's
(``mora_platform.backtest.baselines.FloorPolicy``): ``default`` (the platform's serving floors, 10m
CPU / 32 MiB), ``kubernetes`` (1m / 1 MiB), ``none``, or ``CPU,MEMORY`` such as ``5m,16Mi``. The
platform's serving floors are set to the policy (at least 1m / 1 MiB, the serving policy's
smallest), so its ``platform`` row and the baselines are scored under the same floor; the report and
``summary.md`` name the policy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mora_platform.backtest.runner import (
    MethodSpec,
    RayOptions,
    build_methods,
    horizon_steps,
    platform_available,
    replay_all,
)

if TYPE_CHECKING:
    import pandas as pd

    from mora_platform.backtest.defaults import Settings
    from mora_platform.backtest.engine import BacktestSeries
    from mora_platform.backtest.inputs import SeriesSet

USAGE_ERROR = 2


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(USAGE_ERROR)


def _duration(text: str | None, option: str) -> pd.Timedelta | None:
    """The user's duration, or None when the option was left unset (then derived from the data)."""
    import pandas as pd

    if text is None:
        return None
    try:
        value = pd.Timedelta(text)
    except ValueError:
        _fail(f"{option}: cannot read {text!r} as a duration (e.g. 1h, 15min, 90s)")
    if value < pd.Timedelta(0):
        _fail(f"{option}: must not be negative, got {text!r}")
    return value


def _with_origins(
    series: Sequence[BacktestSeries], settings: Settings
) -> tuple[list[BacktestSeries], list[str]]:
    """The series with at least one origin under ``settings``, and why the others have none; exits 2
    naming the flag to change when no series has one."""
    from mora_platform.backtest.defaults import no_origin_message, too_short_note
    from mora_platform.backtest.engine import planned_origins, series_extent

    kept: list[BacktestSeries] = []
    short: list[str] = []
    for one in series:
        if len(planned_origins(one, settings.config)):
            kept.append(one)
            continue
        extent = series_extent(one)
        short.append(
            too_short_note(extent, settings) if extent else f"{one.name}: no usable CPU or memory sample"
        )
    if not kept:
        _fail(no_origin_message(settings))
    return kept, short


def _read_source(
    source: str,
    *,
    mode: str,
    unit: str,
    resource: str,
    step_seconds: int,
    services: list[str] | None,
    usage_scope: str | None = None,
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

        loaded = load_path(path, relative_step_seconds=step_seconds, usage_scope=usage_scope)
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
        step: str | None = typer.Option(
            None, "--step", help="Time between origins (default: the horizon)", show_default=False
        ),
        horizon: str | None = typer.Option(
            None,
            "--horizon",
            help="How long each request is held and scored (default, from the data: shortest series / 120, "
            "20 samples to 1h)",
            show_default=False,
        ),
        warmup: str | None = typer.Option(
            None,
            "--warmup",
            help="History before the first origin (default, from the data: a tenth of the shortest series, "
            "at least 200 samples, at most 24h)",
            show_default=False,
        ),
        season: str = typer.Option("24h", "--season", help="Season of the naive forecast behind MASE"),
        refit: str | None = typer.Option(
            None,
            "--refit",
            help="Retrain the platform this often (default: 48 steps, at most 24h)",
            show_default=False,
        ),
        methods: str = typer.Option(
            "platform,platform-validation,platform-1step,vpa,krr,crane,max,reactive",
            "--methods",
            help="Comma-separated methods to compare (platform-min-floors, the platform at 1m / 1 MiB, is "
            "--floors kubernetes)",
        ),
        mode: str = typer.Option("auto", "--mode", help="auto | continuous | concatenated | experiment"),
        unit: str = typer.Option(
            "cores", "--unit", help="Unit of timestamp,value CSVs: percent|cores|millicores|bytes|mib"
        ),
        resource: str = typer.Option(
            "cpu", "--resource", help="Resource of timestamp,value CSVs: cpu | memory"
        ),
        step_seconds: int = typer.Option(15, "--relative-step-seconds", help="Clock of relative t_N labels"),
        usage_scope: str | None = typer.Option(
            None,
            "--usage-scope",
            help="What the files' CPU / memory figures cover: 'service' (summed over the pods; divided by "
            "replica_count_value) or 'pod' (one pod already); default: the directory's mora-dataset.json, "
            "else service",
        ),
        services: str | None = typer.Option(None, "--services", help="Comma-separated services to keep"),
        epochs: int = typer.Option(3, "--epochs", help="LSTM epochs per platform fit (training budget)"),
        ray_flag: bool = typer.Option(False, "--ray", help="Run one Ray task per series"),
        ray_address: str | None = typer.Option(
            None,
            "--ray-address",
            help="Ray address, or 'local' for a Ray of this run's own (default: MORA_RAY_ADDRESS, else "
            "RAY_ADDRESS, else local)",
        ),
        ray_cpus: int | None = typer.Option(
            None, "--ray-cpus", min=1, help="CPUs of the local Ray this run starts (default: every core)"
        ),
        ray_task_cpus: float = typer.Option(
            1.0, "--ray-task-cpus", min=0.01, help="Ray CPUs reserved per series (fewer series at once)"
        ),
        ray_max_calls: int = typer.Option(
            1,
            "--ray-max-calls",
            min=0,
            help="Series a Ray worker process runs before it is replaced by a fresh one (0: never)",
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
        floors: str = typer.Option(
            "default",
            "--floors",
            help="One floor for every method's requests before scoring: 'default' (the platform's serving "
            "floors, 10m CPU / 32 MiB), 'kubernetes' (1m / 1 MiB), 'none', or CPU,MEMORY such as 5m,16Mi",
        ),
    ) -> None:
        """Rolling-origin backtest: slack and under-provisioning of each method, per series and averaged."""
        from dataclasses import replace

        from mora_platform.backtest.baselines import RESOURCES, parse_floor_policy
        from mora_platform.backtest.defaults import SettingsError, resolve_settings
        from mora_platform.backtest.engine import series_extent
        from mora_platform.backtest.inputs import MODES, BacktestInputError
        from mora_platform.backtest.plots import write_plots
        from mora_platform.backtest.progress import PREFIX, ProgressReporter, format_elapsed
        from mora_platform.backtest.report import build_report, format_table, write_report, write_summary

        started = time.monotonic()
        if mode not in MODES:
            _fail(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        if resource not in RESOURCES:
            _fail(f"--resource must be cpu or memory, got {resource!r}")
        raw = {"warmup": warmup, "step": step, "horizon": horizon, "refit": refit}
        given = {flag: _duration(text, f"--{flag}") for flag, text in raw.items()}
        for flag in ("step", "horizon", "refit"):
            value = given[flag]
            if value is not None and value.total_seconds() <= 0:
                _fail(f"--{flag} must be positive, got {raw[flag]!r}")
        season_value = _duration(season, "--season")
        assert season_value is not None
        try:
            floor_policy = parse_floor_policy(floors)
        except ValueError as exc:
            _fail(f"--{exc}")
        from mora_platform.backtest.platform_training import HEAD_ROOM_MODES

        if calibrate_on not in HEAD_ROOM_MODES:
            _fail(f"--calibrate-on must be one of {', '.join(HEAD_ROOM_MODES)}, got {calibrate_on!r}")
        names = tuple(n.strip() for n in methods.split(",") if n.strip())
        notes: list[str] = []
        if any(n.startswith("platform") for n in names):
            from mora_platform.models.tf_quiet import quiet_tensorflow

            quiet_tensorflow()  # before anything imports TensorFlow
            reason = platform_available()
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
                source,
                mode=mode,
                unit=unit,
                resource=resource,
                step_seconds=step_seconds,
                services=wanted,
                usage_scope=usage_scope,
            )
        except BacktestInputError as exc:
            _fail(str(exc))
        for skipped in series_set.skipped:
            typer.echo(f"warning: skipped {skipped}", err=True)
        if not series_set.series:
            _fail(f"{source}: no series to backtest")
        try:
            settings = resolve_settings(
                [e for e in map(series_extent, series_set.series) if e is not None],
                season=season_value,
                **given,
            )
        except (SettingsError, ValueError) as exc:
            _fail(str(exc))
        config = replace(settings.config, floors=floor_policy)
        series, too_short = _with_origins(series_set.series, settings)
        skipped_notes = [f"skipped: {s}" for s in series_set.skipped] + [
            f"skipped (too short): {s}" for s in too_short
        ]
        typer.echo(f"{PREFIX} settings {settings.describe()}; floors {floor_policy.describe()}", err=True)
        for note in too_short:
            typer.echo(f"warning: skipped {note}", err=True)
        spec = MethodSpec(
            names=names,
            refit_seconds=settings.refit.total_seconds(),
            training={"epochs": epochs},
            horizon_steps=horizon_steps(series, config.horizon),
            head_room=calibrate_on,
            recent_rows=recent_rows,
            floors=(floor_policy.cpu_millicores, floor_policy.memory_mib),
        )
        where = "as Ray tasks" if ray_flag else "in this process"
        typer.echo(
            f"{PREFIX} {len(series)} series x {len(names)} methods ({', '.join(names)}), {where}", err=True
        )
        progress = ProgressReporter(len(series))
        ray_options = RayOptions(task_cpus=ray_task_cpus, max_calls=ray_max_calls, local_cpus=ray_cpus)
        replays = replay_all(series, spec, config, ray_flag, ray_address, progress, ray_options)
        report = build_report(
            replays,
            build_methods(spec),
            config,
            source=f"{source} ({described})",
            mode=series_set.mode,
            notes=notes + skipped_notes,
            extra_config={
                "refit_seconds": spec.refit_seconds,
                "derived_settings": list(settings.derived),
                "training": spec.training,
                "horizon_steps": spec.horizon_steps,
                "platform_head_room": spec.head_room,
                "recent_rows": spec.recent_rows,
                "ray": ray_flag,
                **({"ray_task_cpus": ray_task_cpus, "ray_max_calls": ray_max_calls} if ray_flag else {}),
            },
        )
        path = write_report(report, out)
        summary_path = write_summary(report, out)
        typer.echo(format_table(report))
        for replay in replays:
            for error in replay.errors:
                typer.echo(f"warning: {error}", err=True)
        if not any(replay.resources for replay in replays):  # the plan said otherwise: never exit 0 empty
            typer.echo(f"error: no origin was scored in any series (report: {path})", err=True)
            raise typer.Exit(1)
        for name in RESOURCES:
            block = report["summary"][name]
            if not block["series"] and any(name in r.resources for r in replays):
                failing = sorted(
                    {
                        m
                        for s in report["series"]
                        for m, e in s["resources"].get(name, {}).get("methods", {}).items()
                        if e["status"] == "failed"
                    }
                )
                typer.echo(
                    f"warning: the {name} average is empty: no series where every method succeeded "
                    f"({', '.join(failing)} failed; errors above)",
                    err=True,
                )
        if plots:
            written = write_plots(replays, report, out)
            typer.echo(f"plots: {len(written)} PNG file(s) in {out / 'plots'}")
        typer.echo(f"summary: {summary_path}")
        typer.echo(f"report: {path}")
        typer.echo(f"{PREFIX} done in {format_elapsed(time.monotonic() - started)}", err=True)
