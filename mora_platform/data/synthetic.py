"""A synthetic fleet in the unified schema: one continuous, realistic-looking series per service.

Each service ``svc-NN`` draws its own parameters from ``numpy.random.default_rng([seed, index])``, so
its series depends only on (seed, service index), never on how many services are generated.

What the series contain (all vectorised; 10 services x 14 days at 30 s take well under a second):

- **load** (``load_users``): a base level x a daily cycle (cosine, peak in the afternoon) x a weekly
  cycle (weekends lower) x smooth multiplicative noise (exponentially smoothed, ~10 min memory) x random
  **bursts** (0.5 to 3 a day, 5-30 min, up to 2.5x, raised-cosine edges);
- **CPU** (``cpu_cores_value``, total over the service's pods): idle cores + cores per user x load, with
  a little white noise;
- **replicas**: HPA-like: ``ceil(cpu / (0.7 * pod_cpu_request))`` reacting one step late, scale-down
  held for 5 minutes (rolling max), clipped to the service's [min, max]; integer >= 1;
- **memory** (``mem_bytes_value``): replicas x (per-pod base + a slow leak growing since the last
  restart) + a little per-user working memory. When the leak reaches the pod's limit the pod restarts
  (every 1.5 to 5 days, with jitter), and rare random crashes restart it too: memory drops back to the
  base and ``pod_restarts_value`` (a cumulative counter) increments;
- **network**: received / sent bytes per second proportional to load;
- **node utilisation** (%): a background node load with its own daily cycle plus the service's share of
  an 8-core / 32 GiB node, clipped to [0, 100];
- the remaining derived metrics come from `cleaning.add_derived_metrics`, as for real data.

**Presets** (``generate_fleet(..., preset=NAME)``; ``PRESETS`` maps each name to a one-line summary)
add what production traces have and the plain fleet lacks. A preset series is the plain series of the
same (seed, service index) with one feature added: the plain draws are taken exactly as above, and the
preset's own draws come from a second generator ``numpy.random.default_rng([seed, index, key])`` (``key``
from the preset's name), so a preset is seeded and deterministic, and comparing it with the plain series
isolates its feature. ``t`` below is the position in the series (0 = first row, 1 = last):

- ``regime-shift``: one step change at ``t`` ~ U(0.4, 0.6): load and idle cores x ``f``, ``f`` ~ U(2, 3),
  up or down (1 / ``f``) with equal odds, so CPU, replicas and memory change level for good;
- ``flash-crowd``: 1 + Poisson(U(0.1, 0.3) a day) crowds, each load x U(4, 10) over the plain load,
  reached in 2-10 min, held 15-60 min, then decaying exponentially (time constant 10-30 min);
- ``slow-drift``: load and idle cores x ``exp(r * days)``, ``r`` ~ U(0.03, 0.08) a day, growing with odds
  3 to 1, else shrinking (a week changes the level 1.23x to 1.75x);
- ``idle-periods``: max(1, Poisson(U(0.1, 0.25) a day)) stretches of U(6, 36) h when the service is idle:
  load x 0.002 and idle cores x 0.1 (CPU a few millicores, replicas at the minimum, memory at the base);
- ``heavy-tailed-bursts``: U(4, 12) extra bursts a day with Pareto (Lomax) heights of tail index
  U(1.1, 1.6), scale 0.3, capped at 30 (load x up to 31), and log-normal lengths (median 10 min, at most 3 h);
- ``weekly-change``: at ``t`` ~ U(0.35, 0.65) the weekly pattern changes: the daily peak moves by
  U(5, 9) h (earlier or later) and the seven weekday levels are redrawn from U(0.5, 1.2);
- ``memory-leak``: a fast leak: the pod restarts every U(0.25, 1) day (plain: 1.5-5) having leaked
  U(1.5, 3) x its base memory (plain: 0.5-1.5), so memory climbs and drops with ``pod_restarts_value``;
- ``cpu-only``: memory is not collected: ``mem_bytes_value`` (and the busiest pod's memory) is NaN,
  ``node_mem_util_value`` is the node's background only.

Presets also write the busiest pod's usage (``schema.CPU_BUSIEST_POD`` / ``MEM_BUSIEST_POD``, as
``mora collect`` does; ``busiest_pod=True`` adds them to the plain fleet too): with more than one pod
the busiest carries ``(1 + s) / pods`` of the total, ``s`` a per-service skew (CPU U(0.05, 0.5), memory
U(0.02, 0.3)) varying smoothly over time by about 20%, never above the total; one pod carries it all.

`write_frame` (re-exported from `writers`) stores a frame as one CSV or Parquet file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mora_platform.data.cleaning import add_derived_metrics
from mora_platform.data.schema import (
    CPU_BUSIEST_POD,
    EXPERIMENT_ID,
    LOAD_USERS,
    MEM_BUSIEST_POD,
    POD_COLUMNS,
    REPLICA_COUNT,
    SCENARIO,
    SERVICE,
    STEP,
    TIMESTAMP,
    UNIFIED_COLUMNS,
)
from mora_platform.data.writers import write_frame

__all__ = ["PRESETS", "SYNTHETIC_SCENARIO", "generate_fleet", "preset_names", "service_name", "write_frame"]

SYNTHETIC_SCENARIO = "synthetic"
DAY_SECONDS = 86_400
NODE_CPU_CORES = 8.0
NODE_MEMORY_BYTES = 32 * 1024**3
HPA_TARGET_UTILISATION = 0.7
HPA_SCALE_DOWN_SECONDS = 300
NOISE_MEMORY_SECONDS = 600
_MIB = 1024**2


def service_name(index: int) -> str:
    """``svc-00``, ``svc-01``, ... (wider numbers simply get more digits)."""
    return f"svc-{index:02d}"


def _smooth_noise(rng: np.random.Generator, n: int, step_seconds: int, sigma: float) -> np.ndarray:
    """Zero-mean noise with ~NOISE_MEMORY_SECONDS of memory and standard deviation ``sigma``."""
    white = rng.standard_normal(n)
    tau = max(NOISE_MEMORY_SECONDS / step_seconds, 1.0)
    kernel = np.exp(-np.arange(int(5 * tau) + 1) / tau)
    kernel /= np.sqrt(np.sum(kernel**2))
    return sigma * np.convolve(white, kernel, mode="full")[:n]


def _bursts(rng: np.random.Generator, seconds: np.ndarray, step_seconds: int) -> np.ndarray:
    """Extra load multiplier (0 outside bursts): a few bursts a day, each 5-30 min long."""
    n = seconds.size
    total_days = seconds[-1] / DAY_SECONDS if n else 0.0
    count = rng.poisson(rng.uniform(0.5, 3.0) * max(total_days, 0.0))
    extra = np.zeros(n)
    for _ in range(count):
        begin = int(rng.integers(0, n))
        length = max(int(rng.uniform(300, 1800) / step_seconds), 1)
        height = rng.uniform(0.3, 1.5)
        window = np.sin(np.linspace(0.0, np.pi, length + 2)[1:-1]) ** 0.5  # quick rise, plateau, fall
        end = min(begin + length, n)
        extra[begin:end] += height * window[: end - begin]
    return extra


def _restart_steps(
    rng: np.random.Generator, n: int, step_seconds: int, period_days: tuple[float, float] = (1.5, 5.0)
) -> tuple[np.ndarray, float]:
    """Step indices of pod restarts (leak-driven, plus rare crashes) and the leak period in seconds."""
    period = rng.uniform(*period_days) * DAY_SECONDS
    horizon = n * step_seconds
    times: list[float] = []
    clock = -rng.uniform(0.0, period)  # the pod has been up for a while when the series starts
    while True:
        clock += period * rng.uniform(0.85, 1.15)
        if clock >= horizon:
            break
        if clock > 0:
            times.append(clock)
    crashes = rng.uniform(0.0, horizon, size=rng.poisson(0.2 * horizon / DAY_SECONDS))
    steps = np.unique((np.concatenate([np.asarray(times), crashes]) // step_seconds).astype("int64"))
    return steps[(steps > 0) & (steps < n)], period


PRESETS: dict[str, str] = {
    "regime-shift": "one lasting step change of load and CPU, x2-3 up or down, mid-series",
    "flash-crowd": "sudden crowds of 4-10x the usual load, held up to an hour, then decaying",
    "slow-drift": "load and CPU growing (or shrinking) 3-8% a day, compounded",
    "idle-periods": "stretches of 6-36 h with no traffic: CPU a few millicores, replicas at the minimum",
    "heavy-tailed-bursts": "many bursts with Pareto heights (a few far above the rest)",
    "weekly-change": "the daily peak hour and the weekday levels change mid-series",
    "memory-leak": "a fast leak restarting the pod every 6-24 h (memory saw-tooth, restart counter)",
    "cpu-only": "memory not collected (NaN); CPU only",
}


def preset_names() -> tuple[str, ...]:
    """The presets' names, in ``PRESETS`` order."""
    return tuple(PRESETS)


def _preset_key(preset: str) -> int:
    return int.from_bytes(hashlib.sha256(preset.encode()).digest()[:4], "big")


@dataclass
class _Clock:
    """What a preset's shape sees: time of each row and the plain series' daily and weekly factors."""

    seconds: np.ndarray
    day_fraction: np.ndarray
    weekday: np.ndarray
    step_seconds: int
    daily: np.ndarray
    weekly: np.ndarray
    daily_amplitude: float
    daily_peak: float  # fraction of the day

    @property
    def n(self) -> int:
        return int(self.seconds.size)

    @property
    def days(self) -> float:
        return float(self.seconds[-1] / DAY_SECONDS) if self.n else 0.0

    def at_fraction(self, fraction: float) -> int:
        """Row index at ``fraction`` of the series."""
        return min(int(fraction * self.n), self.n - 1)


@dataclass
class _Shape:
    """A preset's change to the plain series: multipliers on the load and on the idle cores."""

    load: np.ndarray
    idle_cores: np.ndarray


def _unit(clock: _Clock) -> _Shape:
    return _Shape(load=np.ones(clock.n), idle_cores=np.ones(clock.n))


def _regime_shift(rng: np.random.Generator, clock: _Clock) -> _Shape:
    shape = _unit(clock)
    at = clock.at_fraction(rng.uniform(0.4, 0.6))
    factor = rng.uniform(2.0, 3.0)
    factor = factor if rng.random() < 0.5 else 1.0 / factor
    shape.load[at:] = factor
    shape.idle_cores[at:] = factor
    return shape


def _flash_crowd(rng: np.random.Generator, clock: _Clock) -> _Shape:
    shape = _unit(clock)
    count = 1 + rng.poisson(rng.uniform(0.1, 0.3) * clock.days)
    extra = np.zeros(clock.n)
    for _ in range(count):
        begin = clock.seconds[int(rng.integers(0, clock.n))]
        height = rng.uniform(4.0, 10.0) - 1.0
        rise = rng.uniform(120.0, 600.0)
        hold = rng.uniform(900.0, 3600.0)
        tau = rng.uniform(600.0, 1800.0)
        t = clock.seconds - begin
        ramp = np.clip(t / rise, 0.0, 1.0)
        decay = np.exp(-np.maximum(t - rise - hold, 0.0) / tau)
        one = np.where((t >= 0) & (t <= rise + hold + 5 * tau), ramp * decay, 0.0)
        extra = np.maximum(extra, height * one)  # overlapping crowds: the larger one
    shape.load = 1.0 + extra
    return shape


def _slow_drift(rng: np.random.Generator, clock: _Clock) -> _Shape:
    rate = rng.uniform(0.03, 0.08) * (1.0 if rng.random() < 0.75 else -1.0)
    growth = np.exp(rate * clock.seconds / DAY_SECONDS)
    return _Shape(load=growth, idle_cores=growth.copy())


def _idle_periods(rng: np.random.Generator, clock: _Clock) -> _Shape:
    shape = _unit(clock)
    count = max(1, int(rng.poisson(rng.uniform(0.1, 0.25) * clock.days)))
    idle = np.zeros(clock.n, dtype=bool)
    for _ in range(count):
        begin = clock.seconds[int(rng.integers(0, clock.n))]
        length = rng.uniform(6.0, 36.0) * 3600.0
        idle |= (clock.seconds >= begin) & (clock.seconds < begin + length)
    shape.load[idle] = 0.002
    shape.idle_cores[idle] = 0.1
    return shape


def _heavy_tailed_bursts(rng: np.random.Generator, clock: _Clock) -> _Shape:
    shape = _unit(clock)
    alpha = rng.uniform(1.1, 1.6)
    count = rng.poisson(rng.uniform(4.0, 12.0) * max(clock.days, 0.0))
    extra = np.zeros(clock.n)
    for _ in range(count):
        begin = int(rng.integers(0, clock.n))
        height = min(0.3 * rng.pareto(alpha), 30.0)
        seconds = min(600.0 * rng.lognormal(0.0, 0.8), 3 * 3600.0)
        length = max(int(seconds / clock.step_seconds), 1)
        window = np.sin(np.linspace(0.0, np.pi, length + 2)[1:-1]) ** 0.5
        end = min(begin + length, clock.n)
        extra[begin:end] += height * window[: end - begin]
    shape.load = 1.0 + extra
    return shape


def _weekly_change(rng: np.random.Generator, clock: _Clock) -> _Shape:
    shape = _unit(clock)
    at = clock.at_fraction(rng.uniform(0.35, 0.65))
    move = rng.uniform(5.0, 9.0) * (1.0 if rng.random() < 0.5 else -1.0) / 24
    levels = rng.uniform(0.5, 1.2, size=7)
    daily = 1.0 + clock.daily_amplitude * np.cos(2 * np.pi * (clock.day_fraction - clock.daily_peak - move))
    weekly = levels[clock.weekday]
    shape.load[at:] = (daily * weekly / (clock.daily * clock.weekly))[at:]
    return shape


_PRESET_SHAPES: dict[str, Callable[[np.random.Generator, _Clock], _Shape]] = {
    "regime-shift": _regime_shift,
    "flash-crowd": _flash_crowd,
    "slow-drift": _slow_drift,
    "idle-periods": _idle_periods,
    "heavy-tailed-bursts": _heavy_tailed_bursts,
    "weekly-change": _weekly_change,
}


def _busiest_share(
    rng: np.random.Generator, replicas: np.ndarray, skew: float, step_seconds: int
) -> np.ndarray:
    """Share of the service total the busiest pod carries: ``(1 + s) / pods`` (1 for one pod), at most 1."""
    wobble = np.exp(_smooth_noise(rng, replicas.size, step_seconds, 0.2))
    pods = np.maximum(replicas.astype("float64"), 1.0)
    return np.minimum((1.0 + skew * wobble) / pods, 1.0)


def _service_frame(
    index: int,
    seed: int,
    stamps: pd.DatetimeIndex,
    step_seconds: int,
    preset: str | None = None,
    busiest_pod: bool = False,
) -> pd.DataFrame:
    rng = np.random.default_rng([seed, index])
    # the preset's own draws: the plain draws below stay exactly those of the plain series
    extra_rng = np.random.default_rng([seed, index, _preset_key(preset or "plain")])
    n = len(stamps)
    seconds = np.arange(n, dtype="float64") * step_seconds
    epoch = stamps.asi8 // 1_000_000_000
    day_fraction = (epoch % DAY_SECONDS) / DAY_SECONDS
    weekday = (epoch // DAY_SECONDS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0

    base_users = rng.uniform(20.0, 200.0)
    amplitude = rng.uniform(0.5, 0.8)
    peak = rng.uniform(13.0, 17.0) / 24
    daily = 1.0 + amplitude * np.cos(2 * np.pi * (day_fraction - peak))
    weekly = np.where(weekday >= 5, rng.uniform(0.55, 0.8), 1.0)
    noise = np.exp(_smooth_noise(rng, n, step_seconds, 0.08))
    load = base_users * daily * weekly * noise * (1.0 + _bursts(rng, seconds, step_seconds))
    shape_of = _PRESET_SHAPES.get(preset or "")
    clock = _Clock(seconds, day_fraction, weekday, step_seconds, daily, weekly, amplitude, peak)
    shape = shape_of(extra_rng, clock) if shape_of is not None else _unit(clock)
    load = load * shape.load

    idle_cores = rng.uniform(0.02, 0.1)
    cores_per_user = rng.uniform(0.002, 0.01)
    cpu = idle_cores * shape.idle_cores + cores_per_user * load * (1.0 + 0.03 * rng.standard_normal(n))
    cpu = np.maximum(cpu, 0.001)

    typical_cpu = idle_cores + cores_per_user * base_users
    pod_request = typical_cpu / (HPA_TARGET_UTILISATION * rng.uniform(1.5, 4.0))  # 1.5-4 pods at mean load
    min_replicas = int(rng.integers(1, 3))
    max_replicas = min_replicas + int(rng.integers(4, 10))
    desired = np.ceil(cpu / (HPA_TARGET_UTILISATION * pod_request))
    window = max(HPA_SCALE_DOWN_SECONDS // step_seconds, 1)
    held = pd.Series(desired).rolling(window, min_periods=1).max().shift(1).bfill().to_numpy()
    replicas = np.clip(held, min_replicas, max_replicas).astype("int64")

    leak = preset == "memory-leak"
    restarts, period = _restart_steps(rng, n, step_seconds, (0.25, 1.0) if leak else (1.5, 5.0))
    pod_base = rng.uniform(100.0, 600.0) * _MIB
    leak_per_second = pod_base * (rng.uniform(1.5, 3.0) if leak else rng.uniform(0.5, 1.5)) / period
    last_restart = np.concatenate([[0], restarts])[np.searchsorted(restarts, np.arange(n), side="right")]
    initial_age = rng.uniform(0.0, period * 0.8)
    age = np.where(last_restart == 0, seconds + initial_age, (np.arange(n) - last_restart) * step_seconds)
    per_user_memory = rng.uniform(0.2, 2.0) * _MIB
    memory = replicas * (pod_base + leak_per_second * age) + per_user_memory * load
    memory *= 1.0 + 0.005 * rng.standard_normal(n)
    counter = float(rng.integers(0, 3)) + np.searchsorted(restarts, np.arange(n), side="right")

    rx = load * rng.uniform(2e3, 2e4) * np.exp(0.05 * rng.standard_normal(n))
    tx = load * rng.uniform(5e3, 5e4) * np.exp(0.05 * rng.standard_normal(n))
    background = rng.uniform(10.0, 30.0) * (1.0 + 0.3 * np.cos(2 * np.pi * (day_fraction - 0.6)))
    node_cpu = np.clip(background + 100.0 * cpu / NODE_CPU_CORES, 0.0, 100.0)
    node_background = rng.uniform(30.0, 50.0)
    if preset == "cpu-only":  # memory not collected; the node's own figure is its background only
        memory = np.full(n, np.nan)
        node_mem = np.full(n, node_background)
    else:
        node_mem = np.clip(node_background + 100.0 * memory / NODE_MEMORY_BYTES, 0.0, 100.0)

    name = service_name(index)
    frame = pd.DataFrame(
        {
            TIMESTAMP: stamps,
            EXPERIMENT_ID: f"{preset or SYNTHETIC_SCENARIO}-{name}",
            SERVICE: name,
            SCENARIO: SYNTHETIC_SCENARIO,
            REPLICA_COUNT: replicas,
            LOAD_USERS: load,
            "cpu_cores_value": cpu,
            "mem_bytes_value": memory,
            "net_rx_bytes_value": rx,
            "net_tx_bytes_value": tx,
            "pod_restarts_value": counter,
            "replica_count_value": replicas.astype("float64"),
            "node_cpu_util_value": node_cpu,
            "node_mem_util_value": node_mem,
            STEP: np.arange(n, dtype="int64"),
        }
    )
    if busiest_pod:
        cpu_skew, mem_skew = extra_rng.uniform(0.05, 0.5), extra_rng.uniform(0.02, 0.3)
        frame[CPU_BUSIEST_POD] = cpu * _busiest_share(extra_rng, replicas, cpu_skew, step_seconds)
        frame[MEM_BUSIEST_POD] = memory * _busiest_share(extra_rng, replicas, mem_skew, step_seconds)
    return frame


def generate_fleet(
    n_services: int,
    days: float,
    step_seconds: int = 30,
    seed: int = 0,
    start: str = "2026-01-05T00:00:00Z",
    preset: str | None = None,
    busiest_pod: bool | None = None,
) -> pd.DataFrame:
    """``n_services`` continuous series of ``days`` days at ``step_seconds``, in the canonical frame.

    ``preset`` (a name in ``PRESETS``, see the module docstring) adds one production feature to every
    series; ``busiest_pod`` adds the busiest pod's CPU and memory columns (default: with a preset only).
    Experiment ids are ``synthetic-svc-NN``, or ``<preset>-svc-NN`` with a preset.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    with_pods = preset is not None if busiest_pod is None else busiest_pod
    if n_services < 1:
        raise ValueError(f"n_services must be >= 1, got {n_services}")
    if step_seconds < 1:
        raise ValueError(f"step_seconds must be >= 1, got {step_seconds}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    steps = round(days * DAY_SECONDS / step_seconds)
    if steps < 2:
        raise ValueError(f"days={days} at step {step_seconds}s gives {steps} rows; need at least 2")
    origin = pd.Timestamp(start)
    origin = origin.tz_localize("UTC") if origin.tzinfo is None else origin.tz_convert("UTC")
    stamps = pd.DatetimeIndex(origin + pd.to_timedelta(np.arange(steps) * step_seconds, unit="s"))
    stamps = stamps.astype("datetime64[ns, UTC]")
    parts = [_service_frame(i, seed, stamps, step_seconds, preset, with_pods) for i in range(n_services)]
    frame = pd.concat(parts, ignore_index=True)
    frame = add_derived_metrics(frame, node_cpu_cores=NODE_CPU_CORES, node_memory_bytes=NODE_MEMORY_BYTES)
    for column in (EXPERIMENT_ID, SERVICE, SCENARIO):
        frame[column] = frame[column].astype(str)
    frame = frame.sort_values([SERVICE, EXPERIMENT_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
    return frame[[*UNIFIED_COLUMNS, STEP, *(POD_COLUMNS if with_pods else ())]]
