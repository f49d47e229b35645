"""Seeded synthetic frames for one service in the canonical loaded form, for the model tests.

Deliberately simpler than ``mora_platform.data.synthetic.generate_fleet`` (no bursts or restarts),
so that coverage and round-trip assertions are about the models, not the noise.

A daily cycle in CPU and memory driven by ``load_users``, noise, and integer replicas that
follow the load. ``experiments > 1`` cuts the period into that many back-to-back experiments
with distinct ids (and distinct levels, so a window that crossed two would be visible).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def synthetic_service_frame(
    days: float = 7.0,
    step_seconds: int = 300,
    seed: int = 0,
    *,
    service: str = "svc-synthetic",
    experiments: int = 1,
    start: str = "2026-01-05T00:00:00Z",
    noise: float = 0.08,
) -> pd.DataFrame:
    """A canonical frame (``UNIFIED_COLUMNS`` + ``step``) of ``days`` at ``step_seconds``."""
    rng = np.random.default_rng(seed)
    n = max(1, int(days * 86_400 / step_seconds))
    ts = pd.date_range(pd.Timestamp(start), periods=n, freq=pd.Timedelta(seconds=step_seconds))
    hours = (np.arange(n) * step_seconds / 3600.0) % 24
    weekday = (ts.dayofweek < 5).astype(float)
    cycle = 0.5 + 0.5 * np.sin((hours - 8) / 24 * 2 * np.pi)
    users = np.round(20 + 60 * cycle * (0.8 + 0.2 * weekday) + rng.normal(0, 3, n)).clip(1)
    replicas = np.clip(np.ceil(users / 40), 1, None)
    cpu = (0.05 + 0.004 * users) * np.exp(rng.normal(0, noise, n))
    mem = (150e6 + 1.5e6 * users) * np.exp(rng.normal(0, noise / 2, n))
    experiment = np.minimum(np.arange(n) * experiments // n, experiments - 1)
    level = 1.0 + 0.5 * experiment  # distinct per experiment
    cpu, mem = cpu * level, mem * level
    rx = users * 2e3 * np.exp(rng.normal(0, noise, n))
    tx = rx * 1.5
    frame = pd.DataFrame(
        {
            TIMESTAMP: ts,
            EXPERIMENT_ID: [
                f"{service}-exp{e:02d}" if experiments > 1 else f"synthetic-{service}" for e in experiment
            ],
            SERVICE: service,
            SCENARIO: "synthetic",
            REPLICA_COUNT: replicas.astype(int),
            LOAD_USERS: users.astype(float),
            "cpu_cores_value": cpu,
            "mem_bytes_value": mem,
            "net_rx_bytes_value": rx,
            "net_tx_bytes_value": tx,
            "pod_restarts_value": 0.0,
            "replica_count_value": replicas.astype(float),
            "node_cpu_util_value": 20 + 40 * cycle + rng.normal(0, 2, n),
            "node_mem_util_value": 40 + 10 * cycle + rng.normal(0, 1, n),
            "network_activity_rate_value": (rx + tx) / step_seconds,
            "processing_intensity_value": cpu / np.maximum(users, 1),
            "service_stability_value": 1.0,
            "resource_pressure_value": cpu / (0.05 + 0.004 * 100),
        }
    )
    frame[STEP] = frame.groupby(EXPERIMENT_ID, sort=False).cumcount()
    return frame[[*UNIFIED_COLUMNS, STEP]]
