"""Benchmark: `mora backtest` on N CPU-only series, in one process and spread over a local Ray.

The series are seeded synthetic CPU traces shaped like public cloud ones, written as two-column
``timestamp,value`` CSVs (cores, every 5 minutes): series ``k`` is the CPU of
``generate_fleet(1, days_k, step_seconds=300, seed=SEED + k, preset=PRESETS[k % 7])`` (a daily and
weekly cycle with bursts, plus in turn nothing more, idle stretches, heavy-tailed bursts, flash
crowds, a regime shift, a changing weekly pattern, a slow drift; ``mora_platform.data.synthetic``),
their lengths spread evenly from the shortest to the longest.

Each mode is the real command, ``mora backtest DIR`` (every default: methods, derived settings, LSTM
epochs), run as its own process so its memory is its own: ``in-process``, then ``ray``
(``--ray --ray-address local --ray-cpus CPUS``: a Ray of the run's own, one series per task, a
worker replaced after each series). While it runs, the RSS of the driver (the command's process) and
of every Ray worker below it is sampled with psutil every half second. Per mode it reports: wall
time, series per minute, the driver's peak RSS, each worker's peak RSS (and the series it ran), and
for the in-process run the RSS after each series (the command prints it): from the first series to
the last it should stay flat. Both modes must give the same scores: every number of the two
``backtest.json`` (per series and averaged) is compared and the largest difference printed.

Writes ``benchmarks/results/backtest_scale-<UTC time>.json`` and prints a table.

    .venv/bin/python benchmarks/backtest_scale.py            # 6 series of 6-12 days (~10-15 min on 2 idle cores)
    .venv/bin/python benchmarks/backtest_scale.py --quick    # 3 series of 3-4 days, 1 epoch: a smoke run
    .venv/bin/python benchmarks/backtest_scale.py --full     # the issue's: 11 series of 2 weeks to 2 months
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

#: Shapes the series take in turn (None: the plain fleet's daily and weekly cycle with bursts).
SHAPES: tuple[str | None, ...] = (
    None,
    "idle-periods",
    "heavy-tailed-bursts",
    "flash-crowd",
    "regime-shift",
    "weekly-change",
    "slow-drift",
)
STEP_SECONDS = 300
#: Sizes: series, shortest and longest (days), LSTM epochs (None: the command's default).
SIZES: dict[str, dict[str, Any]] = {
    "default": {"series": 6, "min_days": 6.0, "max_days": 12.0, "epochs": None},
    "quick": {"series": 3, "min_days": 3.0, "max_days": 4.0, "epochs": 1},
    "full": {"series": 11, "min_days": 14.0, "max_days": 60.0, "epochs": None},
}
#: RSS growth from the first series to the last (in process) still called flat.
FLAT_TOLERANCE = 0.10
SAMPLE_SECONDS = 0.5
_DONE_IN_PROCESS = re.compile(r"\[(\d+)/(\d+)\] (\S+) done: .*RSS (\d+) MB")
_DONE_ON_RAY = re.compile(r"\] (\S+) done: .*worker (\d+) peak RSS (\d+) MB")


def series_days(count: int, shortest: float, longest: float) -> list[float]:
    """Lengths spread evenly from ``shortest`` to ``longest`` days (in whole hours)."""
    if count == 1:
        return [round(longest * 24) / 24]
    return [round((shortest + (longest - shortest) * k / (count - 1)) * 24) / 24 for k in range(count)]


def write_series(
    directory: Path, count: int, shortest: float, longest: float, seed: int
) -> list[dict[str, Any]]:
    """The CPU traces as ``timestamp,value`` CSVs (cores); returns what each one is."""
    import numpy as np
    import pandas as pd

    from mora_platform.data.synthetic import generate_fleet

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for k, days in enumerate(series_days(count, shortest, longest)):
        shape = SHAPES[k % len(SHAPES)]
        frame = generate_fleet(1, days=days, step_seconds=STEP_SECONDS, seed=seed + k, preset=shape)
        cpu = frame["cpu_cores_value"].to_numpy(dtype="float64")
        name = f"cpu-{k:02d}-{shape or 'plain'}"
        stamps = pd.DatetimeIndex(frame["timestamp"]).strftime("%Y-%m-%dT%H:%M:%SZ")
        pd.DataFrame({"timestamp": stamps, "value": np.round(cpu, 6)}).to_csv(
            directory / f"{name}.csv", index=False
        )
        written.append(
            {
                "name": name,
                "shape": shape or "plain",
                "days": days,
                "rows": len(cpu),
                "seed": seed + k,
                "cores_mean": round(float(cpu.mean()), 4),
                "cores_p99": round(float(np.quantile(cpu, 0.99)), 4),
                "cores_max": round(float(cpu.max()), 4),
            }
        )
    return written


def _kind(process: psutil.Process, driver_pid: int) -> str:
    if process.pid == driver_pid:
        return "driver"
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    return "worker" if command.startswith("ray::") or "default_worker.py" in command else "ray-system"


class TreeSampler:
    """Peak RSS per process of the driver's tree (driver, Ray workers, Ray's own processes)."""

    def __init__(self, driver_pid: int, interval_s: float = SAMPLE_SECONDS) -> None:
        self.driver_pid = driver_pid
        self.interval_s = interval_s
        self.peaks: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss_mb(self, pid: int) -> float | None:
        try:
            return psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            return None

    def sample(self) -> None:
        try:
            driver = psutil.Process(self.driver_pid)
            tree = [driver, *driver.children(recursive=True)]
        except psutil.Error:
            return
        for process in tree:
            try:
                rss = process.memory_info().rss / 2**20
            except psutil.Error:
                continue
            if process.pid not in self.kinds or self.kinds[process.pid] == "ray-system":
                self.kinds[process.pid] = _kind(process, self.driver_pid)  # a worker may rename itself late
            self.peaks[process.pid] = max(self.peaks.get(process.pid, 0.0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def of_kind(self, kind: str) -> dict[int, float]:
        return {pid: round(peak, 1) for pid, peak in self.peaks.items() if self.kinds.get(pid) == kind}


def run_mode(
    mode: str, traces: Path, out: Path, args: argparse.Namespace, epochs: int | None
) -> dict[str, Any]:
    """One ``mora backtest`` run as its own process, sampled while it runs."""
    command = [sys.executable, "-c", "from mora_platform.cli import main; main()", "backtest", str(traces)]
    command += ["--out", str(out), "--no-plots"]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    if mode == "ray":
        command += ["--ray", "--ray-address", "local", "--ray-cpus", str(args.cpus)]
        command += ["--ray-max-calls", str(args.max_calls)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MORA_RAY_ADDRESS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    lines: list[str] = []
    after_series: list[dict[str, Any]] = []
    workers_ran: dict[int, list[str]] = {}
    load_before = os.getloadavg()
    started = time.perf_counter()
    with (out.parent / f"{mode}.stdout.txt").open("w") as stdout:
        child = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        with TreeSampler(child.pid) as sampler:
            assert child.stderr is not None
            for raw in child.stderr:
                line = raw.rstrip("\n")
                lines.append(line)
                if line.startswith("backtest:"):
                    print(f"  [{mode}] {line}", flush=True)
                if (found := _DONE_IN_PROCESS.search(line)) is not None:
                    after_series.append(
                        {
                            "series": found.group(3),
                            "rss_mb": float(found.group(4)),
                            "seconds": round(time.perf_counter() - started, 1),
                        }
                    )
                if (found := _DONE_ON_RAY.search(line)) is not None:
                    workers_ran.setdefault(int(found.group(2)), []).append(found.group(1))
            code = child.wait()
    wall = time.perf_counter() - started
    row: dict[str, Any] = {
        "mode": mode,
        "command": command[3:],
        "exit_code": code,
        "wall_seconds": round(wall, 1),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "driver_peak_rss_mb": round(max(sampler.of_kind("driver").values(), default=0.0), 1),
        "settings": next((ln.split("settings ", 1)[1] for ln in lines if "backtest: settings " in ln), None),
    }
    if code != 0:
        row["stderr_tail"] = lines[-30:]
        return row
    report = json.loads((out / "backtest.json").read_text())
    failed = {s["name"]: s["errors"] for s in report["series"] if not s["resources"]}
    scored = len(report["series"]) - len(failed)
    row.update(
        series=len(report["series"]),
        succeeded=scored,
        failed=failed,
        series_per_minute=round(scored / (wall / 60), 3) if wall else None,
    )
    if mode == "ray":
        peaks = sampler.of_kind("worker")
        row["workers"] = [
            {"pid": pid, "peak_rss_mb": peak, "series": workers_ran.get(pid, [])}
            for pid, peak in sorted(peaks.items())
        ]
        busy = [w["peak_rss_mb"] for w in row["workers"] if w["series"]]
        row["worker_peak_rss_mb_max"] = max(busy, default=None)
        row["ray_system_peak_rss_mb"] = round(sum(sampler.of_kind("ray-system").values()), 1)
        row["cpus"] = args.cpus
        row["max_calls"] = args.max_calls
    else:
        row["rss_after_each_series"] = after_series
        if after_series:
            first, last = after_series[0]["rss_mb"], after_series[-1]["rss_mb"]
            growth = last - first
            row["rss_first_series_mb"], row["rss_last_series_mb"] = first, last
            row["rss_growth_mb"] = round(growth, 1)
            row["rss_growth_per_series_mb"] = round(growth / max(len(after_series) - 1, 1), 1)
            row["flat"] = abs(growth) <= FLAT_TOLERANCE * first
    return row


def _numbers(tree: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a JSON tree by its path."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_numbers(value, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(tree, list):
        out = {}
        for k, value in enumerate(tree):
            out.update(_numbers(value, f"{path}[{k}]"))
        return out
    return {path: tree}


def compare_reports(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """How far the two runs' scores are apart: every number per series and averaged, and the table."""
    from mora_platform.backtest.report import format_table

    a = _numbers({"series": first["series"], "summary": first["summary"]})
    b = _numbers({"series": second["series"], "summary": second["summary"]})
    differing, max_abs, max_rel, worst = [], 0.0, 0.0, None
    for path in sorted(set(a) | set(b)):
        x, y = a.get(path), b.get(path)
        if x == y:
            continue
        differing.append(path)
        if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(x, bool):
            gap = abs(float(x) - float(y))
            relative = gap / max(abs(float(x)), abs(float(y)), 1e-300)
            if math.isfinite(gap) and gap > max_abs:
                max_abs, worst = gap, path
            max_rel = max(max_rel, relative if math.isfinite(relative) else 0.0)
    return {
        "values_compared": len(set(a) | set(b)),
        "values_differing": len(differing),
        "identical": not differing,
        "table_identical": format_table(first) == format_table(second),
        "max_abs_difference": max_abs,
        "max_relative_difference": max_rel,
        "largest_at": worst,
        "differing_examples": differing[:10],
    }


def _mb(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "-"


def table(rows: dict[str, dict[str, Any]]) -> str:
    header = (
        f"{'mode':<12} {'ok':>6} {'wall s':>8} {'series/min':>10} {'driver peak MB':>14} "
        f"{'RSS 1st->last series MB':>24} {'worker peak MB (each, ran a series)':>36}"
    )
    lines = [header, "-" * len(header)]
    for mode, row in rows.items():
        if row.get("exit_code"):
            lines.append(f"{mode:<12} failed (exit code {row['exit_code']})")
            continue
        drift = (
            f"{_mb(row['rss_first_series_mb'])}->{_mb(row['rss_last_series_mb'])} ({row['rss_growth_mb']:+.0f})"
            if "rss_first_series_mb" in row
            else "-"
        )
        each = ",".join(_mb(w["peak_rss_mb"]) for w in row.get("workers", []) if w["series"]) or "-"
        lines.append(
            f"{mode:<12} {row['succeeded']:>2}/{row['series']:<3} {row['wall_seconds']:>8.1f} "
            f"{row['series_per_minute'] or 0:>10.2f} {row['driver_peak_rss_mb']:>14.0f} {drift:>24} {each[:36]:>36}"
        )
    return "\n".join(lines)


def remarks(rows: dict[str, dict[str, Any]], comparison: dict[str, Any] | None) -> list[str]:
    out: list[str] = []
    local, ray = rows.get("in-process"), rows.get("ray")
    if local and "rss_growth_mb" in local:
        verdict = "flat" if local["flat"] else "NOT flat"
        out.append(
            f"in-process RSS after the first series {local['rss_first_series_mb']:.0f} MB, after the last "
            f"{local['rss_last_series_mb']:.0f} MB ({local['rss_growth_mb']:+.0f} MB, "
            f"{local['rss_growth_per_series_mb']:+.1f} MB a series): {verdict}"
        )
    if local and ray and not local.get("exit_code") and not ray.get("exit_code") and ray["wall_seconds"]:
        out.append(
            f"ray on {ray['cpus']} CPUs: {local['wall_seconds'] / ray['wall_seconds']:.2f}x the in-process speed "
            f"({ray['wall_seconds']:.0f} s against {local['wall_seconds']:.0f} s)"
        )
    if comparison is not None:
        if comparison["identical"]:
            out.append(f"scores: identical in both modes ({comparison['values_compared']} values compared)")
        else:
            out.append(
                f"scores: {comparison['values_differing']} of {comparison['values_compared']} values differ, "
                f"at most {comparison['max_abs_difference']:.3g} (relative {comparison['max_relative_difference']:.3g}, "
                f"at {comparison['largest_at']}); the table is "
                + ("identical" if comparison["table_identical"] else "NOT identical")
            )
    for mode, row in rows.items():
        if row.get("failed"):
            out.append(f"{mode}: series failed: {', '.join(row['failed'])}")
        load = row.get("load_average_1m", {})
        if load.get("before", 0) > 0.5:
            out.append(f"{mode}: the machine was busy (1-minute load {load['before']} before the run)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run: 3 series of 3-4 days, 1 LSTM epoch")
    size.add_argument("--full", action="store_true", help="the issue's size: 11 series of 14-60 days")
    parser.add_argument("--series", type=int, default=None, help="number of series (overrides the size)")
    parser.add_argument("--min-days", type=float, default=None, help="shortest series, days")
    parser.add_argument("--max-days", type=float, default=None, help="longest series, days")
    parser.add_argument(
        "--epochs", type=int, default=None, help="LSTM epochs per fit (default: the command's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (--ray-cpus)")
    parser.add_argument(
        "--max-calls", type=int, default=1, help="series per Ray worker before it is replaced"
    )
    parser.add_argument("--modes", default="in-process,ray", help="in-process and/or ray")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the series and both runs' outputs")
    args = parser.parse_args(argv)

    name = "quick" if args.quick else "full" if args.full else "default"
    sizes = dict(SIZES[name])
    for key in ("series", "min_days", "max_days", "epochs"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"in-process", "ray"}
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}")

    work = Path(tempfile.mkdtemp(prefix="mora-backtest-scale-"))
    rows: dict[str, dict[str, Any]] = {}
    try:
        series = write_series(work / "cpu", sizes["series"], sizes["min_days"], sizes["max_days"], args.seed)
        print(
            f"{len(series)} CPU series of {series[0]['days']:g} to {series[-1]['days']:g} days at "
            f"{STEP_SECONDS // 60} min in {work / 'cpu'}",
            flush=True,
        )
        for mode in modes:
            print(f"{mode}: mora backtest", flush=True)
            rows[mode] = run_mode(mode, work / "cpu", work / f"out-{mode}", args, sizes["epochs"])
        reports = {
            mode: json.loads((work / f"out-{mode}" / "backtest.json").read_text())
            for mode, row in rows.items()
            if row.get("exit_code") == 0
        }
        comparison = compare_reports(reports["in-process"], reports["ray"]) if len(reports) == 2 else None
        tables = {}
        if reports:
            from mora_platform.backtest.report import format_table

            tables = {mode: format_table(report) for mode, report in reports.items()}
    finally:
        if args.keep:
            print(f"kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    notes = remarks(rows, comparison)
    result = {
        "benchmark": "backtest_scale",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "size": name,
        "series": series,
        "step_seconds": STEP_SECONDS,
        "epochs": sizes["epochs"],
        "results": rows,
        "scores_comparison": comparison,
        "remarks": notes,
        "tables": tables,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"backtest_scale-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2))
    print()
    print(table(rows))
    for remark in notes:
        print(f"- {remark}")
    print(f"\nresults: {path}")
    return 0 if rows and all(row.get("exit_code") == 0 for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
