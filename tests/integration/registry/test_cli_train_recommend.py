"""`mora train` -> `mora models list` -> `mora recommend` against the real S3 server.

Trains one small service (one epoch, tiny network, short windows) from a dataset written with
DatasetStore, under a unique service name so other tests sharing the server are not disturbed.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mora_platform.cli import app
from mora_platform.recommend.types import Recommendation
from mora_platform.settings import MoraSettings
from mora_platform.storage.object_store import ObjectStore

pytestmark = pytest.mark.integration

runner = CliRunner()

# Small enough to train in seconds on 2 shared cores.
TINY_CONFIG = {
    "seq_len": 8,
    "lstm": {"units": [8], "dense_units": 4, "epochs": 1, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 16},
    "seed": 0,
}


@pytest.fixture
def cli_env(s3_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the CLI's settings (read from the environment) at the test server."""
    key, secret = s3_settings.s3_credentials()
    monkeypatch.setenv("MORA_S3_ENDPOINT_URL", s3_settings.s3_endpoint_url)
    monkeypatch.setenv("MORA_S3_BUCKET", s3_settings.s3_bucket)
    monkeypatch.setenv("MORA_S3_ACCESS_KEY", key or "")
    monkeypatch.setenv("MORA_S3_SECRET_KEY", secret or "")
    monkeypatch.setenv("MORA_S3_REGION", s3_settings.s3_region)
    monkeypatch.setenv("MORA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MORA_REGISTRY_DIR", raising=False)
    return tmp_path / "home"


@pytest.fixture
def dataset(object_store: Any, shared_data_dir: Path, tmp_path: Path) -> tuple[str, str]:
    """(dataset name, service): 8 adservice experiments renamed to a service only this test uses."""
    from mora_platform.data.loaders import load_path
    from mora_platform.storage.datasets import DatasetStore

    source = tmp_path / "csv"
    source.mkdir()
    for path in sorted(shared_data_dir.glob("adservice_*.csv"))[:8]:
        shutil.copy(path, source / path.name)
    frame = load_path(source).frame
    assert len(frame) > 100
    service = f"cli-ad-{secrets.token_hex(3)}"
    frame["service"] = service
    name = f"cli-test-{secrets.token_hex(3)}"
    DatasetStore(object_store).write(name, frame)
    return name, service


def _error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_train_list_recommend(cli_env: Path, dataset: tuple[str, str], tmp_path: Path) -> None:
    name, service = dataset
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(TINY_CONFIG))

    result = runner.invoke(
        app, ["train", "--dataset", name, "--service", service, "--config", str(config_file), "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert f"config: file {config_file}, epochs=1" in result.stdout
    published = re.search(rf"published: {service} (\S+)", result.stdout)
    assert published, result.stdout
    version = published.group(1)
    for target in ("cpu", "memory", "replicas"):
        assert re.search(rf"\b{target}\b", result.stdout), result.stdout

    listed = runner.invoke(app, ["models", "list", "--service", service, "--format", "json"])
    assert listed.exit_code == 0, listed.output
    entries = json.loads(listed.stdout)
    assert [(e["service"], e["latest"]) for e in entries] == [(service, version)]
    assert entries[0]["metrics"], "training metrics must reach the manifest"
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0 and service in table.stdout

    context = '{"load_users": 50, "replica_count": 2}'
    answer = runner.invoke(app, ["recommend", service, "--context", context, "--format", "json"])
    assert answer.exit_code == 0, answer.output
    recs = json.loads(answer.stdout)
    rec = Recommendation.model_validate(recs[0])
    assert set(recs[0]) == set(Recommendation.model_fields)
    assert rec.service == service and rec.model_version == version
    assert rec.recommendations.replicas is not None and rec.recommendations.replicas >= 1
    assert rec.recommendations.cpu_millicores is not None and rec.recommendations.cpu_millicores > 0
    assert 0 <= rec.confidence <= 1
    assert (cli_env / "cache" / "models" / service / version / "manifest.json").is_file()

    refused = runner.invoke(app, ["recommend", service, "--context", '{"pods": 3}'])
    assert refused.exit_code == 2
    assert _error_line(refused).startswith("error: --context: ") and "'pods'" in refused.stderr

    patch = runner.invoke(
        app, ["recommend", service, "--version", version, "--context", context, "--format", "k8s-patch"]
    )
    assert patch.exit_code == 0, patch.output
    container = yaml.safe_load(patch.stdout)["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == service
    assert container["resources"]["requests"]["cpu"] == f"{rec.recommendations.cpu_millicores}m"

    # Without --context: the head-room is calibrated on the newest rows of the model's dataset, as the
    # endpoint serves and the backtest measures; the answer says where they came from and how old they are.
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.training.bundle import ServiceModel

    plain = runner.invoke(app, ["recommend", service, "--format", "json"])
    assert plain.exit_code == 0, plain.output
    served = Recommendation.model_validate(json.loads(plain.stdout)[0])
    rows = DatasetStore(ObjectStore.from_settings(MoraSettings())).read(name, service).tail(2_000)  # type: ignore[call-arg]
    assert served.history is not None and served.history.source == f"dataset:{name}"
    assert served.history.rows == len(rows) and served.history.age_seconds is not None
    model = ServiceModel.load(cli_env / "cache" / "models" / service / version)
    assert served.recommendations == model.recommend(rows.reset_index(drop=True)).recommendations
    alone = runner.invoke(app, ["recommend", service, "--no-recent", "--format", "json"])
    assert alone.exit_code == 0, alone.output
    assert json.loads(alone.stdout)[0]["history"]["source"] == "model"
    table_out = runner.invoke(app, ["recommend", service])
    assert table_out.exit_code == 0 and f"history: {len(rows)} rows from dataset:{name}" in table_out.stdout


def test_unknown_dataset_and_service(cli_env: Path, dataset: tuple[str, str]) -> None:
    name, service = dataset
    result = runner.invoke(
        app, ["train", "--dataset", "no-such-dataset", "--service", service, "--epochs", "1"]
    )
    assert result.exit_code == 2
    assert "no-such-dataset" in _error_line(result)
    result = runner.invoke(app, ["train", "--dataset", name, "--service", "no-such-service", "--epochs", "1"])
    assert result.exit_code == 2
    assert "no-such-service" in _error_line(result)
    result = runner.invoke(app, ["recommend", "no-such-service"])
    assert result.exit_code == 2
    assert _error_line(result) == "error: no published model for service 'no-such-service'"


def test_unreachable_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MORA_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MORA_HOME", str(tmp_path))
    monkeypatch.delenv("MORA_REGISTRY_DIR", raising=False)
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 2
    assert _error_line(result).startswith("error: ")
    assert str(port) in result.stderr
