"""The ``mora`` command line: one Typer app, each verb group registered by its own module.

Each module exposes ``register(app)``; heavy libraries (TensorFlow, Prophet, Ray) are
imported inside the commands, so ``mora --help`` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="mora",
    help="MOrA Platform: rightsizing recommendations for Kubernetes services, trained and served on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Verb groups, in the order `mora --help` lists them.
_COMMAND_MODULES: tuple[str, ...] = (
    "stack",
    "data",
    "models",
    "fleet",
    "cycle",
    "serving",
    "collect",
    "backtest",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def main() -> None:
    """Console-script entrypoint."""
    app()
