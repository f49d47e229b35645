"""Config layering and argument handling of the fleet job (no Ray, no S3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.fleet_service import (
    RetrainSpec,
    deep_merge,
    directory_bytes,
    resolve_training_config,
    retrain_service,
)
from jobs.retrain_fleet import build_parser, config_overrides
from mora_platform.settings import MoraSettings


def test_deep_merge_merges_nested_and_copies() -> None:
    base: dict[str, Any] = {"seq_len": 30, "lstm": {"units": [64, 32], "epochs": 50}}
    merged = deep_merge(base, {"lstm": {"epochs": 2}}, {"seq_len": 12})
    assert merged == {"seq_len": 12, "lstm": {"units": [64, 32], "epochs": 2}}
    merged["lstm"]["units"].append(1)
    assert base["lstm"]["units"] == [64, 32]


def test_overrides_beat_the_tuned_config_and_threads_follow_cpus() -> None:
    tuned = {"lstm": {"units": [16], "epochs": 30, "dropout": 0.1}, "fusion_weights": {"cpu": 0.7}}
    resolved = resolve_training_config(tuned, {"lstm": {"epochs": 2}}, num_cpus=2)
    assert resolved["lstm"] == {"units": [16], "epochs": 2, "dropout": 0.1}
    assert resolved["fusion_weights"] == {"cpu": 0.7}
    assert resolved["cpu_threads"] == 2
    assert resolve_training_config(None, {}, num_cpus=1) == {"cpu_threads": 1}


def test_config_overrides_from_arguments() -> None:
    args = build_parser().parse_args(
        ["--dataset", "ds", "--epochs", "3", "--config-json", '{"lstm": {"units": [4]}, "seq_len": 8}']
    )
    assert config_overrides(args) == {"lstm": {"units": [4], "epochs": 3}, "seq_len": 8}
    assert args.services == "all" and args.backend == "ray" and not args.fail_on_any
    with pytest.raises(SystemExit, match="JSON object"):
        config_overrides(build_parser().parse_args(["--dataset", "ds", "--config-json", "[1]"]))


def test_unreachable_storage_becomes_a_failed_outcome_not_an_exception() -> None:
    settings = MoraSettings(
        s3_endpoint_url="http://127.0.0.1:9",
        s3_access_key="k",  # type: ignore[arg-type]
        s3_secret_key="s",  # type: ignore[arg-type]
    )  # type: ignore[call-arg]
    outcome = retrain_service(RetrainSpec(dataset="ds", run_id="r"), "frontend", settings)
    assert outcome.status == "failed"
    assert outcome.error and outcome.error_type
    assert outcome.error.startswith("reading s3://mora/datasets/ds/service=frontend/: ")
    assert outcome.peak_rss_mb is not None and outcome.peak_rss_mb > 0
    assert outcome.cpu_seconds is not None and outcome.cpu_seconds >= 0
    assert "s\n" not in outcome.error


def test_directory_bytes(tmp_path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert directory_bytes(tmp_path) == 15


def test_driver_runs_the_fleet_locally_and_reports(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import jobs.retrain_fleet as driver
    from mora_platform.orchestration import ServiceOutcome
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.object_store import ObjectStore

    stored: dict[str, bytes] = {}
    monkeypatch.setattr(DatasetStore, "list_services", lambda self, name: ["a", "b", "c"])
    monkeypatch.setattr(ObjectStore, "put_bytes", lambda self, key, data: stored.__setitem__(key, data))

    def fake(spec: RetrainSpec, service: str, settings: object = None) -> ServiceOutcome:
        assert spec.config_overrides == {"lstm": {"epochs": 1}} and spec.dataset == "ds"
        if service == "b":
            raise RuntimeError("disk on fire")
        return ServiceOutcome(service=service, status="published", version="v1")

    monkeypatch.setattr(driver, "retrain_service", fake)
    argv = [
        "--dataset",
        "ds",
        "--backend",
        "local",
        "--epochs",
        "1",
        "--run-id",
        "retrain-unit",
        "--max-calls",
        "3",
    ]
    assert driver.main(argv) == 1  # a failed service fails the run by default
    out = capsys.readouterr().out
    assert "3/3 done, 1 failed" in out and "FAILED b: RuntimeError: disk on fire" in out
    assert "FLEET RESULT: 2 succeeded, 1 failed (b); exit 1" in out
    assert "retrain what failed with: mora retrain --rerun-failed retrain-unit" in out
    assert driver.main([*argv, "--fail-on-any"]) == 1  # the old flag is still accepted
    assert driver.main([*argv, "--allow-failures"]) == 0
    assert "FLEET RESULT: 2 succeeded, 1 failed (b); exit 0" in capsys.readouterr().out
    summary = json.loads(stored["runs/retrain-unit/summary.json"])
    assert summary["counts"] == {"total": 3, "succeeded": 2, "failed": 1}
    assert summary["options"]["max_calls"] == 3
    monkeypatch.setattr(DatasetStore, "list_services", lambda self, name: ["a"])
    assert driver.main(["--dataset", "ds", "--backend", "local", "--services", "zzz"]) == 2


def test_a_dead_workers_working_directory_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A worker killed mid-training (out of memory, a drill) never runs its temporary directory's
    clean-up; the next task for the service removes what such a worker left, and only that."""
    import subprocess
    import sys

    from jobs.fleet_service import sweep_stale_work_dirs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_dir = tmp_path / f"mora-svc-a-pid{gone.pid}-x1"
        live_dir = tmp_path / f"mora-svc-a-pid{alive.pid}-x2"
        other_service = tmp_path / f"mora-svc-b-pid{gone.pid}-x3"
        old_style = tmp_path / "mora-svc-a-x4"  # no PID in the name: never guessed at
        for d in (dead_dir, live_dir, other_service, old_style):
            (d / "bundle").mkdir(parents=True)
            (d / "bundle" / "lstm.keras").write_bytes(b"half written")
        assert sweep_stale_work_dirs("svc-a", tmp_path) == [dead_dir]
        assert not dead_dir.exists() and live_dir.exists() and other_service.exists() and old_style.exists()
    finally:
        alive.kill()
        alive.wait()
