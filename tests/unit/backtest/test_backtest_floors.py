"""One floor policy for every method (issue 12): parsing, the engine, the report and `--floors`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from backtest_fixtures import START
from typer.testing import CliRunner

from mora_platform.backtest.baselines import (
    DEFAULT_FLOORS,
    FLOOR_POLICIES,
    create_recommender,
    parse_floor_policy,
)
from mora_platform.backtest.engine import BacktestConfig, BacktestSeries, replay_series, run_backtest
from mora_platform.backtest.report import build_report, format_table, summary_markdown
from mora_platform.cli import app
from mora_platform.recommend.policy import CPU_FLOOR_MILLICORES, MEMORY_FLOOR_MIB

MIB = 2**20


def tiny_series(name: str = "tiny") -> BacktestSeries:
    """A service far below the default floors: ~2 millicores of CPU and ~8 MiB of memory."""
    index = pd.date_range(START, periods=3 * 24 * 6, freq="10min")
    rng = np.random.default_rng(0)
    cpu = 0.002 + rng.uniform(0, 0.0005, len(index))
    memory = 8 * MIB + rng.uniform(0, MIB, len(index))
    return BacktestSeries(
        name=name, usage={"cpu": pd.Series(cpu, index=index), "memory": pd.Series(memory, index=index)}
    )


def test_parse_floor_policy() -> None:
    assert parse_floor_policy("default") is DEFAULT_FLOORS
    assert (DEFAULT_FLOORS.cpu_millicores, DEFAULT_FLOORS.memory_mib) == (
        CPU_FLOOR_MILLICORES,
        MEMORY_FLOOR_MIB,
    )
    assert parse_floor_policy("Kubernetes") is FLOOR_POLICIES["kubernetes"]
    none = parse_floor_policy("none")
    assert none.floor("cpu") == 0 and none.floor("memory") == 0
    explicit = parse_floor_policy("5m,16Mi")
    assert explicit.floor("cpu") == pytest.approx(0.005) and explicit.floor("memory") == 16 * MIB
    assert parse_floor_policy("0.25,1Gi").cpu_millicores == 250
    assert parse_floor_policy("1m, 512Ki").memory_mib == 0.5
    for bad in ("", "lots", "5m", "5m,16Mi,1", "-1m,16Mi", "5m,16MB", "5x,16Mi"):
        with pytest.raises(ValueError, match="floors"):
            parse_floor_policy(bad)


def test_baseline_below_the_floor_is_raised_under_default_and_left_under_none() -> None:
    config = BacktestConfig(step=pd.Timedelta(hours=2), warmup=pd.Timedelta(hours=24))
    results = {}
    for policy in ("default", "none", "kubernetes", "5m,16Mi"):
        cfg = replace(config, floors=parse_floor_policy(policy))
        replay = replay_series(tiny_series(), [create_recommender("krr"), create_recommender("vpa")], cfg)
        results[policy] = {
            r: {m: t.requests() for m, t in rep.traces.items()} for r, rep in replay.resources.items()
        }
    default, none = results["default"], results["none"]
    # KRR's own answer (~2.5m, ~10.5 MiB) is below the default floors: raised to 10m / 32 MiB
    assert np.allclose(default["cpu"]["krr"], 0.010) and np.allclose(default["memory"]["krr"], 32 * MIB)
    # under "none" it is left where KRR put it (rounded to whole millicores / MiB only)
    assert (none["cpu"]["krr"] < 0.010).all() and (none["cpu"]["krr"] >= 0.002).all()
    assert (none["memory"]["krr"] < 32 * MIB).all() and (none["memory"]["krr"] >= 8 * MIB).all()
    # explicit floors in between
    assert np.allclose(results["5m,16Mi"]["cpu"]["krr"], 0.005)
    assert np.allclose(results["5m,16Mi"]["memory"]["krr"], 16 * MIB)
    assert np.array_equal(results["kubernetes"]["cpu"]["krr"], none["cpu"]["krr"])
    # VPA's own minimums (25m / 250 MiB) are above every policy here: unchanged
    for policy in results:
        assert np.allclose(results[policy]["cpu"]["vpa"], 0.025)
        assert np.allclose(results[policy]["memory"]["vpa"], 250 * MIB)


def test_report_names_the_floor_policy(tmp_path: Path) -> None:
    for policy in ("default", "none", "5m,16Mi"):
        config = BacktestConfig(
            step=pd.Timedelta(hours=2), warmup=pd.Timedelta(hours=24), floors=parse_floor_policy(policy)
        )

        def make() -> list:  # type: ignore[type-arg]
            return [create_recommender("krr"), create_recommender("vpa")]

        report = build_report(
            run_backtest([tiny_series()], make, config), make(), config, source="unit", mode="continuous"
        )
        report = json.loads(json.dumps(report))  # as read back from backtest.json
        floors = report["config"]["floor_policy"]
        assert floors == config.floors.to_dict() and floors["name"] == policy
        krr = next(m for m in report["methods"] if m["name"] == "krr")
        assert krr["floors"] == {"cpu": config.floors.floor("cpu"), "memory": config.floors.floor("memory")}
        vpa = next(m for m in report["methods"] if m["name"] == "vpa")
        assert vpa["floors"]["cpu"] == 0.025  # its own minimum, higher than every policy here
        summary = summary_markdown(report)
        assert f"Floor policy (--floors): {policy}" in summary
        assert f"floors: {policy}" in format_table(report)
    assert "default (10m CPU, 32 MiB memory)" in summary_markdown(
        json.loads(json.dumps(build_report([], [], BacktestConfig(), source="u", mode="m")))
    )


def write_tiny_csv(directory: Path) -> None:
    directory.mkdir()
    usage = tiny_series().usage["cpu"]
    pd.DataFrame(
        {"timestamp": usage.index.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": 1000 * usage.to_numpy()}
    ).to_csv(directory / "tiny.csv", index=False)


@pytest.mark.parametrize(
    ("flag", "expected_name"), [(None, "default"), ("none", "none"), ("5m,16Mi", "5m,16Mi")]
)
def test_cli_floors(tmp_path: Path, flag: str | None, expected_name: str) -> None:
    write_tiny_csv(tmp_path / "traces")
    out = tmp_path / "out"
    args = ["backtest", str(tmp_path / "traces"), "--out", str(out), "--unit", "millicores"]
    args += ["--methods", "krr,crane", "--step", "2h", "--warmup", "12h", "--no-plots"]
    if flag is not None:
        args += ["--floors", flag]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "backtest.json").read_text())
    assert report["config"]["floor_policy"]["name"] == expected_name
    requests = report["series"][0]["resources"]["cpu"]["trace"]["requests"]["crane"]
    floor = {"default": 0.010, "none": 0.0, "5m,16Mi": 0.005}[expected_name]
    assert min(requests) == pytest.approx(max(floor, 0.003))  # crane's own answer rounds up to 3m
    assert f"Floor policy (--floors): {expected_name}" in (out / "summary.md").read_text()


def test_cli_rejects_a_bad_floor_policy(tmp_path: Path) -> None:
    write_tiny_csv(tmp_path / "traces")
    result = CliRunner().invoke(
        app, ["backtest", str(tmp_path / "traces"), "--methods", "krr", "--floors", "tiny"]
    )
    assert result.exit_code == 2
    assert "--floors" in result.output and "5m,16Mi" in result.output


def test_the_platform_serves_with_the_policy_floors() -> None:
    from mora_platform.backtest.runner import MethodSpec, build_methods

    for policy, cpu, memory in (
        ("default", 0.010, 32 * MIB),
        ("none", 0.001, MIB),
        ("5m,16Mi", 0.005, 16 * MIB),
    ):
        floors = parse_floor_policy(policy)
        spec = MethodSpec(
            names=("platform", "platform-min-floors", "krr"),
            refit_seconds=3600,
            training={},
            floors=(floors.cpu_millicores, floors.memory_mib),
        )
        platform, min_floors, krr = build_methods(spec)
        # the serving policy takes 1m / 1 MiB at least
        assert (platform.floor("cpu"), platform.floor("memory")) == (pytest.approx(cpu), memory)
        # every method's requests end up under the same policy floor (or its own, if higher)
        for method in (platform, min_floors, krr):
            assert floors.floor_for(method, "cpu") == max(method.floor("cpu"), floors.floor("cpu"))
        assert floors.floor_for(min_floors, "memory") == max(MIB, floors.floor("memory"))
