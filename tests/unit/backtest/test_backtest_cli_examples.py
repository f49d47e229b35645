"""`mora backtest` on the Online Boutique subset shipped in examples/ (in-repo data only), default flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mora_platform.cli import app

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "online-boutique"
BASELINES = "vpa,krr,reactive"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["backtest", str(EXAMPLES), *args])


def test_defaults_fit_the_shipped_data(tmp_path: Path) -> None:
    out = tmp_path / "bt"
    result = invoke(
        "--out", str(out), "--services", "adservice,emailservice", "--methods", BASELINES, "--no-plots"
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "backtest.json").read_text())
    assert [s["name"] for s in report["series"]] == ["adservice", "emailservice"]
    for s in report["series"]:
        assert s["errors"] == []
        for resource in ("cpu", "memory"):
            assert s["resources"][resource]["origins"] == 11  # (1h46min30s - 50min - 5min) / 5min + 1
    config = report["config"]
    assert (config["warmup_seconds"], config["step_seconds"], config["horizon_seconds"]) == (3000, 300, 300)
    assert config["refit_seconds"] == 4 * 3600
    assert config["derived_settings"] == ["warmup", "step", "horizon", "refit"]
    assert report["summary"]["cpu"]["series"] == ["adservice", "emailservice"]
    assert "AVERAGE (2 series)" in result.stdout
    # summary.md: the averages as markdown, and every series
    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"# Backtest: {EXAMPLES}")
    assert "origins every 5min after a 50min warm-up, requests held 5min" in summary
    assert "| krr |" in summary and "| adservice | 11 |" in summary and "| emailservice | 11 |" in summary
    # progress on stderr: the settings, then each series as it starts and ends
    err = result.stderr
    assert (
        "backtest: settings --warmup 50min --step 5min --horizon 5min --refit 4h (derived from the data"
        in err
    )
    assert "backtest: [1/2] adservice: replaying 11 origins" in err
    assert "backtest: [2/2] emailservice done: 11 origins" in err
    assert "too short" not in err and "error" not in err


def test_flags_that_leave_no_origin_exit_2_naming_the_flag(tmp_path: Path) -> None:
    result = invoke("--out", str(tmp_path / "bt"), "--warmup", "2d", "--methods", BASELINES)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --warmup 48h leaves no origin: the longest series (frontend) is 2h14min15s (537 samples at 15s "
        "spacing); with --horizon 5min, use --warmup <= 2h9min15s (leave it out for 50min)"
    ]
    assert not (tmp_path / "bt" / "backtest.json").exists()
    horizon = invoke("--out", str(tmp_path / "bt"), "--horizon", "3h", "--methods", BASELINES)
    assert horizon.exit_code == 2 and "error: --horizon 3h leaves no origin" in horizon.stderr


def test_series_too_short_for_the_flags_are_skipped_and_the_rest_run(tmp_path: Path) -> None:
    out = tmp_path / "bt"
    result = invoke(
        "--out",
        str(out),
        "--services",
        "adservice,frontend",
        "--warmup",
        "2h",
        "--methods",
        BASELINES,
        "--no-plots",
    )
    assert result.exit_code == 0, result.output
    assert (
        "warning: skipped adservice: 1h46min30s at 15s spacing is too short for --warmup 2h + --horizon 5min"
        in result.stderr
    )
    report = json.loads((out / "backtest.json").read_text())
    assert [s["name"] for s in report["series"]] == ["frontend"]
    assert report["series"][0]["resources"]["cpu"]["origins"] == 2  # at 2h and 2h5min
    assert any(n.startswith("skipped (too short): adservice") for n in report["input"]["notes"])


@pytest.mark.slow
def test_platform_on_the_shipped_data_is_quiet(tmp_path: Path) -> None:
    """The platform (one LSTM epoch) refitted at every origin: six fits of fresh Keras networks, the
    case where TF called the first trace of each "retracing"; its C++ start-up notice stays out too."""
    out = tmp_path / "bt"
    args = [
        "backtest",
        str(EXAMPLES),
        "--out",
        str(out),
        "--services",
        "emailservice",
        "--methods",
        "platform,vpa",
    ]
    args += ["--epochs", "1", "--warmup", "100min", "--step", "1min", "--horizon", "1min", "--refit", "1min"]
    result = subprocess.run(
        [sys.executable, "-c", "from mora_platform.cli import main; main()", *args, "--no-plots"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "backtest.json").read_text())
    platform = report["series"][0]["resources"]["cpu"]["methods"]["platform"]
    assert platform["status"] == "ok" and report["series"][0]["resources"]["cpu"]["origins"] == 6
    assert sum(report["summary"]["cpu"]["methods"]["platform"]["answered_by"].values()) == 6
    assert "platform's request answered by" in (out / "summary.md").read_text()
    for noise in ("retracing", "oneDNN", "absl", "WARNING"):
        assert noise not in result.stderr, result.stderr
    assert "backtest: [1/1] emailservice done: 6 origins" in result.stderr
