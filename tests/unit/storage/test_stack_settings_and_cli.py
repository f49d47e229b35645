"""Stack settings, stack.env handling and the data/stack CLI argument parsing (no servers)."""

from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from infra.local.config import StackSettings, port_hint
from infra.local.envfile import load_settings, read_env_file, update_env_file
from mora_platform.cli import app
from mora_platform.cli.data import parse_duration

runner = CliRunner()


def test_stack_env_is_private_and_merged(tmp_path: Path) -> None:
    path = tmp_path / "home" / "stack.env"
    update_env_file(path, {"MORA_S3_ACCESS_KEY": "ak", "MORA_S3_SECRET_KEY": "sk"})
    update_env_file(path, {"MORA_S3_ENDPOINT_URL": "http://127.0.0.1:9", "MORA_S3_SECRET_KEY": "sk2"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_env_file(path) == {
        "MORA_S3_ACCESS_KEY": "ak",
        "MORA_S3_SECRET_KEY": "sk2",
        "MORA_S3_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    with pytest.raises(ValueError, match="newline"):
        update_env_file(path, {"X": "a\nb"})


def test_load_settings_reads_stack_env_under_mora_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("MORA_S3_ENDPOINT_URL", "MORA_S3_SECRET_KEY", "MORA_S3_ACCESS_KEY", "MORA_S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "elsewhere"
    monkeypatch.setenv("MORA_HOME", str(home))
    update_env_file(
        home / "stack.env", {"MORA_S3_ENDPOINT_URL": "http://127.0.0.1:4242", "MORA_S3_SECRET_KEY": "s"}
    )
    settings = load_settings()
    assert settings.s3_endpoint_url == "http://127.0.0.1:4242"
    assert settings.s3_credentials()[1] == "s"
    monkeypatch.setenv("MORA_S3_ENDPOINT_URL", "http://minio:9000")  # the environment wins
    assert load_settings().s3_endpoint_url == "http://minio:9000"


def test_stack_ports_come_from_env_and_name_their_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORA_STACK_S3_PORT", "9001")
    config = StackSettings()  # type: ignore[call-arg]
    assert config.weed_ports().s3 == 9001
    assert config.ray_ports().dashboard == 8265
    assert StackSettings.port_names()["ray_dashboard"] == "ray_dashboard_port"
    assert port_hint("ray_dashboard_port") == (
        "`mora stack up --port ray_dashboard=N` or MORA_STACK_RAY_DASHBOARD_PORT=N"
    )


@pytest.mark.parametrize("bad", ["s3", "nope=1", "s3=abc", "s3=70000"])
def test_stack_up_rejects_bad_port_overrides(
    bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MORA_HOME", str(tmp_path))
    result = runner.invoke(app, ["stack", "up", "--port", bad])
    assert result.exit_code == 2
    assert "--port" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("45", 45), (" 2 H", 7200)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-5s", "1.5h", "10x", "s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration(text)


def test_data_synth_writes_the_fleet_and_summarises(tmp_path: Path) -> None:
    out = tmp_path / "fleet.parquet"
    result = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--services",
            "2",
            "--days",
            "0.5",
            "--step",
            "5m",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert sorted(frame["service"].unique()) == ["svc-00", "svc-01"]
    assert len(frame) == 2 * 144  # half a day at 5 minutes
    assert "svc-00" in result.output and " 144 " in result.output and "288" in result.output
    bad = runner.invoke(app, ["data", "synth", "--step", "5x", "--out", str(out)])
    assert bad.exit_code == 2 and "5x" in bad.output
