"""Fleet retraining through the Ray Jobs API and Ray Tune, on a real local Ray head and S3 server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TINY_CONFIG, FleetCluster, write_fleet_dataset

from infra.local.ray_head import token_path
from mora_platform.cli.fleet import repository_root, retrain_entrypoint, submit_retrain_job
from mora_platform.orchestration import new_run_id
from mora_platform.registry import ModelRegistry
from mora_platform.settings import MoraSettings

pytestmark = pytest.mark.integration

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _submit(
    cluster: FleetCluster,
    dataset: str,
    services: list[str],
    settings: MoraSettings | None = None,
    **options: Any,
) -> tuple[str, str]:
    run_id = new_run_id("retrain")
    entrypoint = retrain_entrypoint(
        dataset=dataset,
        services=",".join(services),
        run_id=run_id,
        num_cpus=1,
        max_retries=options.get("max_retries", 2),
        epochs=None,
        config_json=json.dumps(options.get("config", TINY_CONFIG)),
        allow_failures=options.get("allow_failures", False),
        no_tuned=False,
        max_calls=options.get("max_calls", 0),
    )
    return submit_retrain_job(settings or cluster.settings, entrypoint, run_id), run_id


def _wait_job(cluster: FleetCluster, job_id: str, timeout: float = 150.0) -> tuple[str, str]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.settings.ray_dashboard_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status, client.get_job_logs(job_id)
        time.sleep(0.5)
    logs = client.get_job_logs(job_id)
    client.stop_job(job_id)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s; log tail:\n{logs[-3000:]}")


def _summary(object_store: Any, run_id: str) -> dict[str, Any]:
    return json.loads(object_store.get_bytes(f"runs/{run_id}/summary.json"))


def _cli_env(settings: MoraSettings, home: Path) -> dict[str, str]:
    """What `mora retrain` reads: this cluster's home (stack.env, token) and the S3 settings."""
    key, secret = settings.s3_credentials()
    return {
        "MORA_HOME": str(home),
        "MORA_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "MORA_S3_BUCKET": settings.s3_bucket,
        "MORA_S3_ACCESS_KEY": key or "",
        "MORA_S3_SECRET_KEY": secret or "",
        "MORA_RAY_DASHBOARD_URL": settings.ray_dashboard_url,
    }


def _run_id(output: str) -> str:
    """The run id `mora retrain` printed (``submitted job mora-RUN (run RUN) to ...``)."""
    match = re.search(r"\(run (retrain-[0-9A-Za-z-]+)\)", output)
    assert match, output[-2000:]
    return match.group(1)


def test_fleet_job_isolates_a_corrupt_service(fleet_cluster: FleetCluster, object_store: Any) -> None:
    dataset = write_fleet_dataset(object_store, 3)
    good, bad = dataset.services[:2], dataset.services[2]
    bad_key = f"datasets/{dataset.name}/service={bad}/part-00000.parquet"
    assert object_store.exists(bad_key)
    original = object_store.get_bytes(bad_key)
    object_store.put_bytes(bad_key, b"PAR1 this is not a parquet file PAR1")

    job_id, run_id = _submit(fleet_cluster, dataset.name, dataset.services, max_calls=2)
    status, logs = _wait_job(fleet_cluster, job_id)

    # A failed service fails the job (its exit code), and the summary still records the whole run.
    assert status == "FAILED", logs[-3000:]
    assert f"FAILED {bad}:" in logs
    assert f"FLEET RESULT: 2 succeeded, 1 failed ({bad}); exit 1" in logs
    assert f"mora retrain --rerun-failed {run_id}" in logs
    assert "3/3 done, 1 failed" in logs  # the progress line
    for secret in fleet_cluster.settings.s3_credentials():
        assert secret and secret not in logs

    summary = _summary(object_store, run_id)
    rows = {row["service"]: row for row in summary["services"]}
    assert summary["counts"] == {"total": 3, "succeeded": 2, "failed": 1}
    registry = ModelRegistry(object_store)
    for service in good:
        assert rows[service]["status"] == "published"
        assert rows[service]["version"] == registry.latest_version(service)
        assert rows[service]["peak_rss_mb"] > 50 and rows[service]["seconds"] > 0
        assert rows[service]["metrics"]
        manifest = registry.read_manifest(service, rows[service]["version"])
        assert manifest.extra["run_id"] == run_id
        assert manifest.config["lstm"]["units"] == TINY_CONFIG["lstm"]["units"]
    assert rows[bad]["status"] == "failed" and rows[bad]["version"] is None
    assert rows[bad]["error"].startswith(
        f"reading s3://{fleet_cluster.settings.s3_bucket}/{bad_key.rsplit('/', 1)[0]}/"
    )
    assert "parquet" in rows[bad]["error"].lower()
    assert registry.latest_version(bad) is None

    # `mora retrain --wait` (the CLI over the same Jobs API): the bad service alone fails the job
    from typer.testing import CliRunner

    from mora_platform.cli import app

    settings = fleet_cluster.settings
    key, secret = settings.s3_credentials()
    env = _cli_env(settings, fleet_cluster.home)
    result = CliRunner().invoke(
        app,
        ["retrain", "--dataset", dataset.name, "--services", bad, "--wait", "--timeout", "150"],
        env=env,
    )
    assert result.exit_code == 1, result.output[-3000:]
    assert "submitted job" in result.output and "FLEET RESULT: 0 succeeded, 1 failed" in result.output
    # (Ray's SDK logger may print after it, to a stream an earlier CliRunner closed: look for the line)
    assert "FAILED" in result.output and "mora retrain --rerun-failed" in result.output
    assert secret and secret not in result.output

    # Only the token's holder reads the Jobs API; and no credential is there.
    assert httpx.get(f"{settings.ray_dashboard_url}/api/jobs/", timeout=10.0).status_code == 401
    jobs_api = httpx.get(
        f"{settings.ray_dashboard_url}/api/jobs/", headers=fleet_cluster.head.auth_headers(), timeout=10.0
    )
    assert jobs_api.status_code == 200 and dataset.name in jobs_api.text
    for value in (key, secret):
        assert value and value not in jobs_api.text

    # The data is fixed: `mora retrain --rerun-failed RUN_ID` retrains the failed service alone.
    object_store.put_bytes(bad_key, original)
    rerun = CliRunner().invoke(
        app, ["retrain", "--rerun-failed", run_id, "--wait", "--timeout", "150"], env=env
    )
    assert rerun.exit_code == 0, rerun.output[-3000:]
    assert f"re-running the 1 service(s) that failed in run {run_id}: {bad}" in rerun.output
    assert "FLEET RESULT: 1 succeeded, 0 failed; exit 0" in rerun.output
    again = _summary(object_store, _run_id(rerun.output))
    assert [row["service"] for row in again["services"]] == [bad]
    assert again["services"][0]["status"] == "published" and again["options"]["rerun_of"] == run_id
    assert registry.latest_version(bad) == again["services"][0]["version"]
    nothing = CliRunner().invoke(app, ["retrain", "--rerun-failed", _run_id(rerun.output)], env=env)
    assert nothing.exit_code == 0 and "nothing to re-run" in nothing.output


def test_a_run_that_cannot_store_its_summary_fails_and_is_rerun(
    fleet_cluster: FleetCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drill: S3 goes down mid-retrain. The job fails (exit 3: result not recorded); once S3 is
    back, `--rerun-failed` finds no summary and retrains every service of that run, saying so."""
    from typer.testing import CliRunner

    from infra.local.weed import WeedPorts, WeedServer
    from mora_platform.cli import app
    from mora_platform.storage.object_store import ObjectStore

    key, secret = fleet_cluster.settings.s3_credentials()
    assert key and secret
    ports = WeedPorts.free()

    def weed() -> WeedServer:  # same key pair as the head's stack.env: the job authenticates to it
        return WeedServer(
            tmp_path / "s3",
            ports,
            key,
            secret,
            log_path=tmp_path / "weed.log",
            config_path=tmp_path / "ids.json",
        )

    server = weed()
    server.start(timeout=60)
    try:
        settings = fleet_cluster.settings.model_copy(update={"s3_endpoint_url": server.endpoint_url})
        store = ObjectStore.from_settings(settings)
        store.ensure_bucket()
        dataset = write_fleet_dataset(store, 1, seed=13)
        (service,) = dataset.services
        pid_dir = tmp_path / "pids"
        monkeypatch.setenv("MORA_FLEET_PID_DIR", str(pid_dir))
        job_id, run_id = _submit(fleet_cluster, dataset.name, [service], settings=settings)
        deadline = time.monotonic() + 90
        while not (pid_dir.exists() and list(pid_dir.glob(f"{service}.*.pid"))):
            assert time.monotonic() < deadline, "the task never started training"
            time.sleep(0.05)
        server.stop(timeout=0.1)  # S3 gone while the service trains: publishing and the summary fail

        status, logs = _wait_job(fleet_cluster, job_id, timeout=240)
        assert status == "FAILED", logs[-3000:]
        assert "run summary could not be stored" in logs
        assert "FLEET RESULT: 0 succeeded, 1 failed" in logs and "run summary NOT stored; exit 3" in logs

        server = weed()
        server.start(timeout=60)
        assert not store.exists(f"runs/{run_id}/summary.json")
        monkeypatch.delenv("MORA_FLEET_PID_DIR")
        rerun = CliRunner().invoke(
            app,
            ["retrain", "--rerun-failed", run_id, "--wait", "--timeout", "180"],
            env=_cli_env(settings, fleet_cluster.home),
        )
        assert rerun.exit_code == 0, rerun.output[-3000:]
        assert f"no run summary for run {run_id}" in rerun.output
        assert f"re-running every service of that run (services {service} of dataset" in rerun.output
        assert "FLEET RESULT: 1 succeeded, 0 failed; exit 0" in rerun.output
        assert _summary(store, _run_id(rerun.output))["options"]["rerun_of"] == run_id
    finally:
        server.stop(timeout=5)


def test_plain_ray_job_submit_as_the_readme_shows(fleet_cluster: FleetCluster, object_store: Any) -> None:
    """`ray job submit --working-dir . -- python jobs/retrain_fleet.py ...` from a shell with no virtualenv
    active and no MORA_* setting: the head's environment gives the job its Python and its settings."""
    dataset = write_fleet_dataset(object_store, 1, seed=3)
    (service,) = dataset.services
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MORA_", "RAY_AUTH_")) and k != "VIRTUAL_ENV"
    }
    env.update({"PATH": path, "RAY_ADDRESS": fleet_cluster.settings.ray_dashboard_url})
    # The README's `export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$MORA_HOME/ray_auth_token`
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path(fleet_cluster.home))})
    command = [
        str(Path(venv_bin) / "ray"),
        "job",
        "submit",
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/retrain_fleet.py",
        "--dataset",
        dataset.name,
        "--services",
        service,
        "--config-json",
        json.dumps(TINY_CONFIG),
    ]
    done = subprocess.run(
        command, env=env, cwd=repository_root(), capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "FLEET RESULT: 1 succeeded, 0 failed" in output
    assert ModelRegistry(object_store).latest_version(service) is not None
    jobs_api = httpx.get(
        f"{fleet_cluster.settings.ray_dashboard_url}/api/jobs/",
        headers=fleet_cluster.head.auth_headers(),
        timeout=10.0,
    ).text
    for value in fleet_cluster.settings.s3_credentials():
        assert value and value not in jobs_api and value not in output

    # The platform's own counters reach the node's Prometheus endpoint (README: "Custom metrics").
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        text = httpx.get(fleet_cluster.head.metrics_url, timeout=10.0).text
        if f'service="{service}"' in text:
            break
        time.sleep(2)
    trained = [
        line for line in text.splitlines() if line.startswith("ray_mora_services_trained") and service in line
    ]
    assert trained and float(trained[0].rsplit(" ", 1)[1]) >= 1.0, text[-2000:]


def test_killed_worker_is_retried_and_the_service_publishes(
    fleet_cluster: FleetCluster, object_store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = write_fleet_dataset(object_store, 1, seed=11)
    (service,) = dataset.services
    pid_dir = tmp_path / "pids"
    monkeypatch.setenv("MORA_FLEET_PID_DIR", str(pid_dir))
    job_id, run_id = _submit(fleet_cluster, dataset.name, [service], max_retries=2)

    deadline = time.monotonic() + 90
    first: list[Path] = []
    while not first and time.monotonic() < deadline:
        first = sorted(pid_dir.glob(f"{service}.*.pid")) if pid_dir.exists() else []
        time.sleep(0.05)
    assert first, "the task never started training"
    victim = int(first[0].read_text())
    os.kill(victim, signal.SIGKILL)

    status, logs = _wait_job(fleet_cluster, job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    pids = {int(path.read_text()) for path in pid_dir.glob(f"{service}.*.pid")}
    assert victim in pids and len(pids) >= 2, f"no retry after killing {victim}: {pids}"
    row = _summary(object_store, run_id)["services"][0]
    assert row["status"] == "published", row
    assert row["attempts"] >= 2, row  # Ray's state API saw the retry too
    assert ModelRegistry(object_store).latest_version(service) == row["version"]


def test_tune_writes_to_s3_and_the_next_retrain_uses_the_best_config(
    fleet_cluster: FleetCluster, object_store: Any, tmp_path: Path
) -> None:
    dataset = write_fleet_dataset(object_store, 1, seed=5)
    (service,) = dataset.services
    settings = fleet_cluster.settings
    key, secret = settings.s3_credentials()
    env = {
        **os.environ,
        "MORA_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "MORA_S3_BUCKET": settings.s3_bucket,
        "MORA_S3_ACCESS_KEY": key or "",
        "MORA_S3_SECRET_KEY": secret or "",
        "MORA_RAY_ADDRESS": fleet_cluster.head.address,
        "RAY_ADDRESS": fleet_cluster.head.address,
    }
    base = tmp_path / "base.json"
    base.write_text(json.dumps({k: v for k, v in TINY_CONFIG.items() if k != "lstm"}))
    tuned = subprocess.run(
        [
            str(Path(sys.executable).parent / "mora"),
            "tune",
            "--dataset",
            dataset.name,
            "--service",
            service,
            "--samples",
            "2",
            "--tiny",
            "--max-epochs",
            "2",
            "--time-budget-s",
            "150",
            "--config",
            str(base),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        cwd=repository_root(),
    )
    assert tuned.returncode == 0, tuned.stdout[-2000:] + tuned.stderr[-3000:]
    assert "tuned config saved" in tuned.stdout
    assert "Traceback" not in tuned.stderr and "SystemExit" not in tuned.stderr, tuned.stderr[-3000:]

    keys = object_store.list_keys("tune/")
    experiment = [k for k in keys if f"/{service}/" in k]
    assert experiment, f"no Tune experiment for {service} under tune/: {keys[:20]}"
    assert any(k.endswith(f"{service}/best.json") for k in experiment)

    registry = ModelRegistry(object_store)
    best = registry.load_tuned_config(service)
    assert best is not None and best["lstm"]["units"][0] in (4, 8) and best["seq_len"] in (6, 8)

    retrain = subprocess.run(
        [
            sys.executable,
            "jobs/retrain_fleet.py",
            "--dataset",
            dataset.name,
            "--services",
            service,
            "--backend",
            "local",
            "--epochs",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        cwd=repository_root(),
    )
    assert retrain.returncode == 0, retrain.stdout[-3000:] + retrain.stderr[-3000:]
    version = registry.latest_version(service)
    assert version is not None
    manifest = registry.read_manifest(service, version)
    assert manifest.extra["tuned_config"] is True
    assert manifest.config["lstm"]["units"] == best["lstm"]["units"]
    assert manifest.config["lstm"]["learning_rate"] == pytest.approx(best["lstm"]["learning_rate"])
    assert manifest.config["seq_len"] == best["seq_len"]
    assert manifest.config["fusion_weights"] == pytest.approx(best["fusion_weights"])
    assert manifest.config["lstm"]["epochs"] == 1
