"""`mora models list` / `mora recommend` against a local registry directory (offline mode).

These paths need neither S3 nor a trained model: listing, and the clear one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mora_platform.cli import app
from mora_platform.models.config import LSTMConfig
from mora_platform.registry import LocalBlobBackend, ModelRegistry

runner = CliRunner()

METRICS = {
    "cpu": {"validation_mae": 0.02, "test_mae": 0.0123, "test_coverage": 0.951},
    "memory": {"validation_mae": 2.0e6, "test_mae": 1.5e6, "test_coverage": 0.94},
}


@pytest.fixture
def registry_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MORA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MORA_REGISTRY_DIR", raising=False)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"seq_len": 30}')
    (bundle / "weights.keras").write_bytes(bytes(range(256)) * 8)
    registry = ModelRegistry(LocalBlobBackend(tmp_path / "registry"))
    registry.publish("frontend", bundle, metadata={"metrics": METRICS, "fallbacks": ["prophet:percentile"]})
    registry.publish("adservice", bundle, metadata={"metrics": METRICS})
    return tmp_path / "registry"


def _error_line(result: object) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    return lines[0]


def test_models_list_json(registry_dir: Path) -> None:
    result = runner.invoke(app, ["models", "list", "--format", "json", "--registry-dir", str(registry_dir)])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [e["service"] for e in entries] == ["adservice", "frontend"]
    registry = ModelRegistry(LocalBlobBackend(registry_dir))
    assert entries[1]["latest"] == registry.latest_version("frontend")
    assert entries[1]["metrics"]["cpu"]["test_mae"] == 0.0123
    assert entries[1]["fallbacks"] == ["prophet:percentile"]


def test_models_list_table_for_one_service(registry_dir: Path) -> None:
    result = runner.invoke(
        app, ["models", "list", "--service", "frontend", "--registry-dir", str(registry_dir)]
    )
    assert result.exit_code == 0, result.output
    version = ModelRegistry(LocalBlobBackend(registry_dir)).latest_version("frontend")
    assert version is not None and version in result.stdout
    assert "adservice" not in result.stdout
    assert "test_mae 0.0123" in result.stdout


def test_models_list_unknown_service(registry_dir: Path) -> None:
    result = runner.invoke(app, ["models", "list", "--service", "nope", "--registry-dir", str(registry_dir)])
    assert result.exit_code == 2
    assert _error_line(result) == "error: no published model for service 'nope'"


def test_recommend_unknown_service(registry_dir: Path) -> None:
    result = runner.invoke(app, ["recommend", "paymentservice", "--registry-dir", str(registry_dir)])
    assert result.exit_code == 2
    assert _error_line(result) == "error: no published model for service 'paymentservice'"


@pytest.mark.parametrize(
    "context,message",
    [
        ("{load_users: 50}", "--context is not valid JSON"),
        ("[1, 2]", "--context must be a JSON object"),
        ('{"load_users": [50]}', "--context field 'load_users'"),
    ],
)
def test_recommend_bad_context(registry_dir: Path, context: str, message: str) -> None:
    result = runner.invoke(
        app, ["recommend", "frontend", "--context", context, "--registry-dir", str(registry_dir)]
    )
    assert result.exit_code == 2
    assert _error_line(result).startswith(f"error: {message}")


def test_recommend_unknown_format(registry_dir: Path) -> None:
    result = runner.invoke(
        app, ["recommend", "frontend", "--format", "csv", "--registry-dir", str(registry_dir)]
    )
    assert result.exit_code == 2
    assert "known formats: json, k8s-patch, table, yaml" in _error_line(result)


def test_recommend_invalid_service_name(registry_dir: Path) -> None:
    result = runner.invoke(app, ["recommend", "Front_End", "--registry-dir", str(registry_dir)])
    assert result.exit_code == 2
    assert _error_line(result).startswith("error: invalid service name 'Front_End'")


def test_recommend_refuses_tampered_bundle(registry_dir: Path, tmp_path: Path) -> None:
    backend = LocalBlobBackend(registry_dir)
    version = ModelRegistry(backend).latest_version("frontend")
    key = f"models/frontend/{version}/weights.keras"
    data = bytearray(backend.get_bytes(key))
    data[0] ^= 0xFF
    backend.put_bytes(key, bytes(data))
    result = runner.invoke(app, ["recommend", "frontend", "--registry-dir", str(registry_dir)])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "weights.keras" in line and "checksum mismatch" in line
    assert not (tmp_path / "home" / "cache" / "models" / "frontend" / str(version)).exists()


def test_metric_rows_lift_the_target_out_of_any_nesting() -> None:
    from mora_platform.cli.models import metric_rows

    by_split = {
        "test": {"cpu": {"mae": 0.1, "coverage": 0.96}, "memory": {"mae": 5.0}},
        "validation": {"cpu": {"mae": 0.2}},
    }
    columns, rows = metric_rows(by_split)
    assert columns == ["test.mae", "test.coverage", "validation.mae"]
    assert rows == {
        "cpu": {"test.mae": 0.1, "test.coverage": 0.96, "validation.mae": 0.2},
        "memory": {"test.mae": 5.0},
    }
    columns, rows = metric_rows({"replicas": {"mae": 0.5}, "cpu": {"mae": 0.1}, "seconds": 3.0})
    assert list(rows) == ["cpu", "replicas", "all"]  # targets in canonical order, untargeted last
    assert rows["all"] == {"seconds": 3.0}


def test_models_prune_keeps_latest(registry_dir: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(LocalBlobBackend(registry_dir))
    first = registry.latest_version("frontend")
    newer = registry.publish("frontend", tmp_path / "bundle", metadata={})
    result = runner.invoke(
        app, ["models", "prune", "--service", "frontend", "--keep", "1", "--registry-dir", str(registry_dir)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"deleted 1 version(s) of frontend: {first}"
    assert registry.list_versions("frontend", include_incomplete=True) == [newer]
    assert registry.latest_version("frontend") == newer


def test_training_config_source_precedence(tmp_path: Path) -> None:
    import typer

    from mora_platform.cli.models import _training_config

    registry = ModelRegistry(LocalBlobBackend(tmp_path / "registry"))
    config, source = _training_config(registry, "frontend", None, None, True)
    assert source == "defaults" and config.seq_len == 30
    registry.save_tuned_config("frontend", {"seq_len": 12, "lstm": {"units": [16]}})
    config, source = _training_config(registry, "frontend", None, 3, True)
    assert source == "tuned config from the registry, epochs=3"
    assert (config.seq_len, config.lstm.units, config.lstm.epochs) == (12, [16], 3)
    explicit = tmp_path / "explicit.json"
    explicit.write_text('{"seq_len": 8}')
    # --config merges over the tuned config key by key, as `mora retrain --config` does
    config, source = _training_config(registry, "frontend", explicit, None, True)
    assert source == f"tuned config from the registry + file {explicit}"
    assert config.seq_len == 8 and config.lstm.units == [16]
    config, source = _training_config(registry, "frontend", explicit, None, False)  # --no-tuned
    assert source == f"file {explicit}" and config.seq_len == 8 and config.lstm.units == LSTMConfig().units
    explicit.write_text("{seq_len: 8}")
    with pytest.raises(typer.Exit):
        _training_config(registry, "frontend", explicit, None, True)


def test_user_error_names_point_at_real_exception_classes() -> None:
    import importlib

    from mora_platform.cli.models import _USER_ERRORS, _is_user_error
    from mora_platform.registry import ModelNotFoundError

    for module_name, class_name in _USER_ERRORS:
        error_type = getattr(importlib.import_module(module_name), class_name)
        assert issubclass(error_type, Exception), (module_name, class_name)
    assert _is_user_error(ModelNotFoundError("x"))
    assert not _is_user_error(KeyError("bug"))
