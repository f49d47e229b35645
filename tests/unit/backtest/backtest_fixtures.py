"""Small seeded series with a daily cycle for the backtest tests (imported by name: unique module name)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mora_platform.backtest.engine import BacktestSeries

START = pd.Timestamp("2026-01-05T00:00:00Z")


def daily_series(
    days: float = 4.0, step_minutes: int = 10, seed: int = 0, name: str = "svc"
) -> BacktestSeries:
    """CPU (cores) and memory (bytes) with a daily cycle and seeded noise."""
    index = pd.date_range(START, periods=int(days * 24 * 60 / step_minutes), freq=f"{step_minutes}min")
    rng = np.random.default_rng(seed)
    phase = 2 * np.pi * (index.hour + index.minute / 60) / 24
    cpu = 0.2 + 0.1 * np.sin(phase) + rng.normal(0, 0.01, len(index))
    memory = 4e8 + 1e8 * np.sin(phase) + rng.normal(0, 5e6, len(index))
    return BacktestSeries(
        name=name,
        usage={"cpu": pd.Series(np.abs(cpu), index=index), "memory": pd.Series(memory, index=index)},
    )
