"""A fleet run says in its exit code when it failed or could not record its result; `--rerun-failed`."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest
from typer.testing import CliRunner

import jobs.retrain_fleet as driver
from jobs.fleet_service import RetrainSpec
from mora_platform.cli import app
from mora_platform.orchestration import (
    EXIT_SUMMARY_NOT_STORED,
    RunSummary,
    ServiceOutcome,
    plan_rerun,
    summary_key,
)
from mora_platform.settings import MoraSettings
from mora_platform.storage.datasets import DatasetStore
from mora_platform.storage.errors import ObjectNotFoundError, StorageUnavailableError
from mora_platform.storage.object_store import ObjectStore

runner = CliRunner()


def _summary(run_id: str = "retrain-old", dataset: str = "ds", **statuses: str) -> RunSummary:
    summary = RunSummary(run_id=run_id, dataset=dataset, started_at="2026-01-01T00:00:00+00:00")
    summary.services = [
        ServiceOutcome(service=name, status=status)  # type: ignore[arg-type]
        for name, status in statuses.items()
    ]
    return summary


def _settings() -> MoraSettings:
    return MoraSettings(  # type: ignore[call-arg]
        _env_file=None,
        s3_endpoint_url="http://127.0.0.1:9",
        s3_access_key="k",  # type: ignore[arg-type]
        s3_secret_key="s",  # type: ignore[arg-type]
    )


def test_a_summary_that_cannot_be_stored_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def down(self: ObjectStore, key: str, data: bytes) -> None:
        raise StorageUnavailableError("S3 unreachable at http://127.0.0.1:9")

    monkeypatch.setattr(ObjectStore, "put_bytes", down)
    every_service_ok = _summary(a="published", b="published")
    code = driver.finish_run(every_service_ok, _settings(), label="FLEET RESULT", rerun_hint=True)
    assert code == EXIT_SUMMARY_NOT_STORED == 3
    out = capsys.readouterr().out
    assert "run summary could not be stored: StorageUnavailableError" in out
    assert "FLEET RESULT: 2 succeeded, 0 failed; run summary NOT stored; exit 3" in out
    assert "mora retrain --rerun-failed retrain-old" in out
    # --allow-failures tolerates failed services, never an unrecorded result
    some_failed = _summary(a="published", b="failed")
    assert driver.finish_run(some_failed, _settings(), allow_failures=True, label="X") == 3


def test_plan_rerun_takes_the_failed_services_of_the_summary() -> None:
    previous = _summary(a="published", b="failed", c="failed")
    plan = plan_rerun("retrain-old", previous, dataset=None)
    assert (plan.dataset, plan.services) == ("ds", "b,c")
    assert "2 service(s) that failed in run retrain-old: b, c" in plan.message
    assert plan_rerun("retrain-old", previous, dataset="ds").services == "b,c"
    with pytest.raises(ValueError, match="retrained dataset 'ds', not 'other'"):
        plan_rerun("retrain-old", previous, dataset="other")
    with pytest.raises(ValueError, match="--services and --rerun-failed"):
        plan_rerun("retrain-old", previous, dataset=None, services="a")
    nothing = plan_rerun("retrain-old", _summary(a="published"), dataset=None)
    assert nothing.services == "" and "nothing to re-run" in nothing.message


def test_plan_rerun_without_a_summary_reruns_every_service_of_the_run() -> None:
    plan = plan_rerun(
        "retrain-old", None, dataset="ds", services="x,y", summary_uri="s3://b/runs/r/summary.json"
    )
    assert (plan.dataset, plan.services) == ("ds", "x,y")
    assert "no run summary for run retrain-old at s3://b/runs/r/summary.json" in plan.message
    assert "re-running every service of that run (services x,y of dataset 'ds')" in plan.message
    with pytest.raises(ValueError, match="pass --dataset"):
        plan_rerun("retrain-old", None, dataset=None)


def test_the_job_reruns_only_what_failed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stored: dict[str, bytes] = {summary_key("retrain-old"): _summary(a="published", b="failed").to_json()}

    def get_bytes(self: ObjectStore, key: str) -> bytes:
        if key not in stored:
            raise ObjectNotFoundError(key)
        return stored[key]

    monkeypatch.setattr(ObjectStore, "get_bytes", get_bytes)
    monkeypatch.setattr(ObjectStore, "put_bytes", lambda self, key, data: stored.__setitem__(key, data))
    monkeypatch.setattr(DatasetStore, "list_services", lambda self, name: ["a", "b", "c"])
    trained: list[str] = []

    def fake(spec: RetrainSpec, service: str, settings: object = None) -> ServiceOutcome:
        trained.append(service)
        return ServiceOutcome(service=service, status="published", version="v2")

    monkeypatch.setattr(driver, "retrain_service", fake)
    argv = ["--backend", "local", "--rerun-failed", "retrain-old", "--run-id", "retrain-new"]
    assert driver.main(argv) == 0
    assert trained == ["b"]
    out = capsys.readouterr().out
    assert "re-running the 1 service(s) that failed in run retrain-old: b" in out
    summary = json.loads(stored[summary_key("retrain-new")])
    assert summary["dataset"] == "ds" and summary["options"]["rerun_of"] == "retrain-old"
    assert [row["service"] for row in summary["services"]] == ["b"]

    # a run that left no summary: every service of --services of --dataset, said so
    trained.clear()
    argv = ["--backend", "local", "--rerun-failed", "retrain-lost", "--dataset", "ds", "--run-id", "r3"]
    assert driver.main(argv) == 0
    assert trained == ["a", "b", "c"]
    assert "no run summary for run retrain-lost" in capsys.readouterr().out
    # ... and without --dataset the job cannot know which services: exit 2, saying what to pass
    assert driver.main(["--backend", "local", "--rerun-failed", "retrain-lost"]) == 2
    assert "pass --dataset" in capsys.readouterr().out
    # a run in which nothing failed: nothing to do
    stored[summary_key("retrain-fine")] = _summary(a="published").to_json()
    trained.clear()
    assert driver.main(["--backend", "local", "--rerun-failed", "retrain-fine"]) == 0
    assert trained == [] and "nothing to re-run" in capsys.readouterr().out


def _cli_env(tmp_path: Any) -> dict[str, str]:
    return {
        "MORA_HOME": str(tmp_path),
        "MORA_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "MORA_S3_ACCESS_KEY": "k",
        "MORA_S3_SECRET_KEY": "s",
        "MORA_RAY_DASHBOARD_URL": "http://127.0.0.1:9",
    }


def test_cli_rerun_failed_submits_only_the_failed_services(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import mora_platform.cli.fleet as fleet

    stored = {summary_key("retrain-old"): _summary(a="published", b="failed").to_json()}

    def get_bytes(self: ObjectStore, key: str) -> bytes:
        if key not in stored:
            raise ObjectNotFoundError(key)
        return stored[key]

    submitted: list[str] = []
    monkeypatch.setattr(ObjectStore, "get_bytes", get_bytes)
    monkeypatch.setattr(
        fleet,
        "submit_job",
        lambda settings, entrypoint, run_id, kind: submitted.append(entrypoint) or f"mora-{run_id}",
    )
    monkeypatch.setattr(fleet, "previous_run_services", lambda settings, run_id: None)
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(app, ["retrain", "--rerun-failed", "retrain-old"], env=_cli_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert "re-running the 1 service(s) that failed in run retrain-old: b" in result.output
    argv = driver.build_parser().parse_args(shlex.split(submitted[-1])[2:])
    assert (argv.dataset, argv.services, argv.rerun_of) == ("ds", "b", "retrain-old")
    assert not argv.allow_failures

    missing = runner.invoke(app, ["retrain", "--rerun-failed", "retrain-lost"], env=_cli_env(tmp_path))
    assert missing.exit_code == 2 and "pass --dataset" in missing.output
    with_dataset = runner.invoke(
        app, ["retrain", "--from-run", "retrain-lost", "--dataset", "ds"], env=_cli_env(tmp_path)
    )
    assert with_dataset.exit_code == 0, with_dataset.output
    assert "no run summary for run retrain-lost" in with_dataset.output
    argv = driver.build_parser().parse_args(shlex.split(submitted[-1])[2:])
    assert (argv.dataset, argv.services) == ("ds", "all")

    stored[summary_key("retrain-fine")] = _summary(a="published").to_json()
    count = len(submitted)
    fine = runner.invoke(app, ["retrain", "--rerun-failed", "retrain-fine"], env=_cli_env(tmp_path))
    assert fine.exit_code == 0 and "nothing to re-run" in fine.output and len(submitted) == count
    assert runner.invoke(app, ["retrain"], env=_cli_env(tmp_path)).exit_code == 2
