"""Frames for the peak-quantile candidate's tests: a flat CPU with a daily spike, its split, and
the usage over each row's held steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import TIMESTAMP
from mora_platform.features.split import split_frame
from mora_platform.features.targets import prepare_frame

STEP_SECONDS = 300
HORIZON = 12  # one hour at five minutes


def spiked_frame(days: float = 10.0, seed: int = 3) -> pd.DataFrame:
    """A prepared frame whose CPU is flat with noise except a spike from 14:00 to 14:30 every day:
    a peak the last hour never shows, but the same time yesterday does."""
    frame = synthetic_service_frame(days=days, step_seconds=STEP_SECONDS, seed=seed, noise=0.0)
    rng = np.random.default_rng(seed)
    stamps = pd.to_datetime(frame[TIMESTAMP], utc=True)
    minutes = stamps.dt.hour * 60 + stamps.dt.minute
    spike = ((minutes >= 14 * 60) & (minutes < 14 * 60 + 30)).to_numpy()
    cpu = 1.0 + 0.05 * rng.standard_normal(len(frame)) + 3.0 * spike
    frame = frame.assign(cpu_cores_value=cpu, replica_count_value=1.0, replica_count=1)
    return prepare_frame(frame)


def split(prepared: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = split_frame(prepared, 0.15, 0.15).to_numpy()
    return labels == "train", labels == "validation", labels == "test"


def held_usage(values: np.ndarray, rows: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows with a complete holding window and the usage over it (``(m, steps)``)."""
    rows = rows[rows + steps <= len(values)]
    return rows, values[rows[:, None] + np.arange(steps)[None, :]]
