"""`mora serve up | status | down` against a local Ray head with its dashboard (what `serve deploy` talks to)."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from serve_harness import free_port, reset_ray_auth_state
from typer.testing import CliRunner

from infra.local.ray_head import RayHead, RayPorts
from mora_platform.cli import app
from mora_platform.cli.serving import DEFAULT_CONFIG
from mora_platform.registry import ModelRegistry

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(scope="module")
def dashboard_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """A Ray head with dashboard on free 127.0.0.1 ports and a token of its own, stopped by PID."""
    root = tmp_path_factory.mktemp("ray-cli")
    gcs, dashboard, client, agent = (free_port() for _ in range(4))
    ports = RayPorts(
        gcs=gcs, dashboard=dashboard, client=client, dashboard_agent=agent, min_worker=0, max_worker=0
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        patch.setenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        reset_ray_auth_state()
        head = RayHead(
            ports,
            root / "ray.log",
            temp_dir=Path("/tmp") / f"mora-ray-cli-{secrets.token_hex(3)}",
            num_cpus=2,
        )
        head.start(timeout=120)
        try:
            yield head
        finally:
            head.stop(timeout=30)
            shutil.rmtree(head.temp_dir, ignore_errors=True)
    reset_ray_auth_state()


def test_serve_up_status_down(
    dashboard_head: RayHead,
    s3_settings: Any,
    serve_registry: ModelRegistry,
    published: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["applications"][0]["args"]["registry_prefix"] = serve_registry.prefix
    config_path = tmp_path / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port, token = free_port(), secrets.token_urlsafe(12)
    key, secret = s3_settings.s3_credentials()
    monkeypatch.chdir(tmp_path)
    for name, value in {
        "MORA_HOME": str(tmp_path / "home"),
        "MORA_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url,
        "MORA_S3_BUCKET": s3_settings.s3_bucket,
        "MORA_S3_ACCESS_KEY": key or "",
        "MORA_S3_SECRET_KEY": secret or "",
        "MORA_RAY_ADDRESS": dashboard_head.address,
        "MORA_RAY_DASHBOARD_URL": dashboard_head.dashboard_url,
        "MORA_SERVE_HOST": "127.0.0.1",
        "MORA_SERVE_PORT": str(port),
        "MORA_SERVE_TOKEN": token,
    }.items():
        monkeypatch.setenv(name, value)

    up = runner.invoke(app, ["serve", "up", "--config", str(config_path), "--timeout", "150"])
    assert up.exit_code == 0, up.output
    assert f"endpoint ready: http://127.0.0.1:{port}" in up.stdout
    deployed = yaml.safe_load((tmp_path / "home" / "serve" / "config.yaml").read_text())
    assert secret not in yaml.safe_dump(deployed) and token not in yaml.safe_dump(deployed)
    assert deployed["http_options"] == {**config["http_options"], "host": "127.0.0.1", "port": port}

    url = f"http://127.0.0.1:{port}"
    for service, version in published.items():
        answer = httpx.post(
            f"{url}/v1/recommendations",
            json={"service": service},
            headers={"authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == version
    assert httpx.post(f"{url}/v1/recommendations", json={"service": "x"}, timeout=30).status_code == 401

    status = runner.invoke(app, ["serve", "status"])
    assert status.exit_code == 0, status.output
    assert "RUNNING" in status.stdout and f"services ({len(published)})" in status.stdout

    down = runner.invoke(app, ["serve", "down"])
    assert down.exit_code == 0, down.output
    after = runner.invoke(app, ["serve", "status"])
    assert after.exit_code == 1
    assert "unreachable" in after.stdout
