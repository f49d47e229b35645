"""Backtest the platform against VPA, KRR, Crane, max and reactive on the shared and synthetic data.

Two runs, each written under ``benchmarks/results/backtest/<run>/`` (``backtest.json``, ``table.txt``,
``plots/*.png``), plus ``benchmarks/results/backtest/summary.md`` with slack and under-provisioning
side by side:

- ``online-boutique``: the shared real data (7 services, short experiments on a relative 15 s clock),
  each service's experiments concatenated back to back (see ``mora_platform.backtest.inputs``);
  origins every 5 min after a 1 h warm-up, requests held 5 min, the platform refitted every 4 h;
- ``synthetic``: ``generate_fleet`` (seeded, daily and weekly cycles, bursts, memory leaks),
  1-minute samples over 10 days; origins every hour after 3 days, requests held 1 h, refit 24 h.

Run: ``.venv/bin/python benchmarks/backtest_report.py [--quick] [--no-platform] [--ray]``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from mora_platform.backtest.engine import BacktestConfig, SeriesReplay
from mora_platform.backtest.inputs import series_from_frame
from mora_platform.backtest.plots import write_plots
from mora_platform.backtest.report import build_report, format_table, write_report
from mora_platform.cli.backtest import (
    MethodSpec,
    _platform_available,
    _replay_all,
    build_methods,
    horizon_steps,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "backtest"
BASELINES = ("vpa", "krr", "crane", "max", "reactive")


def shared_data_dir() -> Path:
    env = os.environ.get("MORA_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "online-boutique"
    if not path.is_dir():
        raise SystemExit(f"shared data not found at {path} (set MORA_SHARED_DATA)")
    return path


def run(
    name: str, frame: pd.DataFrame, config: BacktestConfig, spec: MethodSpec, use_ray: bool, notes: list[str]
) -> dict[str, Any]:
    series_set = series_from_frame(frame)
    spec = replace(spec, horizon_steps=horizon_steps(series_set.series, config.horizon))
    started = time.perf_counter()
    replays: list[SeriesReplay] = _replay_all(series_set.series, spec, config, use_ray, None)
    seconds = time.perf_counter() - started
    report = build_report(
        replays,
        build_methods(MethodSpec(names=spec.names, refit_seconds=spec.refit_seconds, training={})),
        config,
        source=name,
        mode=series_set.mode,
        notes=notes,
        extra_config={
            "refit_seconds": spec.refit_seconds,
            "training": spec.training,
            "seconds": round(seconds, 1),
        },
    )
    out = RESULTS / name
    write_report(report, out)
    table = format_table(report)
    errors = [e for r in replays for e in r.errors]
    (out / "table.txt").write_text(table + ("\nerrors:\n" + "\n".join(errors) if errors else "") + "\n")
    write_plots(replays, report, out)
    print(f"== {name}: {len(replays)} series in {seconds:.1f} s\n{table}")
    for error in errors:
        print("error:", error)
    return report


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def summary_lines(name: str, report: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    for resource in ("cpu", "memory"):
        block = report["summary"][resource]
        lines += [
            f"**{resource}** (average over {len(block['series'])} series)",
            "",
            "| method | slack | under-provisioning | peak over request (windows) | changes | least slack at <=1% / <=5% under-prov. |",
            "|---|---|---|---|---|---|",
        ]
        for method, stats in block["methods"].items():
            if stats["slack"] is None:
                continue
            risk = stats["slack_at_risk"]
            at = " / ".join("-" if risk.get(k) is None else f"{100 * risk[k]:.1f}%" for k in ("0.01", "0.05"))
            lines.append(
                f"| {method} | {100 * stats['slack']:.1f}% | {100 * stats['under_provisioning_rate']:.2f}% | "
                f"{100 * stats['peak_exceed_rate']:.1f}% | {stats['changes']:.0f} | {at} |"
            )
        comparison = block.get("comparison")
        if comparison:
            rivals = ", ".join(
                f"{method} {_pct(stats['slack_at_reference_risk'])}"
                for method, stats in comparison["baselines"].items()
            )
            lines += [
                "",
                f"goal met: {comparison['goal_met']} (platform slack {_pct(comparison['slack'])} at "
                f"{_pct(comparison['under_provisioning_rate'], 2)} under-provisioning; baselines' least slack "
                f"at no more under-provisioning: {rivals})",
            ]
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer services / days (smoke run)")
    parser.add_argument("--no-platform", action="store_true", help="baselines only")
    parser.add_argument("--ray", action="store_true", help="one Ray task per series")
    parser.add_argument("--epochs", type=int, default=3, help="LSTM epochs per platform fit")
    args = parser.parse_args()

    from mora_platform.data.loaders import load_path
    from mora_platform.data.synthetic import generate_fleet

    names: tuple[str, ...] = BASELINES
    notes: list[str] = []
    if not args.no_platform:
        reason = _platform_available()
        if reason is None:
            names = ("platform", "platform-1step", *BASELINES)
        else:
            notes.append(f"platform left out: {reason}")
            print("platform left out:", reason)

    reports: dict[str, dict[str, Any]] = {}
    loaded = load_path(shared_data_dir())
    frame = loaded.frame
    if args.quick:
        frame = frame[frame["service"].isin(sorted(frame["service"].unique())[:2])]
    reports["online-boutique"] = run(
        "online-boutique",
        frame,
        BacktestConfig(
            step=pd.Timedelta(minutes=5),
            horizon=pd.Timedelta(minutes=5),
            warmup=pd.Timedelta(hours=1),
            season=pd.Timedelta(hours=24),
        ),
        MethodSpec(names=names, refit_seconds=4 * 3600, training={"epochs": args.epochs}),
        args.ray,
        [*notes, "experiments concatenated per service on a 15 s clock; origins every 5 min, horizon 5 min"],
    )
    n_services, days = (2, 6) if args.quick else (4, 10)
    fleet = generate_fleet(n_services=n_services, days=days, step_seconds=60, seed=7)
    reports["synthetic"] = run(
        "synthetic",
        fleet,
        BacktestConfig(
            step=pd.Timedelta(hours=1),
            horizon=pd.Timedelta(hours=1),
            warmup=pd.Timedelta(days=3),
            season=pd.Timedelta(hours=24),
        ),
        MethodSpec(names=names, refit_seconds=24 * 3600, training={"epochs": args.epochs}),
        args.ray,
        [*notes, f"generate_fleet(n_services={n_services}, days={days}, step_seconds=60, seed=7)"],
    )
    lines = ["# Backtest: platform vs VPA, KRR, Crane, max, reactive", ""]
    lines += [
        "slack = sum(max(request - usage, 0)) / sum(request); under-provisioning = share of samples with "
        "usage > request; averages are over series. Numbers as measured by benchmarks/backtest_report.py.",
        "",
    ]
    for name, report in reports.items():
        lines += summary_lines(name, report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"summary: {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
