"""Every Online Boutique service trains, publishes a version, and carries its test metrics.

Uses the Online Boutique experiments (the shipped subset of all 7 services; see tests/helpers) through the real path a user takes:
DatasetStore on the S3 server, `mora train` per service, the registry's manifest. The network is
tiny (one epoch) so the test stays fast; the real sizes are measured in benchmarks/train_service.py.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mora_platform.cli import app

pytestmark = pytest.mark.integration

SERVICES = (
    "adservice",
    "cartservice",
    "checkoutservice",
    "currencyservice",
    "emailservice",
    "frontend",
    "productcatalogservice",
)
TINY_CONFIG = {
    "seq_len": 8,
    "lstm": {"units": [8], "dense_units": 4, "epochs": 1, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 16},
    "seed": 0,
}


def test_each_online_boutique_service_publishes_with_test_metrics(
    s3_settings: Any,
    object_store: Any,
    shared_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mora_platform.data.loaders import load_path
    from mora_platform.registry import ModelRegistry
    from mora_platform.storage.datasets import DatasetStore

    key, secret = s3_settings.s3_credentials()
    monkeypatch.setenv("MORA_S3_ENDPOINT_URL", s3_settings.s3_endpoint_url)
    monkeypatch.setenv("MORA_S3_BUCKET", s3_settings.s3_bucket)
    monkeypatch.setenv("MORA_S3_ACCESS_KEY", key or "")
    monkeypatch.setenv("MORA_S3_SECRET_KEY", secret or "")
    monkeypatch.setenv("MORA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MORA_REGISTRY_DIR", raising=False)

    # The registry is shared with other tests on this server: give each service a unique suffix.
    suffix = secrets.token_hex(2)
    frame = load_path(shared_data_dir).frame
    assert sorted(frame["service"].unique()) == list(SERVICES)
    frame["service"] = frame["service"] + f"-{suffix}"
    dataset = f"ob-fleet-{suffix}"
    DatasetStore(object_store).write(dataset, frame)

    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(TINY_CONFIG))
    registry = ModelRegistry(object_store)
    runner = CliRunner()
    for base in SERVICES:
        service = f"{base}-{suffix}"
        result = runner.invoke(
            app, ["train", "--dataset", dataset, "--service", service, "--config", str(config_file)]
        )
        assert result.exit_code == 0, f"{service}: {result.output}"
        # The summary prints the test metrics per target.
        for target in ("cpu", "memory", "replicas"):
            assert target in result.output, result.output

        version = registry.latest_version(service)
        assert version is not None, f"{service} published nothing"
        assert version in result.output
        manifest = registry.read_manifest(service, version)
        assert set(manifest.metrics) >= {"cpu", "memory", "replicas"}, manifest.metrics
        for target in ("cpu", "memory", "replicas"):
            numbers = manifest.metrics[target]
            assert math.isfinite(numbers["mae"]) and numbers["mae"] >= 0, (service, target, numbers)
            assert 0.0 <= numbers["coverage"] <= 1.0, (service, target, numbers)
        rows = int((frame["service"] == service).sum())
        assert manifest.data_window["rows"] == rows, (service, manifest.data_window, rows)

        # The coverage promise is kept or disclosed: each published CPU / memory request either
        # covered its held-out test steps within the stated tolerance, or the answer says how short.
        from mora_platform.training.bundle import ServiceModel, coverage_tolerance

        fetched = registry.fetch(service, version, tmp_path / "bundles" / service)
        model = ServiceModel.load(fetched.path)
        rec = model.recommend(model_version=version)
        promise = rec.coverage_target
        for target in ("cpu", "memory"):
            share = rec.coverage_achieved[target]
            assert share == pytest.approx(manifest.metrics[target]["coverage"], abs=1e-4)
            n = manifest.metrics[target]["n"]
            if share < promise - coverage_tolerance(promise, n):
                assert any(r.startswith(f"{target}: the published model covered") for r in rec.reasons), (
                    service,
                    target,
                    share,
                    rec.reasons,
                )
        # Requests are per pod and say so; the replica count follows load, not the replicas history.
        assert "per container, per pod" in rec.units
        assert rec.replica_decision is not None and rec.replica_decision.recommended is not None
        assert rec.containers and rec.containers[0].name == service

        # A what-if beyond the loads training saw is flagged, and CPU / memory do not fall as load rises.
        if base == "frontend":
            high = model.context_range["load_users"][1]
            asked = [high, 10 * high, 100 * high]
            answers = [model.recommend(context={"load_users": users}) for users in asked]
            assert not answers[0].outside_training_range
            for answer in answers[1:]:
                assert answer.outside_training_range and "load_users" in answer.outside_training_range[0]
                assert any("what-if outside the training data" in r for r in answer.reasons)
            cpu = [a.recommendations.cpu_millicores or 0 for a in answers]
            memory = [a.recommendations.memory_mib or 0 for a in answers]
            assert cpu == sorted(cpu) and memory == sorted(memory), (cpu, memory)
