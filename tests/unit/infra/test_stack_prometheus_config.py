"""The local stack's optional Prometheus: its generated configuration, settings and wiring (no Ray started)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from infra.local import prometheus as prometheus_binaries
from infra.local.config import StackSettings
from infra.local.processes import ProcessRecord, free_ports, spawn, stop
from infra.local.prometheus import PrometheusBinaryError
from infra.local.ray_head import interpreter
from infra.local.ray_prometheus import DISCOVERY_FILE_NAME, RayPrometheus, scrape_config
from infra.local.stack import COMPONENTS, DEFAULT_COMPONENTS, LocalStack


def _settings(**values: object) -> StackSettings:
    return StackSettings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_config_scrapes_rays_discovery_file_and_its_fixed_metrics_port(tmp_path: Path) -> None:
    temp_dir = tmp_path / "mora-ray-x"
    config = yaml.safe_load(scrape_config(temp_dir, 8266, scrape_interval=5))
    assert config["global"]["scrape_interval"] == "5s" and config["global"]["scrape_timeout"] == "5s"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ray"  # the job label Ray's discovery file sets, so targets merge
    assert job["file_sd_configs"][0]["files"] == [
        str(temp_dir / DISCOVERY_FILE_NAME),
        str(temp_dir / "session_latest" / DISCOVERY_FILE_NAME),
    ]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:8266"]}]
    slow = yaml.safe_load(scrape_config(temp_dir, 8266, scrape_interval=60))["global"]
    assert slow == {"scrape_interval": "60s", "scrape_timeout": "10s", "evaluation_interval": "60s"}


def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    assert shutil.which("promtool"), "promtool is not installed: run `make system-deps`"
    server = RayPrometheus(
        9090, tmp_path / "prom", tmp_path / "p.log", ray_temp_dir=tmp_path / "ray dir", ray_metrics_port=8266
    )
    server.config_path.parent.mkdir(parents=True)
    server.config_path.write_text(server.config_text(), encoding="utf-8")
    checked = subprocess.run(
        ["promtool", "check", "config", str(server.config_path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_server_listens_on_loopback_with_its_data_under_its_dir(tmp_path: Path) -> None:
    assert shutil.which("prometheus"), "Debian's prometheus is not installed: run `make system-deps`"
    server = RayPrometheus(
        9191, tmp_path / "prom", tmp_path / "p.log", ray_temp_dir=tmp_path, ray_metrics_port=1
    )
    command = server.command()
    assert "--web.listen-address=127.0.0.1:9191" in command
    assert f"--storage.tsdb.path={tmp_path / 'prom' / 'data'}" in command
    assert f"--config.file={tmp_path / 'prom' / 'prometheus.yml'}" in command
    assert not [arg for arg in command if "enable-admin-api" in arg or "enable-lifecycle" in arg]
    assert server.url == "http://127.0.0.1:9191"


def test_prometheus_is_off_by_default_and_a_port_like_the_others() -> None:
    settings = _settings()
    assert settings.prometheus is False and settings.prometheus_port == 9090
    assert StackSettings.port_names()["prometheus"] == "prometheus_port"
    assert LocalStack(Path("/nonexistent"), settings, bucket="b").default_components() == DEFAULT_COMPONENTS
    on = LocalStack(Path("/nonexistent"), _settings(prometheus=True), bucket="b")
    assert on.default_components() == COMPONENTS == ("s3", "ray", "prometheus")


def test_the_head_gets_the_prometheus_url_only_when_there_is_one(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, _settings(), bucket="b")
    assert "RAY_PROMETHEUS_HOST" not in stack.ray_head().extra_env
    head = stack.ray_head("http://127.0.0.1:9999")
    assert head.extra_env["RAY_PROMETHEUS_HOST"] == "http://127.0.0.1:9999"
    assert head.extra_env["MORA_HOME"] == str(tmp_path.resolve())


def test_prometheus_follows_the_running_heads_session_and_port(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, _settings(ray_metrics_export_port=8266, prometheus_port=9300), bucket="b")
    fresh = stack.prometheus()
    assert fresh.ray_metrics_port == 8266 and fresh.port == 9300
    assert fresh.base_dir == tmp_path.resolve() / "prometheus"
    head = ProcessRecord(
        "ray", 1, 0.0, [], "", "", details={"temp_dir": "/tmp/elsewhere", "ports": {"metrics_export": 7777}}
    )
    running = stack.prometheus(head)
    assert running.ray_temp_dir == Path("/tmp/elsewhere") and running.ray_metrics_port == 7777


def test_up_refuses_before_starting_anything_without_the_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prometheus_binaries.shutil, "which", lambda _name: None)
    (port,) = free_ports(1)
    stack = LocalStack(tmp_path, _settings(prometheus_port=port), bucket="b")
    with pytest.raises(PrometheusBinaryError, match="apt-get install"):
        stack.up(["prometheus"])
    assert not (tmp_path / "run" / "prometheus.json").exists()
    assert not (tmp_path / "prometheus").exists()  # nothing written either


@pytest.fixture()
def sleepers(tmp_path: Path) -> Iterator[list[ProcessRecord]]:
    started: list[ProcessRecord] = []
    yield started
    for record in started:
        stop(record, 5)


def test_a_head_running_without_the_prometheus_is_left_alone_with_how_to_restart_it(
    tmp_path: Path, sleepers: list[ProcessRecord]
) -> None:
    unused, prom_port = free_ports(2)
    stack = LocalStack(tmp_path, _settings(ray_dashboard_port=unused, prometheus_port=prom_port), bucket="b")
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    head = spawn(
        "ray",
        sleep,
        tmp_path / "ray.log",
        details={"python": interpreter(), "auth": "token", "dashboard_url": f"http://127.0.0.1:{unused}"},
    )
    sleepers.append(head)
    head.save(stack.record_path("ray"))
    prometheus = spawn(
        "prometheus", sleep, tmp_path / "p.log", details={"url": f"http://127.0.0.1:{prom_port}"}
    )
    sleepers.append(prometheus)
    prometheus.save(stack.record_path("prometheus"))

    said: list[str] = []
    rows = stack.up(["ray"], progress=said.append)
    assert [row.state for row in rows] == ["already running"]
    assert any(
        f"without RAY_PROMETHEUS_HOST=http://127.0.0.1:{prom_port}" in line
        and "mora stack down --component ray && mora stack up" in line
        for line in said
    ), said
    # status shows prometheus once it has a record, and says the same
    (row,) = [row for row in stack.status() if row.component == "prometheus"]
    assert row.endpoint == f"http://127.0.0.1:{prom_port}" and "restart the head" in row.health
