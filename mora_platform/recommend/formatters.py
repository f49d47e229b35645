"""Output formats for recommendations: small ``recs -> str`` functions in a registry.

Add a format by decorating a function with ``@register_formatter("name")``; the CLI lists
whatever is registered. Every format carries the same numbers; none re-rounds them.
"""

from __future__ import annotations

import inspect
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from mora_platform.recommend.types import Recommendation

Formatter = Callable[..., str]

_FORMATTERS: dict[str, Formatter] = {}


class UnknownFormatError(ValueError):
    """A format name nobody registered."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        super().__init__(f"unknown output format {fmt!r}; known formats: {', '.join(available_formats())}")


def register_formatter(name: str) -> Callable[[Formatter], Formatter]:
    """Register ``function(recs, **options) -> str`` under ``name``."""

    def decorator(function: Formatter) -> Formatter:
        if name in _FORMATTERS:
            raise ValueError(
                f"output format {name!r} is already registered by {_FORMATTERS[name].__qualname__}"
            )
        _FORMATTERS[name] = function
        return function

    return decorator


def available_formats() -> list[str]:
    return sorted(_FORMATTERS)


def format_recommendations(recs: Sequence[Recommendation], fmt: str, **options: Any) -> str:
    """Render ``recs`` in format ``fmt``; options are format-specific (e.g. ``container`` for k8s-patch)."""
    try:
        formatter = _FORMATTERS[fmt]
    except KeyError:
        raise UnknownFormatError(fmt) from None
    accepted = inspect.signature(formatter).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        known = sorted(name for name, p in accepted.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
        raise ValueError(
            f"format {fmt!r} does not take option(s) {', '.join(unknown)}; it takes: {', '.join(known) or 'none'}"
        )
    return formatter(list(recs), **options)


def _as_dicts(recs: Sequence[Recommendation]) -> list[dict[str, Any]]:
    return [rec.model_dump(mode="json") for rec in recs]


@register_formatter("json")
def format_json(recs: Sequence[Recommendation], *, indent: int | None = 2) -> str:
    """A JSON array of Recommendation objects (same field names as the API)."""
    return json.dumps(_as_dicts(recs), indent=indent) + "\n"


@register_formatter("yaml")
def format_yaml(recs: Sequence[Recommendation]) -> str:
    """A YAML list of Recommendation objects."""
    return yaml.safe_dump(_as_dicts(recs), sort_keys=False)


def _flags(rec: Recommendation) -> str:
    flags = ["degraded"] if rec.degraded else []
    if rec.fallbacks:
        flags.append(f"{len(rec.fallbacks)} fallback{'s' if len(rec.fallbacks) > 1 else ''}")
    return ", ".join(flags) or "-"


@register_formatter("table")
def format_table(recs: Sequence[Recommendation], *, width: int = 120, title: str | None = None) -> str:
    """A rich table rendered to plain text (no colour codes), one row per service."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or "Recommendations")
    table.add_column("service", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("cpu", justify="right")
    table.add_column("memory", justify="right")
    table.add_column("replicas", justify="right")
    table.add_column("confidence", justify="right")
    table.add_column("coverage", justify="right")
    table.add_column("flags")
    for rec in recs:
        res = rec.recommendations
        table.add_row(
            rec.service,
            rec.model_version or "-",
            f"{res.cpu_millicores}m",
            f"{_mebibytes(res.memory_bytes)}Mi",
            str(res.replicas),
            f"{rec.confidence:.2f}",
            f"{rec.coverage_target:.0%}",
            _flags(rec),
        )
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    console.print(table)
    # Fallbacks and reasons are sentences: listed under the table, not squeezed into a cell.
    for rec in recs:
        if rec.history is not None:
            console.print(f"{rec.service}: history: {_history_text(rec)}", markup=False, highlight=False)
        for label, notes in (("fallback", rec.fallbacks), ("note", rec.reasons)):
            for note in notes:
                console.print(f"{rec.service}: {label}: {note}", markup=False, highlight=False)
    return buffer.getvalue()


def _history_text(rec: Recommendation) -> str:
    used = rec.history
    assert used is not None
    text = f"{used.rows} rows from {used.source}"
    if used.newest:
        text += f", newest {used.newest}"
    if used.age_seconds is not None:
        text += f" ({_age(used.age_seconds)} old)"
    return text


def _age(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _mebibytes(memory_bytes: int) -> int:
    """Whole MiB, rounded up so the request never falls below the recommendation."""
    return max(1, math.ceil(memory_bytes / 2**20))


def deployment_patch(rec: Recommendation, container: str | None = None) -> dict[str, Any]:
    """The strategic-merge patch setting a Deployment's replicas and one container's requests.

    Containers merge by ``name`` in a strategic-merge patch, so only the named container changes.
    """
    res = rec.recommendations
    return {
        "spec": {
            "replicas": res.replicas,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": container or rec.service,
                            "resources": {
                                "requests": {
                                    "cpu": f"{res.cpu_millicores}m",
                                    "memory": f"{_mebibytes(res.memory_bytes)}Mi",
                                }
                            },
                        }
                    ]
                }
            },
        }
    }


@register_formatter("k8s-patch")
def format_k8s_patch(
    recs: Sequence[Recommendation], *, container: str | Mapping[str, str] | None = None
) -> str:
    """One YAML document per service, each a patch for ``kubectl patch deployment <service> --patch-file``.

    ``container`` names the container to patch (default: the service name); a mapping gives one per service.
    """
    documents = []
    for rec in recs:
        name = container.get(rec.service) if isinstance(container, Mapping) else container
        header = f"# kubectl patch deployment {rec.service} --type strategic --patch-file <this file>\n"
        documents.append(header + yaml.safe_dump(deployment_patch(rec, name), sort_keys=False))
    return "---\n".join(documents)
