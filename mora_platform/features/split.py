"""Time-ordered train / validation / test split inside each experiment (or continuous series).

Each experiment contributes its first rows to train, the next to validation and its last rows to
test, so no model ever trains on a moment later than one it is evaluated on within a series.

With ``by="experiments"`` and enough experiments (``MIN_EXPERIMENTS``), whole experiments are held
out instead, in the order they started: the earliest train, the next validate, the latest test.
Calibration then sees every position of an experiment, its start included (a model is asked at
the start of a new experiment, too), rather than only each experiment's late rows. With fewer
experiments it falls back to the split inside each experiment.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import numpy as np
import pandas as pd

from mora_platform.data.schema import EXPERIMENT_ID, TIMESTAMP

SPLIT_COLUMN = "split"
MIN_EXPERIMENTS = 7
SplitBy = Literal["rows", "experiments"]


class Split(StrEnum):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


def split_sizes(n: int, validation_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, validation, test) row counts for one series of ``n`` rows; train keeps at least 1 row."""
    n_test = round(n * test_fraction)
    n_val = round(n * validation_fraction)
    while n_test + n_val > n - 1 and (n_test or n_val):
        if n_test >= n_val and n_test:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def split_frame(
    frame: pd.DataFrame, validation_fraction: float, test_fraction: float, by: SplitBy = "rows"
) -> pd.Series:
    """Split label per row of a prepared frame (sorted by experiment then time), as a Series of str."""
    if (
        not 0 <= validation_fraction < 1
        or not 0 <= test_fraction < 1
        or validation_fraction + test_fraction >= 1
    ):
        raise ValueError(
            f"validation_fraction={validation_fraction} and test_fraction={test_fraction} "
            "must be in [0, 1) and sum to less than 1"
        )
    if by not in ("rows", "experiments"):
        raise ValueError(f"split by must be 'rows' or 'experiments', got {by!r}")
    if by == "experiments" and frame[EXPERIMENT_ID].nunique() >= MIN_EXPERIMENTS:
        return _split_experiments(frame, validation_fraction, test_fraction)
    labels = np.empty(len(frame), dtype=object)
    position = frame.groupby(EXPERIMENT_ID, sort=False).cumcount().to_numpy()
    sizes = frame.groupby(EXPERIMENT_ID, sort=False)[EXPERIMENT_ID].transform("size").to_numpy()
    for n in np.unique(sizes):
        n_train, n_val, _ = split_sizes(int(n), validation_fraction, test_fraction)
        rows = sizes == n
        pos = position[rows]
        labels[rows] = np.where(
            pos < n_train,
            Split.TRAIN.value,
            np.where(pos < n_train + n_val, Split.VALIDATION.value, Split.TEST.value),
        )
    return pd.Series(labels, index=frame.index, name=SPLIT_COLUMN, dtype=object)


def _split_experiments(frame: pd.DataFrame, validation_fraction: float, test_fraction: float) -> pd.Series:
    """Whole experiments per split, by start time (ties by id); each split gets at least one."""
    key = (
        frame[TIMESTAMP]
        if TIMESTAMP in frame.columns
        else pd.Series(np.arange(len(frame)), index=frame.index)
    )
    starts = key.groupby(frame[EXPERIMENT_ID], sort=False).min()
    order = sorted(starts.index, key=lambda e: (starts[e], str(e)))
    n_train, n_val, _ = split_sizes(len(order), validation_fraction, test_fraction)
    n_val = max(n_val, 1) if validation_fraction > 0 else 0
    n_train = min(n_train, len(order) - n_val - (1 if test_fraction > 0 else 0))
    label_of = {
        e: Split.TRAIN.value
        if k < n_train
        else Split.VALIDATION.value
        if k < n_train + n_val
        else Split.TEST.value
        for k, e in enumerate(order)
    }
    return pd.Series(
        frame[EXPERIMENT_ID].map(label_of).to_numpy(dtype=object),
        index=frame.index,
        name=SPLIT_COLUMN,
        dtype=object,
    )
