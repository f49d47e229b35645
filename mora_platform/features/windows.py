"""Sliding windows of ``seq_len`` steps built inside one experiment only.

The window for target row ``i`` holds rows ``i - seq_len .. i - 1`` of the same experiment;
rows with fewer than ``seq_len`` earlier rows in their experiment get no window, so an
experiment of ``seq_len`` rows or fewer yields none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass
class WindowSet:
    """Inputs ``x`` (m, seq_len, f), targets ``y`` (m, k) and the frame row each target comes from."""

    x: np.ndarray
    y: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def build_windows(
    features: np.ndarray,
    targets: np.ndarray,
    experiments: np.ndarray,
    seq_len: int,
    target_mask: np.ndarray | None = None,
) -> WindowSet:
    """Windows for every row that has ``seq_len`` earlier rows in its own experiment.

    ``experiments`` labels each row; rows of one experiment must be contiguous and time-ordered.
    ``target_mask`` keeps only windows whose target row is selected (e.g. the training split).
    """
    features = np.asarray(features, dtype="float64")
    targets = np.asarray(targets, dtype="float64")
    n = features.shape[0]
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if targets.shape[0] != n or len(experiments) != n:
        raise ValueError("features, targets and experiments must have the same number of rows")
    empty = WindowSet(
        np.zeros((0, seq_len, features.shape[1])),
        np.zeros((0, targets.shape[1])),
        np.zeros(0, dtype=np.int64),
    )
    if n <= seq_len:
        return empty
    labels = np.asarray(experiments)
    starts = np.r_[True, labels[1:] != labels[:-1]]
    block = np.cumsum(starts) - 1
    block_start = np.flatnonzero(starts)[block]
    position = np.arange(n) - block_start
    eligible = position >= seq_len
    if target_mask is not None:
        eligible &= np.asarray(target_mask, dtype=bool)
    rows = np.flatnonzero(eligible)
    if rows.size == 0:
        return empty
    # view[j] = features[j : j + seq_len] transposed to (f, seq_len); the window for row i starts at i - seq_len.
    view = sliding_window_view(features, seq_len, axis=0)
    x = np.ascontiguousarray(np.transpose(view[rows - seq_len], (0, 2, 1)))
    return WindowSet(x, targets[rows], rows.astype(np.int64))
