"""backtest.json carries its documented fields; the PNGs are written and are PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from backtest_fixtures import daily_series

from mora_platform.backtest.baselines import Recommender, Suggestion, baseline_names, create_recommender
from mora_platform.backtest.engine import BacktestConfig, run_backtest
from mora_platform.backtest.plots import write_plots
from mora_platform.backtest.report import SCHEMA_VERSION, build_report, format_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class OracleLikeRecommender(Recommender):
    """Stands in for the platform: the last value, with a point forecast."""

    name = "platform"
    default_margins = {"cpu": 1.3, "memory": 1.3}

    def _suggest(self, history, resource, origin, horizon, frame):  # type: ignore[no-untyped-def]
        source = "up" if len(history) % 2 else "down"  # a method choosing between two sources
        return Suggestion(base=float(history.iloc[-1]), forecast=float(history.iloc[-1]), source=source)


def make_methods() -> list[Recommender]:
    return [OracleLikeRecommender(), *(create_recommender(n) for n in baseline_names())]


def test_json_schema_and_pngs(tmp_path: Path, small_config: BacktestConfig) -> None:
    replays = run_backtest(
        [daily_series(days=3, seed=1, name="a/b"), daily_series(days=3, seed=2, name="c")],
        make_methods,
        small_config,
    )
    report = build_report(replays, make_methods(), small_config, source="unit", mode="continuous")
    path = write_report(report, tmp_path)
    loaded = json.loads(path.read_text())
    assert loaded["schema"] == SCHEMA_VERSION
    assert set(loaded) >= {"schema", "created", "input", "config", "methods", "series", "summary"}
    assert loaded["config"]["horizon_seconds"] == 3600.0 and loaded["config"]["margins"] == [0.8, 1.0, 1.5]
    assert [m["name"] for m in loaded["methods"]] == ["platform", "vpa", "krr", "crane", "max", "reactive"]
    assert loaded["methods"][2]["default_margins"] == {"cpu": 1.0, "memory": 1.15}
    series = loaded["series"][0]
    assert series["name"] == "a/b"
    memory = series["resources"]["memory"]
    assert memory["unit"] == "bytes" and memory["origins"] == len(memory["trace"]["origins"])
    entry = memory["methods"]["vpa"]
    assert entry["status"] == "ok"
    assert set(entry["score"]) >= {
        "slack",
        "under_provisioning_rate",
        "peak_exceed_rate",
        "changes",
        "mean_change_relative",
    }
    assert entry["oom_risk_rate"] == entry["score"]["peak_exceed_rate"]
    assert [p["margin"] for p in entry["curve"]] == [0.8, 1.0, 1.5]
    assert set(entry["slack_at_risk"]) == {"0.01", "0.05", "0.1"}
    assert entry["forecast"] is None and entry["answered_by"] == {}
    platform = series["resources"]["cpu"]["methods"]["platform"]
    assert (
        platform["forecast"]["mase"] > 0
        and series["resources"]["cpu"]["methods"]["platform"]["oom_risk_rate"] is None
    )
    answered = platform["answered_by"]
    assert set(answered) <= {"up", "down"} and sum(answered.values()) == series["resources"]["cpu"]["origins"]
    summary = loaded["summary"]["cpu"]
    assert summary["series"] == ["a/b", "c"]
    assert sum(summary["methods"]["platform"]["answered_by"].values()) == sum(
        s["resources"]["cpu"]["origins"] for s in loaded["series"]
    )
    slacks = [s["resources"]["cpu"]["methods"]["krr"]["score"]["slack"] for s in loaded["series"]]
    assert np.isclose(summary["methods"]["krr"]["slack"], np.mean(slacks))
    comparison = summary["comparison"]
    assert comparison["reference"] == "platform" and set(comparison["baselines"]) == set(baseline_names())
    assert isinstance(comparison["goal_met"], bool)
    assert summary["comparisons"] == {"platform": comparison}

    table = format_table(loaded)
    assert "AVERAGE (2 series)" in table and "vpa" in table

    paths = write_plots(replays, report, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["a_b.png", "c.png", "summary.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
