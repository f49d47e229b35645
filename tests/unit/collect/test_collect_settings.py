"""Prometheus settings: env prefix, secrets kept secret, settings files, limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mora_platform.collect.settings import PrometheusSettings, SettingsFileError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env / .mora/stack.env from the repo
    for name in ("URL", "BEARER_TOKEN", "USERNAME", "PASSWORD", "HEADERS", "STEP", "CA_BUNDLE"):
        monkeypatch.delenv(f"MORA_PROMETHEUS_{name}", raising=False)


def test_env_prefix_and_secret_handling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORA_PROMETHEUS_URL", "http://prom:9090")
    monkeypatch.setenv("MORA_PROMETHEUS_BEARER_TOKEN", "tok-123")
    monkeypatch.setenv("MORA_PROMETHEUS_HEADERS", json.dumps({"X-Scope-OrgID": "team-a"}))
    settings = PrometheusSettings.load()
    assert settings.url == "http://prom:9090"
    assert settings.http_headers() == {"X-Scope-OrgID": "team-a", "Authorization": "Bearer tok-123"}
    assert "tok-123" not in repr(settings) and "tok-123" not in str(settings.model_dump())
    assert settings.basic_auth() is None


def test_basic_auth_and_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    settings = PrometheusSettings.load(username="me", password="pw", ca_bundle=ca)
    assert settings.basic_auth() == ("me", "pw")
    assert settings.tls_verify() == str(ca)
    assert PrometheusSettings.load(insecure_skip_verify=True).tls_verify() is False
    missing = PrometheusSettings.load(ca_bundle=tmp_path / "nope.pem")
    with pytest.raises(SettingsFileError, match=r"nope\.pem"):
        missing.tls_verify()


def test_yaml_file_overrides_env_and_flags_override_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MORA_PROMETHEUS_STEP", "15s")
    path = tmp_path / "prom.yaml"
    path.write_text(
        'step: 60s\nrate_window: 5m\nqueries:\n  mem_bytes_value: sum(container_memory_rss{namespace="{namespace}"})\n',
        encoding="utf-8",
    )
    from_file = PrometheusSettings.load(path)
    assert from_file.step_seconds == 60
    assert (
        from_file.query_table().render("mem_bytes_value", "ns", "s")
        == 'sum(container_memory_rss{namespace="ns"})'
    )
    assert "[5m]" in from_file.query_table().render("cpu_cores_value", "ns", "s")
    assert PrometheusSettings.load(path, step="10s").step_seconds == 10


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("step: [1", ".yaml", "not valid yaml"),
        ('{"step": ', ".json", "not valid json"),
        ("- a\n- b\n", ".yaml", "expected a mapping"),
        ("points_per_chunk: 20000\n", ".yaml", "points_per_chunk"),
        ("step: soon\n", ".yaml", "invalid duration 'soon'"),
        ("queries:\n  cpu: x\n", ".yaml", "unknown metric 'cpu'"),
    ],
)
def test_bad_settings_files_are_named(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"settings{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SettingsFileError) as info:
        PrometheusSettings.load(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_chunk_plus_context_must_fit_the_point_limit() -> None:
    with pytest.raises(SettingsFileError, match="11000"):
        PrometheusSettings.load(points_per_chunk=11_000, context_steps=1)
    assert PrometheusSettings.load(points_per_chunk=10_990, context_steps=10).points_per_chunk == 10_990
