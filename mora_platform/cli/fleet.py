"""`mora retrain` (fleet retraining submitted as a Ray Job) and `mora tune` (a Tune search for one service).

``mora retrain`` packages the repository as the job's working directory (``.rayignore`` keeps it
small) and submits ``jobs/retrain_fleet.py`` to ``settings.ray_dashboard_url``. Only settings that
are not secret (S3 endpoint, bucket, region) travel in the job's ``runtime_env``, which anyone who
can read the dashboard sees; the cluster's processes take the S3 key pair from their own
environment (``$MORA_HOME/stack.env`` on the local stack, a Kubernetes Secret on KubeRay). ``--wait`` follows
the job's log until it ends; the job fails (and ``--wait`` exits non-zero) when a service failed or
the run summary could not be stored, unless ``--allow-failures``. ``--rerun-failed RUN_ID`` retrains
only the services that failed in that run (all of the run's services when its summary is missing).
``mora tune`` runs the search from this process on ``settings.ray_address`` (a local Ray when
unset) and stores the best config in the registry.

The local stack's Ray head wants its token (``$MORA_HOME/ray_auth_token``): the Jobs API calls
send it as a header, ``mora tune`` puts RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH in its environment;
only for a head on 127.0.0.1, never for another cluster.
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
    no_tuned: bool,
    allow_failures: bool = False,
    rerun_of: str | None = None,
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
    if allow_failures:
        argv.append("--allow-failures")
    if rerun_of:
        argv += ["--rerun-of", rerun_of]
    if no_tuned:
        argv.append("--no-tuned")
    return shlex.join(argv)


def jobs_client(settings: MoraSettings) -> Any:
    """A ``JobSubmissionClient`` for ``settings.ray_dashboard_url``, with the local stack's token if it is one."""
    from ray.job_submission import JobSubmissionClient

    from infra.local.ray_head import client_headers

    url = settings.ray_dashboard_url
    return JobSubmissionClient(url, headers=client_headers(settings.home, url) or None)


def submit_job(settings: MoraSettings, entrypoint: str, run_id: str, kind: str) -> str:
    """Submit ``entrypoint`` with the repository as working directory through the Ray Jobs API, with
    only non-secret settings in its runtime_env; returns the submission id (``mora-{run_id}``)."""
    client = jobs_client(settings)
    return client.submit_job(
        entrypoint=entrypoint,
        submission_id=f"mora-{run_id}",
        runtime_env={
            "working_dir": str(repository_root()),
            "excludes": WORKING_DIR_EXCLUDES,
            "env_vars": job_env_vars(settings),
        },
        metadata={"mora.run_id": run_id, "mora.kind": kind},
    )


def submit_retrain_job(settings: MoraSettings, entrypoint: str, run_id: str) -> str:
    """Submit the fleet job through the Ray Jobs API; returns the submission id."""
    return submit_job(settings, entrypoint, run_id, "retrain")


def submit_and_follow(
    settings: MoraSettings, entrypoint: str, run_id: str, kind: str, *, wait: bool, timeout: float | None
) -> str | None:
    """Submit a job (``submit_job``), say where its summary goes, and with ``wait`` follow its log;
    returns the final status when waiting, else None. A refused submission exits 2."""
    try:
        job_id = submit_job(settings, entrypoint, run_id, kind)
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
        return None
    status = follow_job(settings, job_id, timeout_s=timeout)
    typer.echo(f"job {job_id}: {status}")
    return status


def follow_job(
    settings: MoraSettings, job_id: str, timeout_s: float | None = None, poll_s: float = 2.0
) -> str:
    """Print the job's log as it grows until it ends; returns the final status name."""
    client = jobs_client(settings)
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


def previous_run_services(settings: MoraSettings, run_id: str) -> tuple[str, str] | None:
    """(dataset, services) of the job ``mora-{run_id}`` as the Jobs API recorded it, or None."""
    try:
        info = jobs_client(settings).get_job_info(f"mora-{run_id}")
    except Exception:
        return None
    argv = shlex.split(str(getattr(info, "entrypoint", "") or ""))
    values = {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag in ("--dataset", "--services")}
    if "--dataset" not in values:
        return None
    return values["--dataset"], values.get("--services", "all")


def rerun_selection(
    settings: MoraSettings, run_id: str, dataset: str | None, services: str
) -> tuple[str, str, str]:
    """(dataset, services, message) for ``--rerun-failed RUN_ID``; exits 0 when nothing failed, 2 on errors."""
    from mora_platform.orchestration import RunSummary, plan_rerun, summary_key
    from mora_platform.storage.errors import ObjectNotFoundError, StorageError
    from mora_platform.storage.object_store import ObjectStore

    store = ObjectStore.from_settings(settings)
    uri = store.uri(summary_key(run_id))
    previous: RunSummary | None = None
    try:
        previous = RunSummary.model_validate_json(store.get_bytes(summary_key(run_id)))
    except ObjectNotFoundError:
        previous = None
    except StorageError as error:
        typer.echo(f"error: --rerun-failed {run_id}: cannot read {uri}: {error}", err=True)
        raise typer.Exit(2) from None
    except ValueError as error:
        typer.echo(f"error: --rerun-failed {run_id}: {uri} is not a run summary: {error}", err=True)
        raise typer.Exit(2) from None
    if previous is None and dataset is None:
        recorded = previous_run_services(settings, run_id)
        if recorded is not None:
            dataset, services = recorded
    try:
        plan = plan_rerun(run_id, previous, dataset=dataset, services=services, summary_uri=uri)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    if not plan.services:
        typer.echo(plan.message)
        raise typer.Exit(0)
    return plan.dataset, plan.services, plan.message


def retrain(
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help="Dataset name in the bucket (see `mora data list`); with --rerun-failed, taken from the run.",
    ),
    services: str = typer.Option("all", "--services", help="'all' or a comma-separated list of services."),
    rerun_failed: str | None = typer.Option(
        None,
        "--rerun-failed",
        "--from-run",
        metavar="RUN_ID",
        help="Retrain only the services that failed in run RUN_ID (its summary in S3); all of that run's "
        "services when the summary is missing.",
    ),
    wait: bool = typer.Option(
        False, "--wait", help="Follow the job's log until it ends; exit with its result."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the LSTM's maximum epochs."),
    num_cpus: float = typer.Option(1.0, "--num-cpus", min=0.1, help="CPUs per service task."),
    max_retries: int = typer.Option(2, "--max-retries", min=0, help="Retries of a task whose worker died."),
    config: Path | None = typer.Option(None, "--config", help="JSON file merged over each service's config."),
    allow_failures: bool = typer.Option(
        False,
        "--allow-failures",
        help="The job succeeds when at least one service succeeded (default: any failed service fails it).",
    ),
    fail_on_any: bool = typer.Option(
        False, "--fail-on-any", hidden=True, help="The default now; kept for old scripts."
    ),
    no_tuned: bool = typer.Option(False, "--no-tuned", help="Ignore tuned configs in the registry."),
    max_calls: int = typer.Option(
        3, "--max-calls", min=0, help="Recycle a worker after N services (bounds memory growth; 0 = reuse)."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", help="With --wait: stop following after N seconds."
    ),
) -> None:
    """Retrain the fleet as a Ray Job (one task per service); publish a version per service.

    The job fails (and --wait exits 1) when any service failed or the run summary could not be
    stored; `mora retrain --rerun-failed RUN_ID` then retrains only what failed.
    """
    from mora_platform.orchestration import new_run_id
    from mora_platform.settings import MoraSettings

    settings = MoraSettings()  # type: ignore[call-arg]
    if fail_on_any and allow_failures:
        typer.echo("error: --fail-on-any and --allow-failures contradict each other", err=True)
        raise typer.Exit(2)
    if rerun_failed is not None:
        dataset, services, message = rerun_selection(settings, rerun_failed, dataset, services)
        typer.echo(message)
    elif dataset is None:
        typer.echo("error: --dataset is required (or --rerun-failed RUN_ID)", err=True)
        raise typer.Exit(2)
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
        allow_failures=allow_failures,
        rerun_of=rerun_failed,
        no_tuned=no_tuned,
        max_calls=max_calls,
    )
    status = submit_and_follow(settings, entrypoint, run_id, "retrain", wait=wait, timeout=timeout)
    if status is not None and status != "SUCCEEDED":
        if status in TERMINAL_STATUSES:
            typer.echo(f"retrain what failed with: mora retrain --rerun-failed {run_id}")
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
    from infra.local.ray_head import use_client_env
    from mora_platform.orchestration import new_run_id
    from mora_platform.settings import MoraSettings
    from tune.run import TuneRequest, tune_service
    from tune.search_space import SearchBounds

    settings = MoraSettings()  # type: ignore[call-arg]
    use_client_env(settings.home, settings.ray_address)  # the local stack's token, for ray.init
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
