"""Backtest the platform against VPA, KRR, Crane, max and reactive on the shared and synthetic data.

Two runs, each written under ``benchmarks/results/backtest/<run>/`` (``backtest.json``, ``table.txt``,
``plots/*.png``), plus ``benchmarks/results/backtest/summary.md`` with slack and under-provisioning
side by side:

- ``online-boutique``: the shared real data (7 services, short experiments on a relative 15 s clock),
  each service's experiments concatenated back to back (see ``mora_platform.backtest.inputs``);
  origins every 5 min after a 1 h warm-up, requests held 5 min, the platform refitted every 4 h;
- ``synthetic``: ``generate_fleet`` (seeded, daily and weekly cycles, bursts, memory leaks),
  1-minute samples over 10 days; origins every hour after 3 days, requests held 1 h, refit 24 h.

The platform is trained with ``calibration_horizon_steps`` = rows per horizon and coverage 0.99 per
held step, and answers three ways from the same fits: ``platform`` (``--calibrate-on``, default ``auto``,
``ServiceModel.held_requests``: the head-room calibrated on the 1,440 rows before each origin for the
cheaper of the fused forecast and the recent peak, unless the training-time head-room covered the rows
seen since the fit as promised at no higher cost), ``platform-validation`` (the training-time head-room
alone) and ``platform-1step`` (the one-step head-room, for reference). Every method's request is rounded
up to whole millicores and MiB and raised to one floor policy (``--floors``, as ``mora backtest``'s:
``default`` the platform's serving floors, 10m CPU / 32 MiB, for every method; ``kubernetes`` 1m / 1 MiB;
``none``; or ``5m,16Mi``), which ``summary.md`` names; the ``platform`` row serves with those floors
(``platform-min-floors``, the platform at 1m / 1 MiB, is ``--floors kubernetes`` now, and is no longer
run). ``summary.md`` says which source answered the platform's requests, as a share of origins.

Run: ``.venv/bin/python benchmarks/backtest_report.py [--quick] [--no-platform] [--ray]
[--datasets online-boutique,synthetic] [--plain-fusion] [--head-room relative]
[--calibrate-on auto|recent|validation] [--recent-rows N] [--floors default|kubernetes|none|CPU,MEM]
[--results DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from mora_platform.backtest.baselines import DEFAULT_FLOORS, FloorPolicy, parse_floor_policy
from mora_platform.backtest.engine import BacktestConfig, SeriesReplay
from mora_platform.backtest.inputs import series_from_frame
from mora_platform.backtest.platform_training import HEAD_ROOM_MODES
from mora_platform.backtest.plots import write_plots
from mora_platform.backtest.report import (
    SUMMARY_DEFINITIONS,
    build_report,
    format_table,
    summary_lines,
    write_report,
)
from mora_platform.cli.backtest import (
    MethodSpec,
    _platform_available,
    _replay_all,
    build_methods,
    horizon_steps,
)
from mora_platform.models.recent import RECENT_ROWS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "backtest"
DATASETS = ("online-boutique", "synthetic")
BASELINES = ("vpa", "krr", "crane", "max", "reactive")
# the platform's head-room options (--calibrate-on, --recent-rows), applied to every run
PLATFORM_OPTIONS: dict[str, Any] = {"head_room": "auto", "recent_rows": RECENT_ROWS}
# the floor policy of every run (--floors), for every method
FLOORS: dict[str, FloorPolicy] = {"policy": DEFAULT_FLOORS}


def shared_data_dir() -> Path:
    env = os.environ.get("MORA_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "online-boutique"
    if not path.is_dir():
        raise SystemExit(f"shared data not found at {path} (set MORA_SHARED_DATA)")
    return path


def run(
    name: str,
    frame: pd.DataFrame,
    config: BacktestConfig,
    spec: MethodSpec,
    use_ray: bool,
    notes: list[str],
    results: Path = RESULTS,
) -> dict[str, Any]:
    series_set = series_from_frame(frame)
    policy = FLOORS["policy"]
    config = replace(config, floors=policy)
    spec = replace(
        spec,
        horizon_steps=horizon_steps(series_set.series, config.horizon),
        floors=(policy.cpu_millicores, policy.memory_mib),
        **PLATFORM_OPTIONS,
    )
    started = time.perf_counter()
    replays: list[SeriesReplay] = _replay_all(series_set.series, spec, config, use_ray, None)
    seconds = time.perf_counter() - started
    report = build_report(
        replays,
        build_methods(spec),
        config,
        source=name,
        mode=series_set.mode,
        notes=notes,
        extra_config={
            "refit_seconds": spec.refit_seconds,
            "training": spec.training,
            "platform_head_room": spec.head_room,
            "recent_rows": spec.recent_rows,
            "seconds": round(seconds, 1),
        },
    )
    out = results / name
    write_report(report, out)
    table = format_table(report)
    errors = [e for r in replays for e in r.errors]
    (out / "table.txt").write_text(table + ("\nerrors:\n" + "\n".join(errors) if errors else "") + "\n")
    write_plots(replays, report, out)
    print(f"== {name}: {len(replays)} series in {seconds:.1f} s\n{table}")
    for error in errors:
        print("error:", error)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer services / days (smoke run)")
    parser.add_argument("--no-platform", action="store_true", help="baselines only")
    parser.add_argument("--ray", action="store_true", help="one Ray task per series")
    parser.add_argument("--epochs", type=int, default=3, help="LSTM epochs per platform fit")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated runs to do")
    parser.add_argument(
        "--plain-fusion", action="store_true", help="no level member, fixed weights (the library defaults)"
    )
    parser.add_argument(
        "--head-room", choices=("absolute", "relative"), default="absolute", help="TrainingConfig.head_room"
    )
    parser.add_argument(
        "--split-by", choices=("rows", "experiments"), default="rows", help="TrainingConfig.split_by"
    )
    parser.add_argument(
        "--calibrate-on",
        choices=HEAD_ROOM_MODES,
        default="auto",
        help="the platform's head-room: recent (fused forecast or recent peak, on the rows before each origin) "
        "unless validation (training time) kept its promise at no higher cost (auto); or one of them alone",
    )
    parser.add_argument(
        "--recent-rows", type=int, default=RECENT_ROWS, help="rows the recent head-room looks at"
    )
    parser.add_argument(
        "--floors",
        default="default",
        help="one floor for every method's requests: default (the platform's serving floors, 10m / 32 MiB), "
        "kubernetes (1m / 1 MiB), none, or CPU,MEMORY such as 5m,16Mi",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args()
    PLATFORM_OPTIONS.update(head_room=args.calibrate_on, recent_rows=args.recent_rows)
    try:
        FLOORS["policy"] = parse_floor_policy(args.floors)
    except ValueError as exc:
        raise SystemExit(f"--{exc}") from None
    wanted = {d.strip() for d in args.datasets.split(",") if d.strip()}
    unknown = wanted - set(DATASETS)
    if unknown:
        raise SystemExit(f"--datasets: unknown {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    results: Path = args.results
    training: dict[str, Any] = {"epochs": args.epochs}
    if args.plain_fusion:
        training.update(level_member=False, fusion="fixed")
    if args.split_by != "rows":
        training["split_by"] = args.split_by
    if args.head_room != "absolute":
        training["head_room"] = args.head_room

    names: tuple[str, ...] = BASELINES
    notes: list[str] = []
    if not args.no_platform:
        reason = _platform_available()
        if reason is None:
            names = ("platform", "platform-validation", "platform-1step", *BASELINES)
        else:
            notes.append(f"platform left out: {reason}")
            print("platform left out:", reason)

    reports: dict[str, dict[str, Any]] = {}
    if "online-boutique" in wanted:
        run_online_boutique(args.quick, names, training, args.ray, notes, results)
    if "synthetic" in wanted:
        run_synthetic(args.quick, names, training, args.ray, notes, results)
    for name in DATASETS:
        path = results / name / "backtest.json"
        if path.is_file():
            reports[name] = json.loads(path.read_text())
    write_summary(reports, results)


def run_online_boutique(
    quick: bool,
    names: tuple[str, ...],
    training: dict[str, Any],
    use_ray: bool,
    notes: list[str],
    results: Path,
) -> dict[str, Any]:
    from mora_platform.data.loaders import load_path

    frame = load_path(shared_data_dir()).frame
    if quick:
        frame = frame[frame["service"].isin(sorted(frame["service"].unique())[:2])]
    return run(
        "online-boutique",
        frame,
        BacktestConfig(
            step=pd.Timedelta(minutes=5),
            horizon=pd.Timedelta(minutes=5),
            warmup=pd.Timedelta(hours=1),
            season=pd.Timedelta(hours=24),
        ),
        MethodSpec(names=names, refit_seconds=4 * 3600, training=training),
        use_ray,
        [*notes, "experiments concatenated per service on a 15 s clock; origins every 5 min, horizon 5 min"],
        results,
    )


def run_synthetic(
    quick: bool,
    names: tuple[str, ...],
    training: dict[str, Any],
    use_ray: bool,
    notes: list[str],
    results: Path,
) -> dict[str, Any]:
    from mora_platform.data.synthetic import generate_fleet

    n_services, days = (2, 6) if quick else (4, 10)
    fleet = generate_fleet(n_services=n_services, days=days, step_seconds=60, seed=7)
    return run(
        "synthetic",
        fleet,
        BacktestConfig(
            step=pd.Timedelta(hours=1),
            horizon=pd.Timedelta(hours=1),
            warmup=pd.Timedelta(days=3),
            season=pd.Timedelta(hours=24),
        ),
        MethodSpec(names=names, refit_seconds=24 * 3600, training=training),
        use_ray,
        [*notes, f"generate_fleet(n_services={n_services}, days={days}, step_seconds=60, seed=7)"],
        results,
    )


def write_summary(reports: dict[str, dict[str, Any]], results: Path) -> None:
    """``summary.md`` over the runs found in ``results`` (slack and under-provisioning side by side)."""
    lines = ["# Backtest: platform vs VPA, KRR, Crane, max, reactive", ""]
    lines += [f"{SUMMARY_DEFINITIONS} Numbers as measured by benchmarks/backtest_report.py.", ""]
    for name, report in reports.items():
        lines += summary_lines(name, report)
    results.mkdir(parents=True, exist_ok=True)
    (results / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"summary: {results / 'summary.md'}")


if __name__ == "__main__":
    main()
