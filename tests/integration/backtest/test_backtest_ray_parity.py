"""`mora backtest --ray` scores what the in-process run scores, and a failed series fails alone.

On a local Ray of this test's own (2 CPUs, no dashboard, never a cluster found on the machine): two
tiny timestamp,value series replayed with the platform (a tiny network, one fit per series) in
process and as Ray tasks give the same report numbers; a series whose rows are broken, and one
whose worker process dies (as when it is killed for memory), are reported with their errors while
the other series is scored; and the CLI's ``--ray`` path writes the same table as the in-process run.
No timings: what takes how long is ``benchmarks/backtest_scale.py``'s business.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mora_platform.backtest.engine import BacktestConfig, BacktestSeries, SeriesReplay
from mora_platform.backtest.inputs import read_value_csv
from mora_platform.backtest.report import build_report, format_table
from mora_platform.backtest.runner import MethodSpec, RayOptions, build_methods, horizon_steps, replay_all
from mora_platform.cli import app

pytestmark = pytest.mark.integration

TINY = {"epochs": 1, "seq_len": 12, "lstm": {"units": [4], "dense_units": 0}}
CONFIG = BacktestConfig(
    step=pd.Timedelta(hours=2),
    horizon=pd.Timedelta(hours=1),
    warmup=pd.Timedelta(hours=24),
    margins=(0.8, 1.0, 1.5),
)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A Ray of this module's own; ``mora backtest --ray`` finds it initialised and uses it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def write_cpu_csv(path: Path, seed: int, days: float = 1.5) -> None:
    """A CPU trace at 5 minutes (cores): daily cycle, noise, a burst."""
    times = pd.date_range("2026-03-02", periods=int(days * 288), freq="5min", tz="UTC")
    rng = np.random.default_rng(seed)
    phase = 2 * np.pi * np.arange(len(times)) / 288
    values = 0.4 + 0.2 * np.sin(phase + seed) + rng.normal(0, 0.02, len(times))
    values[200 + 10 * seed : 210 + 10 * seed] *= 2.5
    frame = pd.DataFrame(
        {"timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": values.clip(0.01).round(4)}
    )
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("traces")
    for seed, name in enumerate(("vm-a", "vm-b")):
        write_cpu_csv(directory / f"{name}.csv", seed)
    return directory


def series_of(traces: Path) -> list[BacktestSeries]:
    return [read_value_csv(path) for path in sorted(traces.glob("*.csv"))]


def report_of(replays: list[SeriesReplay], spec: MethodSpec) -> dict[str, Any]:
    return build_report(replays, build_methods(spec), CONFIG, source="test", mode="continuous")


class WorkerDeath:
    """Unpickled in the Ray worker as ``os._exit(3)``: the worker dies as a killed one would."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return os._exit, (3,)


def test_ray_and_in_process_give_the_same_scores(traces: Path, local_ray: None) -> None:
    series = series_of(traces)
    spec = MethodSpec(
        names=("platform", "vpa", "max"),
        refit_seconds=30 * 86_400,  # one fit per series
        training=TINY,
        horizon_steps=horizon_steps(series, CONFIG.horizon),
    )
    here = replay_all(series, spec, CONFIG, use_ray=False, ray_address=None)
    there = replay_all(series, spec, CONFIG, use_ray=True, ray_address=None)
    assert [r.name for r in there] == ["vm-a", "vm-b"]
    for replay in (*here, *there):
        assert not replay.errors, replay.errors
        assert replay.resources["cpu"].traces["platform"].ok
    local, remote = report_of(here, spec), report_of(there, spec)
    assert remote["series"] == local["series"]  # every score, curve and request, bit for bit
    assert remote["summary"] == local["summary"]
    assert format_table(remote) == format_table(local)


def test_a_failed_series_on_ray_does_not_fail_the_others(traces: Path, local_ray: None) -> None:
    good = series_of(traces)[0]
    broken = BacktestSeries(name="broken", usage=dict(good.usage), frame=pd.DataFrame({"nope": [1.0]}))
    lost = BacktestSeries(name="lost", usage=dict(good.usage), notes=[WorkerDeath()])  # type: ignore[list-item]
    spec = MethodSpec(names=("vpa", "max"), refit_seconds=86_400, training={})
    replays = replay_all(
        [broken, good, lost], spec, CONFIG, True, None, ray_options=RayOptions(max_retries=0)
    )
    assert [r.name for r in replays] == ["broken", good.name, "lost"]
    failed, scored, dead = replays
    assert failed.resources == {} and len(failed.errors) == 1
    assert "series 'broken' failed: ValueError" in failed.errors[0] and "timestamp" in failed.errors[0]
    assert dead.resources == {} and len(dead.errors) == 1 and "series 'lost' failed" in dead.errors[0]
    assert not scored.errors and scored.resources["cpu"].traces["vpa"].ok
    report = build_report(replays, build_methods(spec), CONFIG, source="test", mode="continuous")
    assert report["summary"]["cpu"]["series"] == [good.name]
    assert [s["errors"] for s in report["series"]] == [failed.errors, [], dead.errors]


def test_cli_ray_run_writes_the_in_process_table(traces: Path, local_ray: None, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--methods", "vpa,krr,max", "--step", "2h", "--warmup", "12h", "--no-plots"]
    local = runner.invoke(app, ["backtest", str(traces), "--out", str(tmp_path / "local"), *common])
    remote = runner.invoke(
        app,
        ["backtest", str(traces), "--out", str(tmp_path / "ray"), "--ray", "--ray-max-calls", "2", *common],
    )
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    documents = [json.loads((tmp_path / out / "backtest.json").read_text()) for out in ("local", "ray")]
    assert documents[1]["series"] == documents[0]["series"]
    assert documents[1]["summary"] == documents[0]["summary"]
    assert documents[1]["config"]["ray"] and documents[1]["config"]["ray_max_calls"] == 2
    # progress: the submission, then a line per finished series naming its worker
    assert (
        "2 Ray tasks submitted, longest first (1 CPU each, a worker replaced after 2 series" in remote.stderr
    )
    done = [line for line in remote.stderr.splitlines() if " done: " in line]
    assert len(done) == 2 and all(", worker " in line and "peak RSS" in line for line in done)
    # in process: each finished series with the process' RSS
    assert sum(", RSS " in line for line in local.stderr.splitlines()) == 2
