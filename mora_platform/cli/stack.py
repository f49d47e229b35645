"""`mora stack up | down | status`: the local S3 server and Ray head (code in ``infra.local``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from infra.local.config import StackSettings

if TYPE_CHECKING:
    from infra.local.stack import ComponentStatus, LocalStack

stack_app = typer.Typer(
    help="The local stack: an S3 server (SeaweedFS), a single-node Ray head and optionally Prometheus, on 127.0.0.1.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

_COMPONENTS = ("s3", "ray", "prometheus")
_COMPONENT_HELP = (
    "Only these components: s3, ray, prometheus (repeatable; default s3 and ray, and prometheus when "
    "--prometheus or MORA_STACK_PROMETHEUS=true; `down` and `status` also take prometheus once it was started)."
)
_PROMETHEUS_HELP = (
    "Also start a Prometheus (Debian's `prometheus`) on 127.0.0.1 scraping Ray's metrics, the platform's "
    "ray_mora_* among them; a Ray head started with it reads it for the dashboard's metrics views "
    "(also MORA_STACK_PROMETHEUS=true; port: --port prometheus=N)."
)


_PROXY_HELP = (
    "Ray Serve's proxy on a head this starts: haproxy (Serve's HAProxy mode, 3-5x faster; every listener "
    "on 127.0.0.1 but the replicas' inter-deployment gRPC, as with the other) or default (Ray's Python "
    "proxy). Default: MORA_STACK_SERVE_PROXY, else haproxy. A running head keeps its proxy until restarted."
)


def _port_help() -> str:
    fields = StackSettings.model_fields
    names = ", ".join(
        f"{short} ({fields[name].default})" for short, name in StackSettings.port_names().items()
    )
    return f"Override a port, NAME=N (repeatable; also MORA_STACK_<NAME>_PORT). Names and defaults: {names}."


def _build_stack(ports: list[str], *, prometheus: bool = False, proxy: str | None = None) -> LocalStack:
    """The stack for the current settings, with ``--port NAME=N`` (and ``--proxy``) overrides applied."""
    from pydantic import ValidationError

    from infra.local.envfile import load_settings
    from infra.local.stack import LocalStack

    overrides: dict[str, int | bool | str] = {"prometheus": True} if prometheus else {}
    if proxy is not None:
        if proxy not in ("haproxy", "default"):
            raise typer.BadParameter(f"{proxy!r}: choose haproxy or default", param_hint="--proxy")
        overrides["serve_proxy"] = proxy
    names = StackSettings.port_names()
    for item in ports:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names or not value.strip().isdigit():
            raise typer.BadParameter(
                f"{item!r}: expected NAME=N with NAME one of {', '.join(names)}", param_hint="--port"
            )
        overrides[names[name]] = int(value)
    try:
        config = StackSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--port") from exc
    settings = load_settings()
    return LocalStack(settings.home, config, bucket=settings.s3_bucket, region=settings.s3_region)


def _components(selected: list[str] | None) -> list[str] | None:
    """The components named with --component (None: the command's default)."""
    unknown = [c for c in selected or [] if c not in _COMPONENTS]
    if unknown:
        raise typer.BadParameter(f"unknown component(s) {unknown}; choose from {list(_COMPONENTS)}")
    return list(selected) if selected else None


def _table(title: str, rows: list[ComponentStatus]) -> Table:
    table = Table(title=title)
    for column in ("component", "state", "pid", "endpoint", "health"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = "green" if row.healthy else "red"
        health = f"[{style}]{row.health}[/{style}]" if row.health else ""
        state = row.state if row.seconds is None else f"{row.state} ({row.seconds:.1f} s)"
        table.add_row(row.component, state, str(row.pid or "-"), row.endpoint, health)
    return table


@stack_app.command("up")
def up(
    port: list[str] = typer.Option([], "--port", "-p", help=_port_help(), show_default=False),
    component: list[str] = typer.Option([], "--component", "-c", help=_COMPONENT_HELP, show_default=False),
    prometheus: bool = typer.Option(False, "--prometheus", help=_PROMETHEUS_HELP),
    proxy: str | None = typer.Option(None, "--proxy", help=_PROXY_HELP, metavar="haproxy|default"),
) -> None:
    """Start the S3 server and the Ray head, and Prometheus if asked (only what is not already running)."""
    from infra.local.processes import PortInUseError, ProcessStartError
    from infra.local.prometheus import PrometheusBinaryError
    from infra.local.serve_proxy import HAProxyBinaryError
    from infra.local.stack import ForeignHeadError

    stack = _build_stack(port, prometheus=prometheus, proxy=proxy)
    chosen = _components(component)
    if chosen is not None and prometheus and "prometheus" not in chosen:
        chosen.append("prometheus")
    began = time.monotonic()
    try:
        rows = stack.up(chosen, progress=lambda message: console.print(f"[dim]{message}[/dim]"))
    except (PortInUseError, ForeignHeadError, PrometheusBinaryError, HAProxyBinaryError) as exc:
        errors.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    except ProcessStartError as exc:
        errors.print(f"[red]error:[/red] the stack did not start: {exc}")
        errors.print(f"logs: {stack.logs_dir}; stop what did start with `mora stack down`")
        raise typer.Exit(1) from exc
    console.print(_table("mora stack up", rows))
    console.print(f"ready in {time.monotonic() - began:.1f} s; settings for every command: {stack.env_file}")
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)


@stack_app.command("down")
def down(
    component: list[str] = typer.Option([], "--component", "-c", help=_COMPONENT_HELP, show_default=False),
) -> None:
    """Stop exactly the processes `mora stack up` started (by PID; SIGKILL after a timeout)."""
    stack = _build_stack([])
    rows = stack.down(_components(component))
    table = Table(title="mora stack down")
    for column in ("component", "state", "pids stopped", "seconds"):
        table.add_column(column)
    for row in rows:
        seconds = "-" if row.seconds is None else f"{row.seconds:.1f}"
        table.add_row(row.component, row.state, " ".join(map(str, row.pids)) or "-", seconds)
    console.print(table)


@stack_app.command("status")
def status(
    component: list[str] = typer.Option([], "--component", "-c", help=_COMPONENT_HELP, show_default=False),
) -> None:
    """Endpoints and health of the local stack; exits non-zero unless everything is up and healthy."""
    stack = _build_stack([])
    rows = stack.status(_components(component))
    console.print(_table("mora stack status", rows))
    console.print(f"settings: {stack.env_file}  logs: {stack.logs_dir}")
    if not all(row.healthy for row in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``mora stack ...`` to ``app``."""
    app.add_typer(stack_app, name="stack")
