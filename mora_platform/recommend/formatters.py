"""Output formats for recommendations: small ``recs -> str`` functions in a registry.

Add a format by decorating a function with ``@register_formatter("name")``; the CLI lists
whatever is registered. Every format carries the same numbers; none re-rounds them.
"""

from __future__ import annotations

import inspect
import io
import json
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
    if rec.outside_training_range:
        flags.append("beyond training data")
    if rec.unavailable:
        flags.append("no " + "/".join(sorted(rec.unavailable)))
    return ", ".join(flags) or "-"


def _change(current: int | None, recommended: int | None, unit: str) -> str:
    """``current -> recommended (diff)`` in one unit; ``?`` where a side is unknown."""
    if recommended is None:
        return "-" if current is None else f"{current}{unit} (kept)"
    if current is None:
        return f"? -> {recommended}{unit}"
    diff = recommended - current
    return f"{current}{unit} -> {recommended}{unit} ({diff:+d}{unit})"


def _replicas_text(rec: Recommendation) -> str:
    decision = rec.replica_decision
    if decision is None:
        return "-" if rec.recommendations.replicas is None else str(rec.recommendations.replicas)
    if decision.recommended is None:
        return (
            f"{decision.current if decision.current is not None else '?'} ({decision.managed_by or 'kept'})"
        )
    return _change(decision.current, decision.recommended, "")


def namespace_totals(recs: Sequence[Recommendation]) -> dict[str, dict[str, int | None]]:
    """Per namespace: CPU (millicores) and memory (MiB) requested by all pods, now and as recommended.

    A Deployment's total is its pods x the sum of its containers' requests (replicas kept where an HPA
    manages them); a side is None when some container's current request is unknown.
    """
    totals: dict[str, dict[str, int | None]] = {}
    for rec in recs:
        decision = rec.replica_decision
        now_pods = decision.current if decision is not None else None
        new_pods = rec.recommendations.replicas or now_pods
        entry = totals.setdefault(
            rec.namespace or "-", {"cpu_now": 0, "cpu_new": 0, "memory_now": 0, "memory_new": 0}
        )
        for resource, field in (("cpu", "cpu_request_millicores"), ("memory", "memory_request_mib")):
            for side, pods, part in (("now", now_pods, "current"), ("new", new_pods, "recommended")):
                key = f"{resource}_{side}"
                values = [
                    getattr(getattr(c, part), field, None) if getattr(c, part) else None
                    for c in rec.containers
                ]
                if entry[key] is None or pods is None or not values or any(v is None for v in values):
                    entry[key] = None
                else:
                    entry[key] = int(entry[key] or 0) + pods * sum(int(v or 0) for v in values)
    return totals


@register_formatter("table")
def format_table(recs: Sequence[Recommendation], *, width: int = 160, title: str | None = None) -> str:
    """Per container, current -> recommended with the difference (like KRR's table), then namespace totals.

    Requests and limits are per container, per pod; replicas are the Deployment's. Plain text, no colour.
    """
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or "Recommendations (requests per container, per pod; replicas per Deployment)")
    for name, justify in (
        ("namespace", "left"),
        ("service", "left"),
        ("container", "left"),
        ("cpu request", "right"),
        ("memory request", "right"),
        ("memory limit", "right"),
        ("replicas", "right"),
        ("confidence", "right"),
        ("flags", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=name in ("service", "container"))  # type: ignore[arg-type]
    for rec in recs:
        containers = rec.containers or []
        for index, c in enumerate(containers):
            now = c.current
            table.add_row(
                rec.namespace or "-",
                rec.service if index == 0 else "",
                c.name,
                _change(
                    now.cpu_request_millicores if now else None, c.recommended.cpu_request_millicores, "m"
                ),
                _change(now.memory_request_mib if now else None, c.recommended.memory_request_mib, "Mi"),
                _change(now.memory_limit_mib if now else None, c.recommended.memory_limit_mib, "Mi"),
                _replicas_text(rec) if index == 0 else "",
                f"{rec.confidence:.2f}" if index == 0 else "",
                _flags(rec) if index == 0 else "",
            )
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    console.print(table)
    for namespace, totals in namespace_totals(recs).items():
        parts = []
        for resource, unit in (("cpu", "m"), ("memory", "Mi")):
            parts.append(f"{resource} {_change(totals[f'{resource}_now'], totals[f'{resource}_new'], unit)}")
        console.print(
            f"namespace {namespace}: all pods' requests: {'; '.join(parts)}", markup=False, highlight=False
        )
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


def _quantities(millicores: int | None, mib: int | None) -> dict[str, str]:
    """Kubernetes quantities for a CPU / memory pair, leaving out what is not set."""
    out = {}
    if millicores is not None:
        out["cpu"] = f"{millicores}m"
    if mib is not None:
        out["memory"] = f"{mib}Mi"
    return out


def deployment_patch(rec: Recommendation, container: str | None = None) -> dict[str, Any]:
    """The strategic-merge patch setting a Deployment's replicas and its containers' requests and limits.

    Containers merge by ``name`` in a strategic-merge patch, so the patch names each container it
    recommends for (the real names ``mora collect`` recorded; ``container`` renames a lone assumed one)
    and leaves every other container untouched. ``spec.replicas`` is left out when an HPA manages it;
    a resource with no recommendation is left out.
    """
    containers = []
    for c in rec.containers:
        name = container if container and len(rec.containers) == 1 and c.current is None else c.name
        r = c.recommended
        requests = _quantities(r.cpu_request_millicores, r.memory_request_mib)
        limits = _quantities(r.cpu_limit_millicores, r.memory_limit_mib)
        resources: dict[str, Any] = {"requests": requests} if requests else {}
        if limits:
            resources["limits"] = limits
        if resources:
            containers.append({"name": name, "resources": resources})
    spec: dict[str, Any] = {}
    if rec.recommendations.replicas is not None:
        spec["replicas"] = rec.recommendations.replicas
    if containers:
        spec["template"] = {"spec": {"containers": containers}}
    return {"spec": spec}


@register_formatter("k8s-patch")
def format_k8s_patch(
    recs: Sequence[Recommendation], *, container: str | Mapping[str, str] | None = None
) -> str:
    """One YAML document per service, each a patch for ``kubectl patch deployment <service> --patch-file``.

    The containers are the ones ``mora collect`` recorded; without a recorded workload one container
    named like the service is assumed, and ``container`` names it (a mapping gives one per service).
    """
    documents = []
    for rec in recs:
        name = container.get(rec.service) if isinstance(container, Mapping) else container
        namespace = f" --namespace {rec.namespace}" if rec.namespace else ""
        header = (
            f"# kubectl patch deployment {rec.service}{namespace} --type strategic --patch-file <this file>\n"
        )
        documents.append(header + yaml.safe_dump(deployment_patch(rec, name), sort_keys=False))
    return "---\n".join(documents)
