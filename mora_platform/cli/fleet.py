"""`mora retrain` (fleet retraining submitted as a Ray Job) and `mora tune` (a Tune search for one service).

``mora retrain`` packages the repository as the job's working directory (``.rayignore`` keeps it
small) and submits ``jobs/retrain_fleet.py`` to ``settings.ray_dashboard_url``. Only settings that
are not secret (S3 endpoint, bucket, region) travel in the job's ``runtime_env``, which anyone who
can read the dashboard sees; the cluster's processes take the S3 key pair from their own
environment (``$MORA_HOME/stack.env`` on the local stack, a Kubernetes Secret on KubeRay). ``--wait`` follows
the job's log until it ends. ``mora tune`` runs the search from this process on
``settings.ray_address`` (a local Ray when unset) and stores the best config in the registry.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from mora_platform.settings import MoraSettings

#: Left out of the uploaded working directory, on top of .gitignore / .rayignore.
WORKING_DIR_EXCLUDES = [
    ".git",
    ".venv",
    ".mora",
    "benchmarks/results",
    "**/__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "*.egg-info",
]
#: Environment variables passed through to the job when set here (test hooks, logging).
PASSTHROUGH_ENV = ("MORA_FLEET_PID_DIR", "TF_CPP_MIN_LOG_LEVEL")
TERMINAL_STATUSES = {"SUCCEEDED", "FAILED", "STOPPED"}


def repository_root() -> Path:
    """The directory holding ``jobs/`` and ``mora_platform/`` (the job's working directory)."""
    # From this file, not ``jobs.__file__``: under pytest ``jobs`` can be a namespace package
    # merged with tests/unit/jobs, which has no ``__file__``.
    return Path(__file__).resolve().parents[2]


def job_env_vars(settings: MoraSettings) -> dict[str, str]:
    """The job's ``runtime_env`` variables: where the data is, never a credential.

    The Jobs API shows a job's runtime_env to anyone who can read the dashboard, and Ray copies it
    into its logs, so the S3 key pair is left to the cluster's own environment.
    """
    env = {
        "MORA_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "MORA_S3_BUCKET": settings.s3_bucket,
        "MORA_S3_REGION": settings.s3_region,
        "PYTHONUNBUFFERED": "1",
    }
    for name in PASSTHROUGH_ENV:
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def retrain_entrypoint(
    *,
    dataset: str,
    services: str,
    run_id: str,
    num_cpus: float,
    max_retries: int,
    epochs: int | None,
    config_json: str | None,
    fail_on_any: bool,
    no_tuned: bool,
    max_calls: int = 0,
    python: str = "python",
) -> str:
    """The shell command the job runs (arguments quoted)."""
    argv = [
        python,
        "jobs/retrain_fleet.py",
        "--dataset",
        dataset,
        "--services",
        services,
        "--run-id",
        run_id,
        "--num-cpus",
        f"{num_cpus:g}",
        "--max-retries",
        str(max_retries),
    ]
    if max_calls:
        argv += ["--max-calls", str(max_calls)]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    if config_json:
        argv += ["--config-json", config_json]
    if fail_on_any:
        argv.append("--fail-on-any")
    if no_tuned:
        argv.append("--no-tuned")
    return shlex.join(argv)


def submit_retrain_job(settings: MoraSettings, entrypoint: str, run_id: str) -> str:
    """Submit the fleet job through the Ray Jobs API; returns the submission id."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(settings.ray_dashboard_url)
    return client.submit_job(
        entrypoint=entrypoint,
        submission_id=f"mora-{run_id}",
        runtime_env={
            "working_dir": str(repository_root()),
            "excludes": WORKING_DIR_EXCLUDES,
            "env_vars": job_env_vars(settings),
        },
        metadata={"mora.run_id": run_id, "mora.kind": "retrain"},
    )


def follow_job(
    settings: MoraSettings, job_id: str, timeout_s: float | None = None, poll_s: float = 2.0
) -> str:
    """Print the job's log as it grows until it ends; returns the final status name."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(settings.ray_dashboard_url)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    printed = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            typer.echo(logs[printed:], nl=False)
            printed = len(logs)
        if status in TERMINAL_STATUSES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


def retrain(
    dataset: str = typer.Option(..., "--dataset", help="Dataset name in the bucket (see `mora data list`)."),
    services: str = typer.Option("all", "--services", help="'all' or a comma-separated list of services."),
    wait: bool = typer.Option(
        False, "--wait", help="Follow the job's log until it ends; exit with its result."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the LSTM's maximum epochs."),
    num_cpus: float = typer.Option(1.0, "--num-cpus", min=0.1, help="CPUs per service task."),
    max_retries: int = typer.Option(2, "--max-retries", min=0, help="Retries of a task whose worker died."),
    config: Path | None = typer.Option(None, "--config", help="JSON file merged over each service's config."),
    fail_on_any: bool = typer.Option(False, "--fail-on-any", help="The job fails if any service fails."),
    no_tuned: bool = typer.Option(False, "--no-tuned", help="Ignore tuned configs in the registry."),
    max_calls: int = typer.Option(
        3, "--max-calls", min=0, help="Recycle a worker after N services (bounds memory growth; 0 = reuse)."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="With --wait: stop following after N seconds."
    ),
) -> None:
    """Retrain the fleet as a Ray Job (one task per service); publish a version per service."""
    from mora_platform.orchestration import new_run_id
    from mora_platform.settings import MoraSettings

    settings = MoraSettings()  # type: ignore[call-arg]
    config_json = _read_config(config) if config is not None else None
    run_id = new_run_id("retrain")
    entrypoint = retrain_entrypoint(
        dataset=dataset,
        services=services,
        run_id=run_id,
        num_cpus=num_cpus,
        max_retries=max_retries,
        epochs=epochs,
        config_json=config_json,
        fail_on_any=fail_on_any,
        no_tuned=no_tuned,
        max_calls=max_calls,
    )
    try:
        job_id = submit_retrain_job(settings, entrypoint, run_id)
    except Exception as error:
        typer.echo(
            f"error: could not submit to {settings.ray_dashboard_url}: {type(error).__name__}: {error}",
            err=True,
        )
        raise typer.Exit(2) from None
    typer.echo(f"submitted job {job_id} (run {run_id}) to {settings.ray_dashboard_url}")
    typer.echo(f"summary will be at s3://{settings.s3_bucket}/runs/{run_id}/summary.json")
    if not wait:
        typer.echo(f"follow it with: ray job logs -f {job_id} --address {settings.ray_dashboard_url}")
        return
    status = follow_job(settings, job_id, timeout_s=timeout)
    typer.echo(f"job {job_id}: {status}")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


def tune(
    dataset: str = typer.Option(..., "--dataset", help="Dataset name in the bucket."),
    service: str = typer.Option(..., "--service", help="Service to tune."),
    samples: int = typer.Option(8, "--samples", min=1, help="Number of trials."),
    time_budget_s: float = typer.Option(
        900.0, "--time-budget-s", min=1, help="Wall-time budget of the search."
    ),
    max_epochs: int | None = typer.Option(None, "--max-epochs", min=1, help="Epochs of the longest trial."),
    tiny: bool = typer.Option(False, "--tiny", help="A tiny search space (tests, demos)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the search and of the models."),
    config: Path | None = typer.Option(
        None, "--config", help="JSON file: base training config under each trial."
    ),
    save: bool = typer.Option(True, "--save/--no-save", help="Store the best config in the registry."),
) -> None:
    """Search the LSTM architecture and fusion weight of one service with Ray Tune (ASHA)."""
    from mora_platform.orchestration import new_run_id
    from mora_platform.settings import MoraSettings
    from tune.run import TuneRequest, tune_service
    from tune.search_space import SearchBounds

    settings = MoraSettings()  # type: ignore[call-arg]
    bounds = SearchBounds.tiny() if tiny else SearchBounds()
    if max_epochs is not None:
        bounds = bounds.model_copy(update={"max_epochs": max_epochs})
    base: dict[str, Any] = json.loads(_read_config(config)) if config is not None else {}
    request = TuneRequest(
        dataset=dataset,
        service=service,
        run_id=new_run_id("tune"),
        num_samples=samples,
        time_budget_s=time_budget_s,
        bounds=bounds,
        base_config={"seed": seed, **base},
        seed=seed,
        save=save,
    )
    try:
        result = tune_service(request, settings)
    except Exception as error:
        typer.echo(f"error: tune {service}: {type(error).__name__}: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"trials: {result.trials} ({result.trials_completed} reported)")
    typer.echo(f"best {result.best_metric:.4f}: {json.dumps(result.best_trial, sort_keys=True)}")
    typer.echo(f"experiment: {result.experiment_uri}")
    typer.echo(f"tuned config {'saved to the registry' if result.saved else 'not saved'} for {service}")


def _read_config(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        typer.echo(f"error: --config {path}: {exc}", err=True)
        raise typer.Exit(2) from None
    if not isinstance(data, dict):
        typer.echo(f"error: --config {path}: must hold a JSON object", err=True)
        raise typer.Exit(2)
    return json.dumps(data, separators=(",", ":"))


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("retrain")(retrain)
    app.command("tune")(tune)
