"""`mora retrain` job assembly: entrypoint quoting, job environment, a small working-dir package."""

from __future__ import annotations

import shlex
import zipfile
from pathlib import Path

import pytest

from jobs.retrain_fleet import build_parser
from mora_platform.cli.fleet import WORKING_DIR_EXCLUDES, job_env_vars, repository_root, retrain_entrypoint
from mora_platform.settings import MoraSettings


def test_entrypoint_is_quoted_and_parses_back() -> None:
    command = retrain_entrypoint(
        dataset="ob demo",
        services="cart,frontend",
        run_id="retrain-x",
        num_cpus=1.0,
        max_retries=3,
        epochs=2,
        config_json='{"lstm": {"units": [4]}}',
        allow_failures=True,
        rerun_of="retrain-before",
        no_tuned=False,
        max_calls=2,
    )
    argv = shlex.split(command)
    assert argv[:2] == ["python", "jobs/retrain_fleet.py"]
    args = build_parser().parse_args(argv[2:])
    assert args.dataset == "ob demo" and args.services == "cart,frontend" and args.run_id == "retrain-x"
    assert (
        args.epochs == 2
        and args.max_retries == 3
        and args.max_calls == 2
        and args.allow_failures
        and args.rerun_of == "retrain-before"
        and not args.no_tuned
    )
    assert args.config_json == '{"lstm": {"units": [4]}}'


def test_job_env_carries_s3_settings_but_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORA_FLEET_PID_DIR", "/tmp/pids")
    settings = MoraSettings(
        s3_endpoint_url="http://127.0.0.1:1234",
        s3_bucket="b",
        s3_access_key="AKIA-test",  # type: ignore[arg-type]
        s3_secret_key="s3cr3t",  # type: ignore[arg-type]
    )  # type: ignore[call-arg]
    env = job_env_vars(settings)
    assert env["MORA_S3_ENDPOINT_URL"] == "http://127.0.0.1:1234" and env["MORA_S3_BUCKET"] == "b"
    # The Jobs API shows runtime_env to every dashboard reader: the key pair stays out of it.
    assert "MORA_S3_ACCESS_KEY" not in env and "MORA_S3_SECRET_KEY" not in env
    assert not [name for name, value in env.items() if "s3cr3t" in value or "AKIA-test" in value]
    assert env["MORA_FLEET_PID_DIR"] == "/tmp/pids"
    assert "s3cr3t" not in repr(settings)


def test_working_dir_package_is_small_and_has_the_code(tmp_path: Path) -> None:
    # Package the repository exactly as Ray's runtime_env upload does (.gitignore, .rayignore, excludes).
    from ray._private.runtime_env.packaging import create_package

    root = repository_root()
    target = tmp_path / "pkg.zip"
    create_package(str(root), target, include_gitignore=True, excludes=WORKING_DIR_EXCLUDES)
    names = zipfile.ZipFile(target).namelist()
    assert "jobs/retrain_fleet.py" in names and "mora_platform/orchestration.py" in names
    assert not [n for n in names if n.startswith((".git/", ".venv/", ".mora/", "benchmarks/results/"))]
    assert not [n for n in names if "__pycache__" in n]
    assert target.stat().st_size < 20 * 2**20
