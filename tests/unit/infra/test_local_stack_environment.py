"""Where `mora` finds its state from any directory, and the Python the local Ray head gives its jobs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from infra.local.envfile import update_env_file
from infra.local.processes import ProcessRecord
from infra.local.ray_head import head_environment, interpreter
from mora_platform.cli import app
from mora_platform.settings import MoraSettings, default_home

runner = CliRunner()


def test_home_defaults_to_the_users_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MORA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    assert default_home() == tmp_path / "user" / ".mora"
    assert MoraSettings().home == tmp_path / "user" / ".mora"  # type: ignore[call-arg]


def test_settings_are_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MORA_HOME", "MORA_S3_ENDPOINT_URL", "MORA_S3_ACCESS_KEY", "MORA_S3_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    update_env_file(
        tmp_path / "user" / ".mora" / "stack.env",
        {"MORA_S3_ENDPOINT_URL": "http://127.0.0.1:4343", "MORA_S3_SECRET_KEY": "from-home"},
    )
    elsewhere = tmp_path / "some" / "project"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    settings = MoraSettings()  # type: ignore[call-arg]
    assert settings.s3_endpoint_url == "http://127.0.0.1:4343"
    assert settings.s3_credentials()[1] == "from-home"


def test_a_relative_mora_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MORA_HOME", "state")
    assert default_home() == tmp_path / "state"
    settings = MoraSettings()  # type: ignore[call-arg]
    assert settings.home.is_absolute() and settings.home == tmp_path / "state"


def test_head_environment_puts_this_interpreter_first() -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = head_environment({"PATH": os.pathsep.join(["/usr/bin", bin_dir, "/bin"])})
    assert env["PATH"].split(os.pathsep) == [bin_dir, "/usr/bin", "/bin"]
    assert interpreter() == str(Path(sys.executable).absolute())
    plain = head_environment({"PATH": "/usr/bin", "VIRTUAL_ENV": "/elsewhere"}, python="/opt/py/bin/python3")
    assert plain["PATH"] == "/opt/py/bin:/usr/bin"
    assert "VIRTUAL_ENV" not in plain  # /opt/py is not a virtualenv


def test_stack_up_refuses_a_head_started_from_another_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MORA_HOME", str(tmp_path))
    me = psutil.Process()
    record = ProcessRecord(
        name="ray",
        pid=me.pid,
        create_time=me.create_time(),
        command=["ray", "start"],
        log_path=str(tmp_path / "ray.log"),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        details={"python": "/usr/bin/python3", "dashboard_url": "http://127.0.0.1:9"},
    )
    record.save(tmp_path / "run" / "ray.json")
    result = runner.invoke(app, ["stack", "up", "--component", "ray"])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "/usr/bin/python3" in flat and "mora stack down" in flat
    assert (tmp_path / "run" / "ray.json").exists()  # nothing was stopped or replaced
