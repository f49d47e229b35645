"""Backtest the platform against VPA, KRR, Crane, max and reactive on the shared and synthetic data.

Every dataset is split once into a development and a confirmation part
(``mora_platform.backtest.evaluation``: other services and later time; choices are made on development
only). Each (dataset, part) is one run written under ``benchmarks/results/backtest/<dataset>/<part>/``
(``backtest.json``, ``table.txt``, ``plots/*.png``); ``benchmarks/results/backtest/evaluation.json``
(``evaluation.side_by_side``) and ``summary.md`` put the parts side by side, then detail each run.
``--part development|confirmation|both`` (default both) picks the parts to run; the summary covers
every run found under the results directory.

- ``online-boutique``: the shared real data (7 services x 36 experiments, short runs on a relative 15 s
  clock), each part's experiments of a service concatenated back to back (see
  ``mora_platform.backtest.inputs``): development 4 services x 22 conditions, confirmation the other 3
  services x the other 14 conditions; origins every 5 min after a 1 h warm-up, requests held 5 min,
  the platform refitted every 4 h. ``--quick``: one service per part;
- ``synthetic``: ``generate_fleet`` (seeded, daily and weekly cycles, bursts, memory leaks), 6 services
  x 12 days at 1 min (``--quick``: 2 x 6); even ``svc-NN`` are development, scored from day 3 up to the
  cut at day 8 (``--quick``: 4); odd ones confirmation, scored after the cut with the days before it as
  history; origins every hour, requests held 1 h, refit 24 h;
- ``preset:<name>`` (``presets`` = all of them: ``regime-shift``, ``flash-crowd``, ``slow-drift``,
  ``idle-periods``, ``heavy-tailed-bursts``, ``weekly-change``, ``memory-leak``, ``cpu-only``; see
  ``mora_platform.data.synthetic``): ``generate_fleet(..., preset=<name>)``, 4 services x 12 days
  (``--quick``: 2 x 6), split and scored like ``synthetic``.

The platform is trained with ``calibration_horizon_steps`` = rows per horizon and coverage 0.99 per
held step, and answers three ways from the same fits: ``platform`` (``--calibrate-on``, default ``auto``,
``ServiceModel.held_requests``: the head-room calibrated on the 1,440 rows before each origin for the
cheapest of the fused forecast, the recent peak and the peak-quantile forecast of the usage over the held
steps (``models.peak``, fitted with every platform fit; ``--no-peak`` leaves it out, ``--peak-head``
fuses its LSTM sequence head in), unless a
training-time head-room covered the rows seen since the fit as promised at no higher cost),
``platform-validation`` (the training-time head-room
alone) and ``platform-1step`` (the one-step head-room, for reference). Every method's request is rounded
up to whole millicores and MiB and raised to one floor policy (``--floors``, as ``mora backtest``'s:
``default`` the platform's serving floors, 10m CPU / 32 MiB, for every method; ``kubernetes`` 1m / 1 MiB;
``none``; or ``5m,16Mi``), which ``summary.md`` names; the ``platform`` row serves with those floors
(``platform-min-floors``, the platform at 1m / 1 MiB, is ``--floors kubernetes`` now, and is no longer
run). ``summary.md`` says which source answered the platform's requests, as a share of origins.

Run: ``.venv/bin/python benchmarks/backtest_report.py [--quick] [--no-platform] [--ray]
[--datasets online-boutique,synthetic,presets|preset:NAME,...] [--part development|confirmation|both]
[--plain-fusion] [--head-room relative] [--no-peak | --peak-head]
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
from mora_platform.backtest.evaluation import (
    PARTS,
    side_by_side,
    side_by_side_lines,
    split_dataset,
    warmup_for,
)
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
from mora_platform.backtest.runner import (
    MethodSpec,
    build_methods,
    horizon_steps,
    platform_available,
    replay_all,
)
from mora_platform.data.synthetic import preset_names
from mora_platform.models.recent import RECENT_ROWS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "backtest"
PRESET_PREFIX = "preset:"
PRESET_DATASETS = tuple(f"{PRESET_PREFIX}{name}" for name in preset_names())
DATASETS = ("online-boutique", "synthetic", *PRESET_DATASETS)
DEFAULT_DATASETS = "online-boutique,synthetic,presets"
# services x days of the generated fleets: (full, --quick)
SYNTHETIC_SIZE = {False: (6, 12), True: (2, 6)}
PRESET_SIZE = {False: (4, 12), True: (2, 6)}
SYNTHETIC_SEED = 7
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
    extra: dict[str, Any] | None = None,
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
    replays: list[SeriesReplay] = replay_all(series_set.series, spec, config, use_ray, None)
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
            **(extra or {}),
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


def dataset_dir(dataset: str) -> str:
    """The results sub-directory of a dataset (``preset:flash-crowd`` -> ``preset-flash-crowd``)."""
    return dataset.replace(":", "-")


def expand_datasets(text: str) -> list[str]:
    """``--datasets``: comma-separated names, ``presets`` standing for every ``preset:<name>``."""
    wanted: list[str] = []
    for item in (d.strip() for d in text.split(",")):
        for name in PRESET_DATASETS if item == "presets" else (item,) if item else ():
            if name not in wanted:
                wanted.append(name)
    unknown = [d for d in wanted if d not in DATASETS]
    if unknown:
        raise SystemExit(f"--datasets: unknown {unknown}; choose from {', '.join(DATASETS)} or presets")
    return wanted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer services / days (smoke run)")
    parser.add_argument("--no-platform", action="store_true", help="baselines only")
    parser.add_argument("--ray", action="store_true", help="one Ray task per series")
    parser.add_argument("--epochs", type=int, default=3, help="LSTM epochs per platform fit")
    parser.add_argument(
        "--datasets",
        default=DEFAULT_DATASETS,
        help="comma-separated runs: online-boutique, synthetic, preset:NAME, presets (every preset)",
    )
    parser.add_argument(
        "--part",
        choices=(*PARTS, "both"),
        default="both",
        help="the evaluation part(s) to run: development (where choices are made), confirmation, both",
    )
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
        "--no-peak",
        action="store_true",
        help="no peak-quantile candidate (models.peak): the platform as before issue 16",
    )
    parser.add_argument(
        "--peak-head",
        action="store_true",
        help="the peak-quantile candidate with its LSTM sequence head fused in (models.peak_lstm; off by default)",
    )
    parser.add_argument(
        "--floors",
        default="default",
        help="one floor for every method's requests: default (the platform's serving floors, 10m / 32 MiB), "
        "kubernetes (1m / 1 MiB), none, or CPU,MEMORY such as 5m,16Mi",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    PLATFORM_OPTIONS.update(head_room=args.calibrate_on, recent_rows=args.recent_rows)
    try:
        FLOORS["policy"] = parse_floor_policy(args.floors)
    except ValueError as exc:
        raise SystemExit(f"--{exc}") from None
    wanted = expand_datasets(args.datasets)
    parts: tuple[str, ...] = PARTS if args.part == "both" else (args.part,)
    results: Path = args.results
    training: dict[str, Any] = {"epochs": args.epochs}
    if args.plain_fusion:
        training.update(level_member=False, fusion="fixed")
    if args.split_by != "rows":
        training["split_by"] = args.split_by
    if args.head_room != "absolute":
        training["head_room"] = args.head_room
    if args.no_peak:
        training["peak"] = {"enabled": False}
    elif args.peak_head:
        training["peak"] = {"lstm": True}

    names: tuple[str, ...] = BASELINES
    notes: list[str] = []
    if not args.no_platform:
        reason = platform_available()
        if reason is None:
            names = ("platform", "platform-validation", "platform-1step", *BASELINES)
        else:
            notes.append(f"platform left out: {reason}")
            print("platform left out:", reason)

    for dataset in wanted:
        if dataset == "online-boutique":
            run_online_boutique(args.quick, names, training, args.ray, notes, results, parts)
        else:
            preset = dataset[len(PRESET_PREFIX) :] if dataset.startswith(PRESET_PREFIX) else None
            run_synthetic(args.quick, names, training, args.ray, notes, results, parts, preset)
    write_summary(collect_reports(results), results)


def run_parts(
    dataset: str,
    frame: pd.DataFrame,
    config: BacktestConfig,
    spec: MethodSpec,
    use_ray: bool,
    notes: list[str],
    results: Path,
    parts: tuple[str, ...],
    pick: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Split ``frame`` (``evaluation.split_dataset``) and run each wanted part; ``pick`` keeps that many
    services of each part (``--quick``). A part with no rows is skipped with a message."""
    reports: dict[str, dict[str, Any]] = {}
    for part, data in split_dataset(dataset, frame).items():
        if part not in parts:
            continue
        if pick is not None:
            keep = data.services[:pick]
            data = replace(data, frame=data.frame[data.frame["service"].isin(keep)], services=keep)
        if data.frame.empty:
            print(f"== {dataset}/{part}: no rows ({data.rule}); skipped")
            continue
        reports[part] = run(
            f"{dataset_dir(dataset)}/{part}",
            data.frame,
            replace(config, warmup=warmup_for(data, config.warmup)),
            spec,
            use_ray,
            [*notes, f"evaluation part {part}: {data.rule}"],
            results,
            extra={"evaluation": {"dataset": dataset, "part": part, **data.describe()}},
        )
    return reports


def run_online_boutique(
    quick: bool,
    names: tuple[str, ...],
    training: dict[str, Any],
    use_ray: bool,
    notes: list[str],
    results: Path,
    parts: tuple[str, ...] = PARTS,
) -> dict[str, dict[str, Any]]:
    from mora_platform.data.loaders import load_path

    frame = load_path(shared_data_dir(), usage_scope="pod").frame  # the seed's figures are per pod
    return run_parts(
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
        parts,
        pick=1 if quick else None,
    )


def run_synthetic(
    quick: bool,
    names: tuple[str, ...],
    training: dict[str, Any],
    use_ray: bool,
    notes: list[str],
    results: Path,
    parts: tuple[str, ...] = PARTS,
    preset: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The plain synthetic fleet (``preset`` None) or one preset's, split and run part by part."""
    from mora_platform.data.synthetic import generate_fleet

    n_services, days = (PRESET_SIZE if preset else SYNTHETIC_SIZE)[quick]
    fleet = generate_fleet(
        n_services=n_services, days=days, step_seconds=60, seed=SYNTHETIC_SEED, preset=preset
    )
    call = f"generate_fleet(n_services={n_services}, days={days}, step_seconds=60, seed={SYNTHETIC_SEED}"
    call += f", preset={preset!r})" if preset else ")"
    return run_parts(
        f"{PRESET_PREFIX}{preset}" if preset else "synthetic",
        fleet,
        BacktestConfig(
            step=pd.Timedelta(hours=1),
            horizon=pd.Timedelta(hours=1),
            warmup=pd.Timedelta(days=3),
            season=pd.Timedelta(hours=24),
        ),
        MethodSpec(names=names, refit_seconds=24 * 3600, training=training),
        use_ray,
        [*notes, call],
        results,
        parts,
    )


def collect_reports(results: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{dataset: {part: backtest.json}}`` for every run found under ``results``."""
    reports: dict[str, dict[str, dict[str, Any]]] = {}
    for dataset in DATASETS:
        for part in PARTS:
            path = results / dataset_dir(dataset) / part / "backtest.json"
            if path.is_file():
                reports.setdefault(dataset, {})[part] = json.loads(path.read_text())
    return reports


def write_summary(reports: dict[str, dict[str, dict[str, Any]]], results: Path) -> None:
    """``evaluation.json`` (the parts side by side) and ``summary.md`` (side by side, then every run)."""
    splits = {
        dataset: {part: report.get("config", {}).get("evaluation", {}) for part, report in parts.items()}
        for dataset, parts in reports.items()
    }
    document = side_by_side(reports, splits)
    results.mkdir(parents=True, exist_ok=True)
    (results / "evaluation.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    lines = ["# Backtest: platform vs VPA, KRR, Crane, max, reactive", ""]
    lines += [f"{SUMMARY_DEFINITIONS} Numbers as measured by benchmarks/backtest_report.py.", ""]
    lines += side_by_side_lines(document)
    for dataset, parts in reports.items():
        for part, report in parts.items():
            lines += summary_lines(f"{dataset}, {part}", report)
    (results / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(side_by_side_lines(document)))
    print(f"summary: {results / 'summary.md'}, {results / 'evaluation.json'}")


if __name__ == "__main__":
    main()
