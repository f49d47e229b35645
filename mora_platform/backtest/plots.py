"""PNG plots of a backtest (matplotlib, Agg backend, no display needed).

- ``{series}.png``: per resource, the usage, each method's request over time (a step line), and the
  samples where usage exceeded a method's request marked in that method's colour;
- ``summary.png``: per resource, the averaged efficiency-vs-risk curves (slack against
  under-provisioning as the margin is swept), each method's default margin marked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from mora_platform.backtest.baselines import RESOURCES
from mora_platform.backtest.engine import SeriesReplay

_SCALE = {"cpu": (1e3, "CPU (millicores)"), "memory": (1 / 2**20, "memory (MiB)")}


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def safe_filename(name: str) -> str:
    """A series name made safe as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "series"


def plot_series(replay: SeriesReplay, out_dir: Path) -> Path:
    """Usage, requests and under-provisioned samples of one series; returns the PNG path."""
    resources = [r for r in RESOURCES if r in replay.resources]
    fig, axes = plt.subplots(
        max(len(resources), 1), 1, figsize=(12, 3.6 * max(len(resources), 1)), squeeze=False
    )
    for ax, resource in zip(axes[:, 0], resources, strict=False):
        rep = replay.resources[resource]
        scale, label = _SCALE[resource]
        colors = _colors(list(rep.traces))
        shown = rep.usage[rep.usage.index >= rep.origins[0] - (rep.origins[-1] - rep.origins[0]) * 0.05]
        ax.plot(shown.index, shown.to_numpy() * scale, color="0.3", linewidth=0.8, label="usage")
        sample_times = _sample_times(rep)
        for name, trace in rep.traces.items():
            if not trace.ok:
                continue
            requests = trace.requests()
            ax.step(
                rep.origins, requests * scale, where="post", color=colors[name], linewidth=1.2, label=name
            )
            under = rep.window_usage > requests[rep.window_ids]
            if under.any():
                ax.scatter(
                    sample_times[under],
                    rep.window_usage[under] * scale,
                    s=9,
                    marker="x",
                    color=colors[name],
                    zorder=3,
                )
        ax.set_ylabel(label)
        ax.set_title(f"{replay.name}: {resource} (x = usage above that method's request)")
        ax.legend(loc="upper left", fontsize=7, ncol=4)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{safe_filename(replay.name)}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _sample_times(rep: Any) -> np.ndarray:
    """Timestamps of the scored samples, in the order of ``window_usage``."""
    times = rep.usage.index
    starts = times.searchsorted(rep.origins, side="left")
    parts = [
        times[s : s + n]
        for s, n in zip(starts, np.bincount(rep.window_ids, minlength=len(rep.origins)), strict=True)
    ]
    return np.concatenate([p.to_numpy() for p in parts]) if parts else np.empty(0, dtype="datetime64[ns]")


def plot_summary(report: Mapping[str, Any], out_dir: Path) -> Path:
    """Averaged efficiency-vs-risk curves per resource; returns the PNG path."""
    methods = [m["name"] for m in report["methods"]]
    colors = _colors(methods)
    fig, axes = plt.subplots(1, len(RESOURCES), figsize=(12, 4.5), squeeze=False)
    for ax, resource in zip(axes[0], RESOURCES, strict=True):
        summary = report["summary"][resource]
        for name in methods:
            stats = summary["methods"].get(name)
            if not stats or not stats["curve"]:
                continue
            under = [100 * p["under_provisioning_rate"] for p in stats["curve"]]
            slack = [100 * p["slack"] for p in stats["curve"]]
            ax.plot(under, slack, color=colors[name], linewidth=1.2, label=name)
            if stats["slack"] is not None:
                ax.scatter(
                    [100 * stats["under_provisioning_rate"]],
                    [100 * stats["slack"]],
                    color=colors[name],
                    s=40,
                    zorder=3,
                )
        ax.set_xlabel("under-provisioning (% of samples)")
        ax.set_ylabel("slack (% of requested)")
        ax.set_title(
            f"{resource}: efficiency vs risk ({len(summary['series'])} series; dot = default margin)"
        )
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_plots(replays: Sequence[SeriesReplay], report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Every per-series plot under ``out_dir/plots/`` and the summary plot; returns the paths."""
    plot_dir = out_dir / "plots"
    paths = [plot_series(r, plot_dir) for r in replays if r.resources]
    paths.append(plot_summary(report, plot_dir))
    return paths
