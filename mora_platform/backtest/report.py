"""The backtest's results as a JSON document with a stable schema, a plain-text table and markdown.

``backtest.json`` (schema ``mora.backtest/v1``; fields are only ever added, never renamed)::

    {
      "schema": "mora.backtest/v1",
      "created": "2026-...Z",                      # UTC, ISO 8601
      "input": {"source": str, "mode": str, "notes": [str]},
      "config": {"step_seconds", "horizon_seconds", "warmup_seconds", "season_seconds": float,
                 "margins": [float], "risk_targets": [float],
                 "floor_policy": {"name": str, "cpu_millicores": float, "memory_mib": float},
                 ...extra run settings},
      "methods": [{"name": str, "description": str,
                   "default_margins": {"cpu": float, "memory": float},
                   "floors": {"cpu": float, "memory": float},   # in force: own floor raised to the policy
                   "quanta": {"cpu": float, "memory": float}}],   # requests rounded up to these (0 = none)
      "series": [{
        "name": str, "notes": [str], "errors": [str],
        "resources": {"cpu" | "memory": {
          "unit": "cores" | "bytes", "origins": int, "samples": int,
          "first_origin": iso | null, "last_origin": iso | null,
          "methods": {"<method>": {
            "status": "ok" | "failed", "error": str | null,
            "score": {"slack", "under_provisioning_rate", "peak_exceed_rate", "changes",
                      "mean_change_relative", "mean_request", "mean_usage", "origins", "samples"} | null,
            "oom_risk_rate": float | null,        # memory only: = peak_exceed_rate
            "forecast": {"mae", "naive_mae", "mase", "origins"} | null,
            "answered_by": {"<source>": int},      # platform: origins answered by each candidate
            "curve": [{"margin", "slack", "under_provisioning_rate"}],
            "slack_at_risk": {"<target>": float | null}}},   # least slack with under-prov <= target
          "trace": {"origins": [iso], "requests": {"<method>": [float | null]}}}}}],
      "summary": {"cpu" | "memory": {
        "series": [str],                          # series where every method succeeded (the average's base)
        "methods": {"<method>": {"slack", "under_provisioning_rate", "peak_exceed_rate", "changes",
                                 "mean_change_relative": float, "mase": float | null, "mae": float | null,
                                 "answered_by": {"<source>": int},   # summed over series
                                 "curve": [...], "slack_at_risk": {...}}},
        "comparison": null | {"reference": "platform", "slack": float, "under_provisioning_rate": float,
                              "baselines": {"<method>": {"slack": float, "under_provisioning_rate": float,
                                  "slack_at_reference_risk": float | null,
                                  "reference_better": bool}},
                              "goal_met": bool},
        "comparisons": {"<platform variant>": <same shape as comparison, with that variant as reference>}}}
    }

Averages are plain means over the series in ``summary.<resource>.series``; ``curve`` there is the
point-wise mean of the per-series curves. ``reference_better`` is true when the reference method's
slack is lower than the baseline's least slack at an under-provisioning rate no higher than the
reference's (the baseline's whole swept curve is searched, so a baseline cannot win by a different
margin); ``goal_met`` when that holds for every baseline.

``summary.md`` (``write_summary``; ``summary_lines`` is shared with ``benchmarks/backtest_report.py``)
names the floor policy every method's requests were raised to, puts the averages side by side per
resource as markdown tables, says which source answered the platform's requests (share of origins),
whether the platform's goal was met, and lists every series.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mora_platform.backtest.baselines import DEFAULT_FLOORS, RESOURCES, FloorPolicy, Recommender
from mora_platform.backtest.defaults import format_duration
from mora_platform.backtest.engine import BacktestConfig, ResourceReplay, SeriesReplay, method_order
from mora_platform.backtest.metrics import (
    CurvePoint,
    average_curves,
    efficiency_curve,
    score_forecast,
    score_requests,
    slack_at_risk,
)

SCHEMA_VERSION = "mora.backtest/v1"
UNITS = {"cpu": "cores", "memory": "bytes"}
REFERENCE_METHOD = "platform"


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _resource_block(replay: ResourceReplay, config: BacktestConfig) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    trace_requests: dict[str, list[float | None]] = {}
    for name, trace in replay.traces.items():
        entry: dict[str, Any] = {"status": "ok" if trace.ok else "failed", "error": trace.error}
        if trace.ok:
            requests = trace.requests()
            score = score_requests(requests, replay.window_usage, replay.window_ids)
            curve = efficiency_curve(
                trace.base,
                trace.floor,
                config.margins,
                replay.window_usage,
                replay.window_ids,
                trace.quantum,
            )
            forecast = score_forecast(trace.forecast, replay.actual_mean, replay.naive_forecast)
            entry.update(
                score=score.to_dict(),
                oom_risk_rate=score.peak_exceed_rate if replay.resource == "memory" else None,
                forecast=forecast.to_dict() if forecast else None,
                answered_by=dict(sorted(trace.sources.items())),
                curve=[p.to_dict() for p in curve],
                slack_at_risk={str(t): _finite(slack_at_risk(curve, t)) for t in config.risk_targets},
            )
            trace_requests[name] = [_finite(v) for v in requests]
        else:
            entry.update(
                score=None, oom_risk_rate=None, forecast=None, answered_by={}, curve=[], slack_at_risk={}
            )
        methods[name] = entry
    origins = [t.isoformat() for t in replay.origins]
    return {
        "unit": UNITS[replay.resource],
        "origins": len(replay.origins),
        "samples": int(replay.window_usage.size),
        "first_origin": origins[0] if origins else None,
        "last_origin": origins[-1] if origins else None,
        "methods": methods,
        "trace": {"origins": origins, "requests": trace_requests},
    }


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _summary(
    series_blocks: list[dict[str, Any]], methods: list[str], config: BacktestConfig
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for resource in RESOURCES:
        common = [
            s
            for s in series_blocks
            if resource in s["resources"]
            and all(s["resources"][resource]["methods"].get(m, {}).get("status") == "ok" for m in methods)
        ]
        per_method: dict[str, Any] = {}
        for m in methods:
            blocks = [s["resources"][resource]["methods"][m] for s in common]
            curves = [[CurvePoint(**p) for p in b["curve"]] for b in blocks]
            mean_curve = average_curves(curves)
            forecasts = [b["forecast"] for b in blocks if b["forecast"]]
            per_method[m] = {
                key: _mean([b["score"][key] for b in blocks])
                for key in (
                    "slack",
                    "under_provisioning_rate",
                    "peak_exceed_rate",
                    "changes",
                    "mean_change_relative",
                )
            }
            answered_by: dict[str, int] = {}
            for b in blocks:
                for source, count in b.get("answered_by", {}).items():
                    answered_by[source] = answered_by.get(source, 0) + count
            per_method[m].update(
                mae=_mean([f["mae"] for f in forecasts]),
                answered_by=dict(sorted(answered_by.items())),
                mase=_mean([f["mase"] for f in forecasts]),
                curve=[p.to_dict() for p in mean_curve],
                slack_at_risk={str(t): _finite(slack_at_risk(mean_curve, t)) for t in config.risk_targets},
            )
        summary[resource] = {
            "series": [s["name"] for s in common],
            "methods": per_method,
            "comparison": _comparison(per_method) if common else None,
            "comparisons": {
                m: _comparison(per_method, m) for m in methods if common and m.startswith(REFERENCE_METHOD)
            },
        }
    return summary


def _comparison(per_method: Mapping[str, Any], reference: str = REFERENCE_METHOD) -> dict[str, Any] | None:
    ref = per_method.get(reference)
    if ref is None or ref["slack"] is None:
        return None
    baselines: dict[str, Any] = {}
    for name, stats in per_method.items():
        if name.startswith(REFERENCE_METHOD):  # the platform's own variants are not baselines
            continue
        curve = [CurvePoint(**p) for p in stats["curve"]]
        at_risk = slack_at_risk(curve, ref["under_provisioning_rate"])
        better = at_risk is None or ref["slack"] < at_risk
        baselines[name] = {
            "slack": stats["slack"],
            "under_provisioning_rate": stats["under_provisioning_rate"],
            "slack_at_reference_risk": _finite(at_risk),
            "reference_better": bool(better),
        }
    return {
        "reference": reference,
        "slack": ref["slack"],
        "under_provisioning_rate": ref["under_provisioning_rate"],
        "baselines": baselines,
        "goal_met": all(b["reference_better"] for b in baselines.values()),
    }


def describe_methods(
    methods: Sequence[Recommender], floors: FloorPolicy = DEFAULT_FLOORS
) -> list[dict[str, Any]]:
    """The ``methods`` block: name, description, default margins and the floors in force under ``floors``."""
    return [
        {
            "name": m.name,
            "description": m.description,
            "default_margins": {r: m.margin_for(r) for r in RESOURCES},
            "floors": {r: floors.floor_for(m, r) for r in RESOURCES},
            "quanta": {r: m.quantum(r) for r in RESOURCES},
        }
        for m in methods
    ]


def build_report(
    replays: Sequence[SeriesReplay],
    methods: Sequence[Recommender],
    config: BacktestConfig,
    *,
    source: str,
    mode: str,
    notes: Sequence[str] = (),
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole ``backtest.json`` document (see the module docstring for the schema)."""
    names = method_order(replays) or [m.name for m in methods]
    series_blocks = [
        {
            "name": r.name,
            "notes": list(r.notes),
            "errors": list(r.errors),
            "resources": {res: _resource_block(rep, config) for res, rep in r.resources.items()},
        }
        for r in replays
    ]
    return {
        "schema": SCHEMA_VERSION,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "input": {"source": source, "mode": mode, "notes": list(notes)},
        "config": {
            "step_seconds": config.step.total_seconds(),
            "horizon_seconds": config.horizon.total_seconds(),
            "warmup_seconds": config.warmup.total_seconds(),
            "season_seconds": config.season.total_seconds(),
            "margins": list(config.margins),
            "risk_targets": list(config.risk_targets),
            "floor_policy": config.floors.to_dict(),
            **dict(extra_config or {}),
        },
        "methods": describe_methods(methods, config.floors),
        "series": series_blocks,
        "summary": _summary(series_blocks, names, config),
    }


def write_report(report: Mapping[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/backtest.json`` (created if needed); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "backtest.json"
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:6.1f}%"


def format_table(report: Mapping[str, Any]) -> str:
    """Per series and average: slack / under-provisioning (/ OOM risk for memory) per method."""
    policy = report.get("config", {}).get("floor_policy")
    lines: list[str] = [f"floors: {FloorPolicy(**policy).describe()}", ""] if policy else []
    methods = [m["name"] for m in report["methods"]]
    for resource in RESOURCES:
        header = f"{'series':<28}" + "".join(f"{m:>22}" for m in methods)
        lines += [
            f"== {resource}: slack / under-provisioning" + (" / OOM risk" if resource == "memory" else ""),
            header,
        ]
        for s in report["series"]:
            block = s["resources"].get(resource)
            if block is None:
                continue
            cells = []
            for m in methods:
                entry = block["methods"].get(m)
                if entry is None or entry["score"] is None:
                    cells.append(f"{'failed':>22}")
                    continue
                sc = entry["score"]
                text = f"{_pct(sc['slack'])}/{_pct(sc['under_provisioning_rate'])}"
                if resource == "memory":
                    text = f"{_pct(sc['slack'])}/{_pct(sc['under_provisioning_rate'])}/{_pct(sc['peak_exceed_rate'])}"
                cells.append(f"{text.replace(' ', ''):>22}")
            lines.append(f"{s['name'][:28]:<28}" + "".join(cells))
        summary = report["summary"][resource]
        cells = []
        for m in methods:
            st = summary["methods"].get(m)
            if st is None or st["slack"] is None:
                cells.append(f"{'-':>22}")
                continue
            text = f"{_pct(st['slack'])}/{_pct(st['under_provisioning_rate'])}"
            if resource == "memory":
                text += f"/{_pct(st['peak_exceed_rate'])}"
            cells.append(f"{text.replace(' ', ''):>22}")
        lines.append(f"{'AVERAGE (' + str(len(summary['series'])) + ' series)':<28}" + "".join(cells))
        comparison = summary.get("comparison")
        if comparison:
            verdict = "MET" if comparison["goal_met"] else "NOT MET"
            lines.append(
                f"goal (platform slack < every baseline's at <= {_pct(comparison['under_provisioning_rate']).strip()} "
                f"under-provisioning): {verdict}"
            )
        lines.append("")
    return "\n".join(lines)


SUMMARY_DEFINITIONS = (
    "slack = sum(max(request - usage, 0)) / sum(request); under-provisioning = share of samples with "
    "usage > request; averages are over series."
)


def _share(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def floor_policy_line(report: Mapping[str, Any]) -> str:
    """One sentence naming the floor policy every method's requests were raised to."""
    policy = report.get("config", {}).get("floor_policy")
    if not policy:
        return "Floor policy: not recorded (a report written before --floors)."
    text = FloorPolicy(**policy).describe()
    return (
        f"Floor policy (--floors): {text}, applied to every method's requests before scoring "
        "(a method's own higher minimum, e.g. VPA's 25m / 250 MiB, stays)."
    )


def _floors_text(report: Mapping[str, Any], method: str) -> str:
    for entry in report.get("methods", []):
        if entry["name"] == method and "floors" in entry:
            floors = entry["floors"]
            return f"{1000 * floors['cpu']:g}m / {floors['memory'] / 2**20:g} MiB floors"
    return "floors not recorded"


def summary_lines(name: str, report: Mapping[str, Any]) -> list[str]:
    """Markdown section ``## name``: the floor policy, then per resource the averages of every method,
    which source answered the platform's requests, and whether each platform variant met its goal."""
    lines = [f"## {name}", "", floor_policy_line(report), ""]
    for resource in RESOURCES:
        block = report["summary"][resource]
        lines += [
            f"**{resource}** (average over {len(block['series'])} series)",
            "",
            "| method | slack | under-provisioning | peak over request (windows) | changes | least slack at <=1% / <=5% under-prov. |",
            "|---|---|---|---|---|---|",
        ]
        for method, stats in block["methods"].items():
            if stats["slack"] is None:
                continue
            risk = stats["slack_at_risk"]
            at = " / ".join("-" if risk.get(k) is None else f"{100 * risk[k]:.1f}%" for k in ("0.01", "0.05"))
            lines.append(
                f"| {method} | {100 * stats['slack']:.1f}% | {100 * stats['under_provisioning_rate']:.2f}% | "
                f"{100 * stats['peak_exceed_rate']:.1f}% | {stats['changes']:.0f} | {at} |"
            )
        answered = block["methods"].get(REFERENCE_METHOD, {}).get("answered_by") or {}
        if answered:
            total = sum(answered.values())
            shares = ", ".join(f"{source} {100 * n / total:.0f}%" for source, n in answered.items())
            lines += ["", f"platform's request answered by (share of origins): {shares}"]
        for reference, comparison in (
            block.get("comparisons") or {REFERENCE_METHOD: block.get("comparison")}
        ).items():
            if not comparison or reference == "platform-1step":
                continue
            rivals = ", ".join(
                f"{method} {_share(stats['slack_at_reference_risk'])}"
                for method, stats in comparison["baselines"].items()
            )
            head_room = report.get("config", {}).get("platform_head_room", "auto")
            if reference == "platform-validation":
                head_room = "validation"
            floors = f"{head_room} head-room, {_floors_text(report, reference)}"
            lines += [
                "",
                f"goal met ({reference}, {floors}): {comparison['goal_met']} (slack {_share(comparison['slack'])} at "
                f"{_share(comparison['under_provisioning_rate'], 2)} under-provisioning; baselines' least slack "
                f"at no more under-provisioning: {rivals})",
            ]
        lines.append("")
    return lines


def series_lines(report: Mapping[str, Any]) -> list[str]:
    """Markdown: per resource, one row per series with each method's slack / under-provisioning."""
    methods = [m["name"] for m in report["methods"]]
    lines = ["## Per series", "", "Each cell: slack / under-provisioning (memory: / peak over request)."]
    for resource in RESOURCES:
        lines += [
            "",
            f"**{resource}**",
            "",
            "| series | origins | " + " | ".join(methods) + " |",
            "|---|---|" + "---|" * len(methods),
        ]
        for s in report["series"]:
            block = s["resources"].get(resource)
            if block is None:
                continue
            cells = []
            for m in methods:
                score = (block["methods"].get(m) or {}).get("score")
                if score is None:
                    cells.append("failed")
                    continue
                text = f"{_share(score['slack'])} / {_share(score['under_provisioning_rate'], 2)}"
                if resource == "memory":
                    text += f" / {_share(score['peak_exceed_rate'])}"
                cells.append(text)
            lines.append(f"| {s['name']} | {block['origins']} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def summary_markdown(report: Mapping[str, Any], *, name: str = "Average over series") -> str:
    """The whole ``summary.md`` of one backtest run."""
    config = report.get("config", {})

    def duration(key: str) -> str:
        seconds = config.get(key)
        return "-" if seconds is None else format_duration(pd.Timedelta(seconds=seconds))

    platform = any(m["name"].startswith(REFERENCE_METHOD) for m in report["methods"])
    settings = (
        f"origins every {duration('step_seconds')} after a {duration('warmup_seconds')} warm-up, "
        f"requests held {duration('horizon_seconds')}"
        + (
            f", the platform refitted every {duration('refit_seconds')}"
            if platform and "refit_seconds" in config
            else ""
        )
    )
    source = report.get("input", {})
    lines = [
        f"# Backtest: {source.get('source', '?')}",
        "",
        f"{len(report['series'])} series ({source.get('mode', '?')}); {settings}. {SUMMARY_DEFINITIONS}",
        "",
    ]
    notes = [n for n in source.get("notes", []) if n]
    if notes:
        lines += [*(f"- {n}" for n in notes), ""]
    lines += summary_lines(name, report)
    lines += series_lines(report)
    return "\n".join(lines)


def write_summary(report: Mapping[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/summary.md`` (``summary_markdown``); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.md"
    path.write_text(summary_markdown(report) + "\n")
    return path
