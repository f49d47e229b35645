"""`mora serve up | down | status`: the recommendation endpoint on the local Ray cluster.

``up`` resolves ``serve/config.yaml`` for this machine (HTTP host/port from settings, the env
files that hold the S3 credentials and token) into ``{home}/serve/config.yaml`` and runs
``serve deploy`` against the Ray dashboard in settings; ``down`` runs ``serve shutdown``.
Secrets never go into the generated config: it only lists env files (mode 0600) to read.
The ``serve`` CLI talks to the dashboard; for the local stack's head it gets RAY_AUTH_MODE=token
and RAY_AUTH_TOKEN_PATH in its environment (the token stays in its file).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    from mora_platform.settings import MoraSettings

serve_app = typer.Typer(
    help="The recommendation endpoint on Ray Serve (local cluster).", no_args_is_help=True
)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "serve" / "config.yaml"
SHELL_ENV_NAME = "serve.env"
APP_IMPORT_PATH = "serve.app:build_app"


def _settings() -> MoraSettings:
    from infra.local.envfile import load_settings

    return load_settings()


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _serve_cli() -> str:
    """The ``serve`` executable of this environment."""
    candidate = Path(sys.executable).parent / "serve"
    return str(candidate) if candidate.exists() else "serve"


def _serve_cli_env(settings: MoraSettings) -> dict[str, str]:
    """This environment plus what the ``serve`` CLI needs to pass the local head's token auth."""
    from infra.local.ray_head import client_env

    return {**os.environ, **client_env(Path(settings.home), settings.ray_dashboard_url)}


def _run_serve_cli(settings: MoraSettings, *args: str) -> subprocess.CompletedProcess[str]:
    """``serve ARGS --address DASHBOARD`` with the local head's token, output captured."""
    command = [_serve_cli(), *args, "--address", settings.ray_dashboard_url]
    return subprocess.run(command, capture_output=True, text=True, check=False, env=_serve_cli_env(settings))


def _write_private_env(path: Path, values: dict[str, str]) -> None:
    """A 0600 dotenv file with ``values`` (replaced as a whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(
            "# Written by `mora serve up`: MORA_* settings from the shell, for the Serve replicas.\n"
        )
        handle.writelines(f"{key}={value}\n" for key, value in sorted(values.items()))
    tmp.replace(path)


def env_files_for_cluster(home: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Absolute env files the replicas read, lowest priority first (as MoraSettings does locally).

    MORA_* variables set only in this shell are copied to ``{home}/serve.env`` (0600), so the
    cluster (started earlier, with another environment) sees the same settings as this command.
    """
    environ = dict(os.environ if environ is None else environ)
    files = [Path(home) / "stack.env", Path(".env")]
    shell = {key: value for key, value in environ.items() if key.startswith("MORA_") and "\n" not in value}
    shell_file = Path(home) / SHELL_ENV_NAME
    if shell:
        _write_private_env(shell_file, shell)
        files.append(shell_file)
    elif shell_file.exists():
        shell_file.unlink()
    return [str(path.resolve()) for path in files if path.is_file()]


def resolve_config(config: dict[str, Any], settings: MoraSettings, env_files: list[str]) -> dict[str, Any]:
    """``config`` with this machine's HTTP host/port and env files filled in (input untouched)."""
    resolved = copy.deepcopy(config)
    http = resolved.setdefault("http_options", {})
    http["host"] = settings.serve_host
    http["port"] = settings.serve_port
    for application in resolved.get("applications", []):
        if application.get("import_path") == APP_IMPORT_PATH:
            args = application.setdefault("args", {}) or {}
            args["env_files"] = list(env_files)
            args["settings_stamp"] = settings_stamp(env_files)
            application["args"] = args
    return resolved


def single_points_of_failure(config: dict[str, Any]) -> list[str]:
    """Deployments of ``config`` that may run a single replica: losing it interrupts every answer
    until Serve replaces it (``serve/config.yaml`` keeps two at least, see ``serve/resilience.py``)."""
    found = []
    for application in config.get("applications") or []:
        for deployment in application.get("deployments") or []:
            autoscaling = deployment.get("autoscaling_config")
            least = autoscaling.get("min_replicas", 1) if autoscaling else deployment.get("num_replicas", 1)
            if isinstance(least, int) and least < 2:
                found.append(f"{application.get('name', 'default')}/{deployment.get('name')}")
    return found


def settings_stamp(env_files: list[str]) -> str:
    """Changes whenever an env file changes (size / mtime only, no secret material).

    ``serve deploy`` rebuilds an application only when its config changes; without this, a new
    token or S3 endpoint written to the same files would not reach the replicas.
    """
    parts = []
    for name in env_files:
        try:
            info = Path(name).stat()
        except OSError:
            continue
        parts.append(f"{info.st_size}-{info.st_mtime_ns}")
    return ".".join(parts)


def _base_url(settings: MoraSettings) -> str:
    return f"http://{settings.serve_host}:{settings.serve_port}"


def _auth_headers(settings: MoraSettings) -> dict[str, str]:
    token = settings.serve_token.get_secret_value() if settings.serve_token else None
    return {"authorization": f"Bearer {token}"} if token else {}


def _application_state(settings: MoraSettings, name: str) -> tuple[str, float]:
    """(status, last deployed time) of one application, from ``serve status``."""
    import yaml

    result = _run_serve_cli(settings, "status")
    try:
        status = yaml.safe_load(result.stdout) or {}
        application = (status.get("applications") or {}).get(name) or {}
    except (yaml.YAMLError, AttributeError):
        return "UNKNOWN", 0.0
    return str(application.get("status", "NOT_STARTED")), float(
        application.get("last_deployed_time_s") or 0.0
    )


def _wait_healthy(
    settings: MoraSettings, timeout: float, applications: list[str], since: float
) -> str | None:
    """None once every application finished this deployment and /healthz answers 200, else why not.

    Waiting for RUNNING first matters on a redeploy: the old replicas answer /healthz while the
    new ones start.
    """
    import httpx

    deadline = time.monotonic() + timeout
    problem: str | None = "not polled"
    pending = list(applications)
    while time.monotonic() < deadline:
        for name in list(pending):
            state, deployed_at = _application_state(settings, name)
            if state == "RUNNING" and deployed_at >= since:
                pending.remove(name)
            elif state in ("DEPLOY_FAILED", "UNHEALTHY"):
                return f"application {name!r} is {state} (see `mora serve status`)"
            else:
                problem = f"application {name!r} is {state}"
        if pending:
            time.sleep(1.0)
            continue
        try:
            response = httpx.get(f"{_base_url(settings)}/healthz", timeout=5)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return None
            problem = f"/healthz answered {response.status_code}: {response.text[:200]}"
        time.sleep(1.0)
    return problem


@serve_app.command("up")
def up(
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", help="Serve config YAML to deploy.", exists=True),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until /healthz answers 200."),
    timeout: float = typer.Option(180.0, "--timeout", min=1, help="Seconds to wait for health."),
) -> None:
    """Deploy the endpoint to the local Ray cluster (``serve deploy``) and wait until it is healthy."""
    import yaml

    settings = _settings()
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        _fail(f"--config {config}: {exc}")
    if not isinstance(raw, dict):
        _fail(f"--config {config}: expected a YAML mapping")
    resolved = resolve_config(raw, settings, env_files_for_cluster(Path(settings.home)))
    for name in single_points_of_failure(resolved):
        typer.echo(
            f"warning: {name} may run one replica: losing it stops answers until it is replaced", err=True
        )
    target = Path(settings.home) / "serve" / "config.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    typer.echo(f"deploying {target} to {settings.ray_dashboard_url}")
    names = [str(app.get("name", "default")) for app in resolved.get("applications", [])]
    since = time.time() - 0.1  # the local controller shares this clock
    result = _run_serve_cli(settings, "deploy", str(target))
    if result.returncode != 0:
        _fail(
            f"serve deploy failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}"
        )
    if not wait:
        typer.echo(f"deployment submitted; endpoint {_base_url(settings)}")
        return
    problem = _wait_healthy(settings, timeout, names, since)
    if problem is not None:
        _fail(f"endpoint not healthy after {timeout:g} s: {problem} (see `mora serve status`)", code=1)
    typer.echo(f"endpoint ready: {_base_url(settings)}  (docs {_base_url(settings)}/docs)")


@serve_app.command("down")
def down() -> None:
    """Remove every Serve application from the local cluster (``serve shutdown``)."""
    settings = _settings()
    result = _run_serve_cli(settings, "shutdown", "--yes")
    if result.returncode != 0:
        _fail(
            f"serve shutdown failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}"
        )
    typer.echo("Serve shut down")


@serve_app.command("status")
def status() -> None:
    """Applications and deployments (``serve status``), endpoint health and published services."""
    import httpx

    settings = _settings()
    result = _run_serve_cli(settings, "status")
    typer.echo((result.stdout or result.stderr).rstrip())
    base = _base_url(settings)
    try:
        health = httpx.get(f"{base}/healthz", timeout=5)
        typer.echo(f"endpoint {base}: /healthz {health.status_code} {health.text.strip()[:200]}")
        services = httpx.get(f"{base}/v1/services", headers=_auth_headers(settings), timeout=30)
        if services.status_code == 200:
            listed = services.json().get("services", [])
            names = ", ".join(f"{s['service']}@{s['latest_version']}" for s in listed) or "none"
            typer.echo(f"services ({len(listed)}): {names}")
        else:
            typer.echo(f"/v1/services {services.status_code}: {services.text.strip()[:200]}")
    except httpx.HTTPError as exc:
        typer.echo(f"endpoint {base}: unreachable ({type(exc).__name__})")
        raise typer.Exit(1) from None
    if result.returncode != 0 or health.status_code != 200:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``serve up | down | status`` to ``app``."""
    app.add_typer(serve_app, name="serve")
