"""`mora serve`: the config it deploys and the env files it hands the cluster."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema
from typer.testing import CliRunner

from mora_platform.cli import app
from mora_platform.cli.serving import (
    DEFAULT_CONFIG,
    env_files_for_cluster,
    resolve_config,
    settings_stamp,
    single_points_of_failure,
)
from mora_platform.settings import MoraSettings
from serve.app import ServeAppArgs


def test_shipped_config_is_valid_for_serve() -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "127.0.0.1"
    [application] = config["applications"]
    assert application["import_path"] == "serve.app:build_app"
    ServeAppArgs.model_validate(application["args"])
    deployments = {d["name"]: d for d in application["deployments"]}
    assert set(deployments) == {"RecommendationIngress", "ServiceModels"}
    assert deployments["ServiceModels"]["user_config"]["reload_interval_s"] > 0
    assert all("autoscaling_config" in d for d in deployments.values())


def test_resolve_config_fills_host_port_and_env_files() -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    settings = MoraSettings(serve_host="127.0.0.1", serve_port=18123)  # type: ignore[call-arg]
    resolved = resolve_config(config, settings, ["/x/stack.env"])
    assert resolved["http_options"]["port"] == 18123
    assert resolved["applications"][0]["args"]["env_files"] == ["/x/stack.env"]
    ServeAppArgs.model_validate(resolved["applications"][0]["args"])
    assert "env_files" not in config["applications"][0]["args"], "input must stay untouched"
    ServeDeploySchema.model_validate(resolved)


def test_env_files_copy_shell_settings_privately(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "stack.env").write_text("MORA_S3_BUCKET=b\n")
    files = env_files_for_cluster(home, {"MORA_SERVE_TOKEN": "tok", "PATH": "/bin"})
    assert files == [str((home / "stack.env").resolve()), str((home / "serve.env").resolve())]
    shell = home / "serve.env"
    assert "MORA_SERVE_TOKEN=tok" in shell.read_text() and "PATH" not in shell.read_text()
    assert stat.S_IMODE(shell.stat().st_mode) == 0o600
    # settings read from those files reproduce the shell's
    settings = MoraSettings(_env_file=tuple(files))  # type: ignore[call-arg]
    assert settings.serve_token is not None and settings.serve_token.get_secret_value() == "tok"
    assert env_files_for_cluster(home, {}) == [str((home / "stack.env").resolve())]
    assert not shell.exists()


def test_serve_commands_registered() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status"):
        assert command in result.stdout


def test_settings_stamp_follows_env_file_changes(tmp_path: Path) -> None:
    env_file = tmp_path / "serve.env"
    env_file.write_text("MORA_SERVE_TOKEN=one\n")
    first = settings_stamp([str(env_file)])
    env_file.write_text("MORA_SERVE_TOKEN=second\n")
    assert settings_stamp([str(env_file)]) != first
    assert "second" not in settings_stamp([str(env_file)])


def test_shipped_config_has_no_single_replica_deployment() -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert single_points_of_failure(config) == []
    config["applications"][0]["deployments"][1]["autoscaling_config"]["min_replicas"] = 1
    config["applications"][0]["deployments"][0] = {"name": "RecommendationIngress", "num_replicas": 1}
    assert single_points_of_failure(config) == ["mora/RecommendationIngress", "mora/ServiceModels"]
