"""`mora cycle`: the rightsizing cycle (collect, retrain what changed, summarise) as a Ray Job.

Submits ``jobs/rightsize_cycle.py`` through the Ray Jobs API as ``mora retrain`` submits the fleet job
(same working-dir package, same ``runtime_env``: S3 endpoint, bucket and region, never a credential).
The job reads the Prometheus URL and auth from the cluster's own environment (``$MORA_HOME/stack.env``
on the local stack, a ConfigMap and Secret on KubeRay); ``--prometheus`` and ``--step`` (not secret)
travel on the job's command line when given. ``--local`` runs the cycle in this process, without Ray.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    pass


def cycle_entrypoint(
    *,
    dataset: str,
    namespace: str | None,
    services: str,
    since: str,
    until: str,
    run_id: str,
    prometheus: str | None = None,
    step: str | None = None,
    retrain: str = "changed",
    min_new_data: str = "0",
    no_collect: bool = False,
    num_cpus: float = 1.0,
    max_retries: int = 2,
    max_calls: int = 3,
    epochs: int | None = None,
    config_json: str | None = None,
    no_tuned: bool = False,
    python: str = "python",
) -> list[str]:
    """The job's argv (``shlex.join`` it for the Jobs API)."""
    argv = [
        python,
        "jobs/rightsize_cycle.py",
        "--dataset",
        dataset,
        "--services",
        services,
        "--since",
        since,
        "--until",
        until,
        "--run-id",
        run_id,
        "--retrain",
        retrain,
        "--min-new-data",
        min_new_data,
        "--num-cpus",
        f"{num_cpus:g}",
        "--max-retries",
        str(max_retries),
        "--max-calls",
        str(max_calls),
    ]
    if namespace:
        argv += ["--namespace", namespace]
    if prometheus:
        argv += ["--prometheus", prometheus]
    if step:
        argv += ["--step", step]
    if no_collect:
        argv.append("--no-collect")
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    if config_json:
        argv += ["--config-json", config_json]
    if no_tuned:
        argv.append("--no-tuned")
    return argv


def cycle(
    dataset: str = typer.Option(..., "--dataset", help="Dataset the cycle collects into and trains from."),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="Kubernetes namespace of the services (needed unless --no-collect)."
    ),
    services: str = typer.Option(
        "all", "--services", help="'all' (the namespace's deployments) or a comma-separated list."
    ),
    since: str = typer.Option(
        "7d", "--since", help="Start of a service's first collection (7d, ISO, unix s)."
    ),
    until: str = typer.Option(
        "now", "--until", help="End of the window ('now', a duration before now, ISO)."
    ),
    prometheus: str | None = typer.Option(
        None,
        "--prometheus",
        help="Prometheus URL as the job reaches it (default: MORA_PROMETHEUS_URL where the job runs).",
    ),
    step: str | None = typer.Option(None, "--step", help="Query step (default MORA_PROMETHEUS_STEP, 30s)."),
    retrain: str = typer.Option(
        "changed",
        "--retrain",
        help="changed (default), all (every service with rows) or none (collect only).",
    ),
    min_new_data: str = typer.Option(
        "0", "--min-new-data", help="Retrain once a service has this much data after its model's (e.g. 24h)."
    ),
    no_collect: bool = typer.Option(
        False, "--no-collect", help="Decide and retrain on the dataset as it is."
    ),
    wait: bool = typer.Option(
        False, "--wait", help="Follow the job's log until it ends; exit with its result."
    ),
    local: bool = typer.Option(False, "--local", help="Run the cycle in this process, without Ray."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the LSTM's maximum epochs."),
    num_cpus: float = typer.Option(1.0, "--num-cpus", min=0.1, help="CPUs per service task."),
    max_retries: int = typer.Option(2, "--max-retries", min=0, help="Retries of a task whose worker died."),
    max_calls: int = typer.Option(3, "--max-calls", min=0, help="Recycle a worker after N services."),
    config: Path | None = typer.Option(None, "--config", help="JSON file merged over each service's config."),
    no_tuned: bool = typer.Option(False, "--no-tuned", help="Ignore tuned configs in the registry."),
    timeout: float | None = typer.Option(
        None, "--timeout", help="With --wait: stop following after N seconds."
    ),
) -> None:
    """Collect the newest metrics, retrain the services that changed, store a run summary (a Ray Job)."""
    from mora_platform.cli.fleet import _read_config, submit_and_follow
    from mora_platform.orchestration import new_run_id
    from mora_platform.settings import MoraSettings

    if retrain not in ("changed", "all", "none"):
        typer.echo(f"error: --retrain must be changed, all or none, got {retrain!r}", err=True)
        raise typer.Exit(2)
    if not namespace and not no_collect:
        typer.echo(
            "error: pass --namespace NS (or --no-collect to retrain on the dataset as it is)", err=True
        )
        raise typer.Exit(2)
    config_json = _read_config(config) if config is not None else None
    run_id = new_run_id("cycle")
    argv = cycle_entrypoint(
        dataset=dataset,
        namespace=namespace,
        services=services,
        since=since,
        until=until,
        run_id=run_id,
        prometheus=prometheus,
        step=step,
        retrain=retrain,
        min_new_data=min_new_data,
        no_collect=no_collect,
        num_cpus=num_cpus,
        max_retries=max_retries,
        max_calls=max_calls,
        epochs=epochs,
        config_json=config_json,
        no_tuned=no_tuned,
    )
    if local:
        from jobs.rightsize_cycle import main as run_locally

        raise typer.Exit(run_locally([*argv[2:], "--backend", "local"]))

    settings = MoraSettings()  # type: ignore[call-arg]
    status = submit_and_follow(settings, shlex.join(argv), run_id, "cycle", wait=wait, timeout=timeout)
    if status is not None and status != "SUCCEEDED":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``mora cycle`` to ``app``."""
    app.command("cycle")(cycle)
