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

`write_frame` (re-exported from `writers`) stores a frame as one CSV or Parquet file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mora_platform.data.cleaning import add_derived_metrics
from mora_platform.data.schema import (
    EXPERIMENT_ID,
    LOAD_USERS,
    REPLICA_COUNT,
    SCENARIO,
    SERVICE,
    STEP,
    TIMESTAMP,
    UNIFIED_COLUMNS,
)
from mora_platform.data.writers import write_frame

__all__ = ["SYNTHETIC_SCENARIO", "generate_fleet", "service_name", "write_frame"]

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


def _restart_steps(rng: np.random.Generator, n: int, step_seconds: int) -> tuple[np.ndarray, float]:
    """Step indices of pod restarts (leak-driven, plus rare crashes) and the leak period in seconds."""
    period = rng.uniform(1.5, 5.0) * DAY_SECONDS
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


def _service_frame(index: int, seed: int, stamps: pd.DatetimeIndex, step_seconds: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, index])
    n = len(stamps)
    seconds = np.arange(n, dtype="float64") * step_seconds
    epoch = stamps.asi8 // 1_000_000_000
    day_fraction = (epoch % DAY_SECONDS) / DAY_SECONDS
    weekday = (epoch // DAY_SECONDS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0

    base_users = rng.uniform(20.0, 200.0)
    daily = 1.0 + rng.uniform(0.5, 0.8) * np.cos(2 * np.pi * (day_fraction - rng.uniform(13.0, 17.0) / 24))
    weekly = np.where(weekday >= 5, rng.uniform(0.55, 0.8), 1.0)
    noise = np.exp(_smooth_noise(rng, n, step_seconds, 0.08))
    load = base_users * daily * weekly * noise * (1.0 + _bursts(rng, seconds, step_seconds))

    idle_cores = rng.uniform(0.02, 0.1)
    cores_per_user = rng.uniform(0.002, 0.01)
    cpu = idle_cores + cores_per_user * load * (1.0 + 0.03 * rng.standard_normal(n))
    cpu = np.maximum(cpu, 0.001)

    typical_cpu = idle_cores + cores_per_user * base_users
    pod_request = typical_cpu / (HPA_TARGET_UTILISATION * rng.uniform(1.5, 4.0))  # 1.5-4 pods at mean load
    min_replicas = int(rng.integers(1, 3))
    max_replicas = min_replicas + int(rng.integers(4, 10))
    desired = np.ceil(cpu / (HPA_TARGET_UTILISATION * pod_request))
    window = max(HPA_SCALE_DOWN_SECONDS // step_seconds, 1)
    held = pd.Series(desired).rolling(window, min_periods=1).max().shift(1).bfill().to_numpy()
    replicas = np.clip(held, min_replicas, max_replicas).astype("int64")

    restarts, period = _restart_steps(rng, n, step_seconds)
    pod_base = rng.uniform(100.0, 600.0) * _MIB
    leak_per_second = pod_base * rng.uniform(0.5, 1.5) / period
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
    node_mem = np.clip(rng.uniform(30.0, 50.0) + 100.0 * memory / NODE_MEMORY_BYTES, 0.0, 100.0)

    name = service_name(index)
    return pd.DataFrame(
        {
            TIMESTAMP: stamps,
            EXPERIMENT_ID: f"synthetic-{name}",
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


def generate_fleet(
    n_services: int,
    days: float,
    step_seconds: int = 30,
    seed: int = 0,
    start: str = "2026-01-05T00:00:00Z",
) -> pd.DataFrame:
    """``n_services`` continuous series of ``days`` days at ``step_seconds``, in the canonical frame."""
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
    parts = [_service_frame(i, seed, stamps, step_seconds) for i in range(n_services)]
    frame = pd.concat(parts, ignore_index=True)
    frame = add_derived_metrics(frame, node_cpu_cores=NODE_CPU_CORES, node_memory_bytes=NODE_MEMORY_BYTES)
    for column in (EXPERIMENT_ID, SERVICE, SCENARIO):
        frame[column] = frame[column].astype(str)
    frame = frame.sort_values([SERVICE, EXPERIMENT_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
    return frame[[*UNIFIED_COLUMNS, STEP]]
