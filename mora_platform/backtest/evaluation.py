"""The evaluation discipline: every dataset is split once into a development and a confirmation part.

Choices (candidates, windows, quantiles, fusion, Tune search spaces, head-room rules) are made by
looking at the **development** part only; the **confirmation** part is scored to report, never to
choose. Confirmation series are other services than the development ones *and* later (or other)
time, so a choice that only fits the development services or period shows up as a gap between the
two parts. ``benchmarks/backtest_report.py --part development|confirmation|both`` scores either or
both and writes them side by side (``side_by_side``, ``side_by_side_lines``).

The split is fixed by the names in the data, never by a run's results, and is the same on every
machine (SHA-256, no process-salted ``hash``):

- **Online Boutique** (7 services x 36 experiments; an experiment is a *condition* ``scenario x
  replicas x users`` run for one service): services and conditions are each ranked by
  ``sha256("mora-evaluation/v1:<name>")`` over the full design (``ONLINE_BOUTIQUE_SERVICES``,
  ``ONLINE_BOUTIQUE_CONDITIONS``) and the lowest ``round(0.4 n)`` go to confirmation: 3 services and
  14 conditions (``online_boutique_split``). Development = development services x development
  conditions; confirmation = confirmation services x confirmation conditions; the other rows are used
  by neither part. The experiments carry no wall time, so "later time" here is "other load
  conditions": each part's series is its own experiments back to back, scored after the run's warm-up.
  A name outside the design (another data directory) is assigned on its own: confirmation when its
  hash, as a fraction of 2**256, is below 0.4.
- **Synthetic fleets** (``generate_fleet``, the plain fleet and every preset): ``svc-NN`` with an odd
  ``NN`` is a confirmation service, an even one a development service (a service's series depends only
  on (seed, NN), so the rule holds for any fleet size); other names by the hash rule above. The
  **time cut** lies at two thirds of the span, rounded down to a whole day from the first sample
  (day 8 of 12, day 4 of 6). Development = development services *before* the cut (the rows after it
  are dropped, not even history); confirmation = confirmation services scored only *after* the cut,
  with the rows before it as the history every method learns from (``PartData.score_from``).
  The development services' rows after the cut are used by neither part.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from mora_platform.backtest.baselines import RESOURCES
from mora_platform.data import schema

DEVELOPMENT = "development"
CONFIRMATION = "confirmation"
PARTS: tuple[str, ...] = (DEVELOPMENT, CONFIRMATION)
SALT = "mora-evaluation/v1"
CONFIRMATION_SHARE = 0.4
SYNTHETIC_CUT_SHARE = 2 / 3
EVALUATION_SCHEMA = "mora.evaluation/v1"

ONLINE_BOUTIQUE = "online-boutique"
ONLINE_BOUTIQUE_SERVICES: tuple[str, ...] = (
    "adservice",
    "cartservice",
    "checkoutservice",
    "currencyservice",
    "emailservice",
    "frontend",
    "productcatalogservice",
)
ONLINE_BOUTIQUE_CONDITIONS: tuple[str, ...] = tuple(
    f"{scenario}_replicas_{replicas}_users_{users}"
    for scenario in ("browsing", "checkout")
    for replicas in (1, 2, 4)
    for users in (5, 10, 20, 30, 50, 75)
)
_SYNTHETIC_SERVICE = re.compile(r"^svc-(\d+)$")


def _digest(name: str, salt: str = SALT) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{name}".encode()).digest(), "big")


def hash_part(name: str, share: float = CONFIRMATION_SHARE, salt: str = SALT) -> str:
    """A name's part on its own: confirmation when its digest, as a fraction of 2**256, is below ``share``."""
    return CONFIRMATION if _digest(name, salt) < share * 2**256 else DEVELOPMENT


@dataclass(frozen=True)
class NameSplit:
    """Names assigned to the two parts (each tuple sorted)."""

    development: tuple[str, ...]
    confirmation: tuple[str, ...]

    def part(self, name: str) -> str:
        if name in self.confirmation:
            return CONFIRMATION
        if name in self.development:
            return DEVELOPMENT
        return hash_part(name)

    def names(self, part: str) -> tuple[str, ...]:
        return self.development if part == DEVELOPMENT else self.confirmation


def split_names(names: Iterable[str], *, share: float = CONFIRMATION_SHARE, salt: str = SALT) -> NameSplit:
    """The ``round(share * n)`` names with the lowest salted SHA-256 go to confirmation (at least one
    in each part when there are two names or more); deterministic, disjoint, covering."""
    unique = sorted(set(names))
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    count = round(share * len(unique))
    if len(unique) >= 2:
        count = min(max(count, 1), len(unique) - 1)
    ranked = sorted(unique, key=lambda n: (_digest(n, salt), n))
    confirmation = set(ranked[:count])
    return NameSplit(
        development=tuple(n for n in unique if n not in confirmation),
        confirmation=tuple(n for n in unique if n in confirmation),
    )


@dataclass(frozen=True)
class PartData:
    """One part of one dataset: its rows, where scoring starts, and the rule that chose them."""

    dataset: str
    part: str
    frame: pd.DataFrame
    services: tuple[str, ...]
    rule: str
    score_from: pd.Timestamp | None = None  # no origin before this (None: the run's own warm-up)

    def describe(self) -> dict[str, Any]:
        return {
            "services": list(self.services),
            "rows": len(self.frame),
            "score_from": None if self.score_from is None else self.score_from.isoformat(),
            "rule": self.rule,
        }


# --- Online Boutique ------------------------------------------------------------------------------


def experiment_condition(experiment_id: str, service: str) -> str:
    """``adservice_browsing_replicas_1_users_10`` -> ``browsing_replicas_1_users_10`` (the run's
    condition, shared by every service); an id without the service prefix is its own condition."""
    prefix = f"{service}_"
    return experiment_id[len(prefix) :] if experiment_id.startswith(prefix) else experiment_id


def online_boutique_split() -> tuple[NameSplit, NameSplit]:
    """(services, conditions) of the Online Boutique design, each split by ``split_names``."""
    return split_names(ONLINE_BOUTIQUE_SERVICES), split_names(ONLINE_BOUTIQUE_CONDITIONS)


def split_online_boutique(frame: pd.DataFrame, dataset: str = ONLINE_BOUTIQUE) -> dict[str, PartData]:
    """Both parts of an Online Boutique frame (see the module docstring)."""
    services, conditions = online_boutique_split()
    service_part = frame[schema.SERVICE].astype(str).map(services.part)
    condition = [
        experiment_condition(str(e), str(s))
        for e, s in zip(frame[schema.EXPERIMENT_ID], frame[schema.SERVICE], strict=True)
    ]
    condition_part = pd.Series([conditions.part(c) for c in condition], index=frame.index)
    out: dict[str, PartData] = {}
    for part in PARTS:
        rows = frame[(service_part == part) & (condition_part == part)].reset_index(drop=True)
        out[part] = PartData(
            dataset=dataset,
            part=part,
            frame=rows,
            services=tuple(sorted(rows[schema.SERVICE].astype(str).unique())),
            rule=(
                f"{part} services x {part} conditions (scenario x replicas x users): "
                f"{', '.join(services.names(part))}; {len(conditions.names(part))} of "
                f"{len(ONLINE_BOUTIQUE_CONDITIONS)} conditions ({SALT} hash ranks)"
            ),
        )
    return out


# --- synthetic fleets -----------------------------------------------------------------------------


def synthetic_service_part(service: str) -> str:
    """``svc-NN``: odd ``NN`` confirmation, even development; any other name by ``hash_part``."""
    match = _SYNTHETIC_SERVICE.match(service)
    if match is None:
        return hash_part(service)
    return CONFIRMATION if int(match.group(1)) % 2 else DEVELOPMENT


def synthetic_cut(frame: pd.DataFrame) -> pd.Timestamp:
    """Two thirds of the frame's span, rounded down to a whole day from its first sample (at least
    one step past it)."""
    stamps = pd.DatetimeIndex(pd.to_datetime(frame[schema.TIMESTAMP], utc=True)).unique().sort_values()
    start, end = stamps[0], stamps[-1]
    step = pd.Timedelta(stamps.to_series().diff().median()) if len(stamps) > 1 else pd.Timedelta(0)
    span = end - start + step
    days = math.floor(SYNTHETIC_CUT_SHARE * span / pd.Timedelta(days=1) + 1e-9)
    cut = start + pd.Timedelta(days=days) if days >= 1 else start + SYNTHETIC_CUT_SHARE * span
    return pd.Timestamp(max(cut, start + step))


def split_synthetic(frame: pd.DataFrame, dataset: str = "synthetic") -> dict[str, PartData]:
    """Both parts of a synthetic fleet (see the module docstring)."""
    cut = synthetic_cut(frame)
    stamps = pd.to_datetime(frame[schema.TIMESTAMP], utc=True)
    part_of = frame[schema.SERVICE].astype(str).map(synthetic_service_part)
    development = frame[(part_of == DEVELOPMENT) & (stamps < cut)].reset_index(drop=True)
    confirmation = frame[part_of == CONFIRMATION].reset_index(drop=True)
    when = cut.isoformat()
    return {
        DEVELOPMENT: PartData(
            dataset=dataset,
            part=DEVELOPMENT,
            frame=development,
            services=tuple(sorted(development[schema.SERVICE].astype(str).unique())),
            rule=f"even svc-NN, rows before the cut {when} (later rows unused)",
        ),
        CONFIRMATION: PartData(
            dataset=dataset,
            part=CONFIRMATION,
            frame=confirmation,
            services=tuple(sorted(confirmation[schema.SERVICE].astype(str).unique())),
            rule=f"odd svc-NN, scored from the cut {when} on (earlier rows are history only)",
            score_from=cut,
        ),
    }


def split_dataset(dataset: str, frame: pd.DataFrame) -> dict[str, PartData]:
    """Both parts of a benchmark dataset: Online Boutique's rule for ``online-boutique``, the
    synthetic rule for every other (generated) dataset."""
    if dataset == ONLINE_BOUTIQUE:
        return split_online_boutique(frame, dataset)
    return split_synthetic(frame, dataset)


def warmup_for(part: PartData, warmup: pd.Timedelta) -> pd.Timedelta:
    """The warm-up that puts a part's first origin at ``score_from`` (never shorter than ``warmup``);
    the part's series share one clock, so one warm-up serves them all."""
    if part.score_from is None or part.frame.empty:
        return warmup
    start = pd.to_datetime(part.frame[schema.TIMESTAMP], utc=True).min()
    return max(warmup, pd.Timedelta(part.score_from - start))


# --- the two parts side by side -------------------------------------------------------------------


def _stats(report: Mapping[str, Any], resource: str) -> tuple[dict[str, Any], dict[str, Any] | None, int]:
    block = (report.get("summary") or {}).get(resource) or {}
    return block.get("methods") or {}, block.get("comparison"), len(block.get("series") or [])


def side_by_side(
    reports: Mapping[str, Mapping[str, Mapping[str, Any]]],
    splits: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``evaluation.json``: per dataset, per resource, per method, the averages of each part.

    ``reports`` is ``{dataset: {part: backtest.json document}}``; ``splits`` (optional) is
    ``{dataset: {part: PartData.describe()}}``. Shape::

        {"schema": "mora.evaluation/v1", "created": iso, "parts": [part],
         "datasets": {"<dataset>": {
            "split": {"<part>": {...}},
            "resources": {"cpu" | "memory": {
                "series": {"<part>": int},
                "goal_met": {"<part>": bool | null},
                "methods": {"<method>": {"<part>": {"slack", "under_provisioning_rate",
                                                    "peak_exceed_rate"} | null}}}}}}}
    """
    datasets: dict[str, Any] = {}
    for dataset, parts in reports.items():
        resources: dict[str, Any] = {}
        for resource in RESOURCES:
            methods: dict[str, dict[str, Any]] = {}
            series: dict[str, int] = {}
            goal: dict[str, bool | None] = {}
            for part, report in parts.items():
                stats, comparison, count = _stats(report, resource)
                series[part] = count
                goal[part] = None if not comparison else bool(comparison["goal_met"])
                for method, values in stats.items():
                    cell = None
                    if values.get("slack") is not None:
                        cell = {
                            k: values.get(k) for k in ("slack", "under_provisioning_rate", "peak_exceed_rate")
                        }
                    methods.setdefault(method, {})[part] = cell
            for cells in methods.values():
                for part in parts:
                    cells.setdefault(part, None)
            resources[resource] = {"series": series, "goal_met": goal, "methods": methods}
        datasets[dataset] = {"split": dict((splits or {}).get(dataset, {})), "resources": resources}
    present = {p for parts in reports.values() for p in parts}
    return {
        "schema": EVALUATION_SCHEMA,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "parts": [p for p in PARTS if p in present],
        "datasets": datasets,
    }


def _cell(values: Mapping[str, Any] | None) -> str:
    if not values:
        return "-"
    return f"{100 * values['slack']:.1f}% / {100 * values['under_provisioning_rate']:.2f}%"


def side_by_side_lines(document: Mapping[str, Any]) -> list[str]:
    """Markdown: per dataset and resource, one row per method with each part's slack /
    under-provisioning, and whether the platform's goal was met in each part."""
    parts = list(document.get("parts") or PARTS)
    lines = [
        "## Development vs confirmation",
        "",
        "Choices are made on the development part only; the confirmation part (other services, later "
        "time) is the one to quote. Each cell: slack / under-provisioning (see "
        "`mora_platform/backtest/evaluation.py` for the split).",
        "",
    ]
    for dataset, entry in document.get("datasets", {}).items():
        lines += [f"### {dataset}", ""]
        for part, split in (entry.get("split") or {}).items():
            lines.append(f"- {part}: {', '.join(split.get('services', [])) or '-'} ({split.get('rule', '')})")
        if entry.get("split"):
            lines.append("")
        for resource, block in entry["resources"].items():
            counts = ", ".join(f"{p} {block['series'].get(p, 0)}" for p in parts)
            lines += [
                f"**{resource}** (series: {counts})",
                "",
                "| method | " + " | ".join(parts) + " |",
                "|---|" + "---|" * len(parts),
            ]
            for method, cells in block["methods"].items():
                lines.append(f"| {method} | " + " | ".join(_cell(cells.get(p)) for p in parts) + " |")
            goals = ", ".join(
                f"{p} {'-' if block['goal_met'].get(p) is None else block['goal_met'][p]}" for p in parts
            )
            lines += ["", f"goal met (platform): {goals}", ""]
    return lines
