"""The peak-quantile forecaster's sequence head: a small Keras LSTM trained with a pinball loss.

The linear quantile regression (``models.peak``) reads a handful of summaries of the usage before a
row; this head reads the usage's *shape* instead and learns the same quantity (the ``quantile`` of
the usage over the ``H`` held steps from the row on, relative to the level ``L``), so the two can be
fused by a weight chosen on the validation rows (``models.peak``: ``TargetModel.lstm_weight``).

**Input** per row ``i``: a sequence of ``SEQUENCE_PAST + SEQUENCE_AHEAD`` chunks of ``c`` rows each
(``c = ceil(H / SEQUENCE_AHEAD)``): the ``SEQUENCE_PAST`` chunks before ``i`` and the
``SEQUENCE_AHEAD`` chunks the request will be held over. Per chunk, six channels:

- the highest usage in the chunk over ``L`` (0 for the chunks ahead: not known yet),
- a flag for the chunks ahead,
- the highest usage in the same chunk one day earlier over ``L`` (what yesterday did at this time,
  ahead included: a day back is in the past), and a flag saying it is there,
- the sine and cosine of the chunk's time of day (0 when the model has no time-of-day terms).

Ratios are read up to ``INPUT_CAP``; a row without ``SEQUENCE_PAST`` chunks of its own experiment
before it has no input (NaN: the linear regression answers alone there). No chunk, past or
yesterday's, ever reaches into another experiment.

**Output**: one value, the quantile relative to ``L``, trained on the same rows and targets as the
regression with the pinball loss at ``quantile`` averaged over the sampled held steps.

**Training**: Adam, early stopping on the last ``HOLDOUT_SHARE`` of the training rows (time-ordered),
TensorFlow's threads capped to the task's CPUs (``configure_tensorflow``). **Saved** as
``peak_lstm_<target>.keras`` (no optimizer state); answering never imports TensorFlow: the weights
are read from the archive (``models.keras_archive``) and run by the LSTM member's NumPy forward pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mora_platform.models.base import ModelError, ModelLoadError
from mora_platform.models.keras_archive import read_keras_archive
from mora_platform.models.lstm import _numpy_stack, run_stack
from mora_platform.models.peak_features import forward_windows
from mora_platform.models.tf_runtime import (
    configure_tensorflow,
    custom_gradient_names,
    forget_custom_gradients,
)

__all__ = ["HEAD_FILE", "HEAD_PATTERN", "PeakHead", "chunk_rows", "head_file", "sequence_inputs"]

HEAD_FILE = "peak_lstm_{target}.keras"
HEAD_PATTERN = "peak_lstm_*.keras"
SEQUENCE_PAST = 12  # chunks before the row
SEQUENCE_AHEAD = 4  # chunks of the held steps
CHANNELS = 6
INPUT_CAP = 10.0  # usage over the level is read up to this ratio
HOLDOUT_SHARE = 0.2  # the last training rows early stopping watches
DAY_NS = 86_400 * 1_000_000_000


def head_file(target: str) -> str:
    return HEAD_FILE.format(target=target)


def chunk_rows(horizon: int) -> int:
    """Rows per chunk: the held steps make ``SEQUENCE_AHEAD`` chunks (the last may reach past them)."""
    return max(1, math.ceil(max(int(horizon), 1) / SEQUENCE_AHEAD))


def sequence_inputs(
    values: np.ndarray,
    experiments: np.ndarray,
    timestamps_ns: np.ndarray,
    level: np.ndarray,
    *,
    horizon: int,
    day: int,
    time_of_day: bool,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """``(len(rows), SEQUENCE_PAST + SEQUENCE_AHEAD, CHANNELS)`` inputs for ``rows`` (all rows when
    None) of one frame (see the module docstring); a row without its past chunks is all NaN."""
    values = np.asarray(values, dtype="float64")
    labels = np.asarray(experiments)
    n = len(values)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    c = chunk_rows(horizon)
    steps = SEQUENCE_PAST + SEQUENCE_AHEAD
    out = np.full((len(rows), steps, CHANNELS), np.nan)
    if n == 0 or len(rows) == 0:
        return out
    change = np.r_[True, labels[1:] != labels[:-1]]
    block_start = np.maximum.accumulate(np.where(change, np.arange(n), 0))
    chunk = forward_windows(values, labels, c)  # per row, the highest of the c values from it on
    offsets = (np.arange(steps) - SEQUENCE_PAST) * c  # chunk starts relative to the row
    lvl = level[rows][:, None]
    past_start = rows[:, None] + offsets[None, :SEQUENCE_PAST]
    ok = (past_start[:, 0] >= block_start[rows]) & np.isfinite(level[rows]) & (level[rows] > 0)
    past = chunk[np.clip(past_start, 0, n - 1)] / lvl
    yesterday_start = rows[:, None] + offsets[None, :] - day
    seen = (yesterday_start >= block_start[rows][:, None]) & (day >= steps * c)
    yesterday = np.where(seen, chunk[np.clip(yesterday_start, 0, n - 1)] / lvl, 0.0)
    seen &= np.isfinite(yesterday)
    yesterday = np.where(seen, yesterday, 0.0)
    out[:, :SEQUENCE_PAST, 0] = past
    out[:, SEQUENCE_PAST:, 0] = 0.0
    out[:, :, 1] = (np.arange(steps) >= SEQUENCE_PAST).astype("float64")[None, :]
    out[:, :, 2] = yesterday
    out[:, :, 3] = seen.astype("float64")
    if time_of_day and len(timestamps_ns) == n and day > 0:
        step_ns = DAY_NS / day
        stamps = np.asarray(timestamps_ns, dtype="int64")[rows].astype("float64")
        when = stamps[:, None] + offsets[None, :] * step_ns
        angle = 2 * np.pi * np.mod(when, DAY_NS) / DAY_NS
        out[:, :, 4], out[:, :, 5] = np.sin(angle), np.cos(angle)
    else:
        out[:, :, 4:] = 0.0
    with np.errstate(invalid="ignore"):
        out[:, :, [0, 2]] = np.clip(out[:, :, [0, 2]], 0.0, INPUT_CAP)
    bad = ~ok | ~np.isfinite(out).all(axis=(1, 2))
    out[bad] = np.nan
    return out


@dataclass
class PeakHead:
    """A trained (or loaded) head: the NumPy forward pass's layers and how it was trained."""

    units: int
    layers: list[tuple[str, tuple[np.ndarray, ...], str]] = field(default_factory=list, repr=False)
    training: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False)  # the Keras model after a fit (None once loaded)

    # ---- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        quantile: float,
        *,
        units: int = 32,
        epochs: int = 40,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        patience: int = 5,
        seed: int = 0,
        cpu_threads: int = 1,
    ) -> PeakHead:
        """Train on inputs ``x`` (rows, steps, channels) and targets ``y`` (rows, draws): the pinball
        loss at ``quantile`` of every draw against the one output, the last ``HOLDOUT_SHARE`` of the
        rows (in the order given: time order) watched for early stopping."""
        if len(x) < 2 or x.shape[1:] != (SEQUENCE_PAST + SEQUENCE_AHEAD, CHANNELS):
            raise ModelError(f"peak head: {len(x)} rows of shape {x.shape[1:]}")
        y = np.asarray(y, dtype="float64").reshape(len(x), -1)
        started = time.perf_counter()
        configure_tensorflow(cpu_threads, seed)
        import keras
        from keras import ops

        before = custom_gradient_names()
        q = float(quantile)

        def pinball(truth: Any, forecast: Any) -> Any:
            error = truth - forecast
            return ops.mean(ops.maximum(q * error, (q - 1.0) * error), axis=-1)

        hold = max(1, int(len(x) * HOLDOUT_SHARE)) if len(x) >= 10 else 0
        x_tr, y_tr = x[: len(x) - hold], y[: len(x) - hold]
        x_va, y_va = x[len(x) - hold :], y[len(x) - hold :]
        start = float(np.quantile(y_tr, q)) if y_tr.size else 1.0
        net = cls._network(keras, units, start)
        net.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss=pinball)
        monitor = "val_loss" if hold else "loss"
        history = net.fit(
            x_tr.astype("float32"),
            y_tr.astype("float32"),
            validation_data=(x_va.astype("float32"), y_va.astype("float32")) if hold else None,
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[
                keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, restore_best_weights=True)
            ],
        )
        clean = cls._network(keras, units, start)  # no optimizer state in what is kept
        clean.set_weights(net.get_weights())
        del net
        forget_custom_gradients(before)
        head = cls(units=units, model=clean)
        head.layers = _numpy_stack(
            "peak_head",
            [
                (type(layer).__name__, layer.name, layer.get_config(), layer.get_weights())
                for layer in clean.layers
            ],
        )
        losses = history.history.get(monitor, [])
        head.training = {
            "rows": len(x_tr),
            "holdout_rows": hold,
            "epochs": len(history.history["loss"]),
            "holdout_loss": float(min(losses)) if losses else None,
            "seconds": round(time.perf_counter() - started, 3),
        }
        return head

    @staticmethod
    def _network(keras: Any, units: int, start: float) -> Any:
        return keras.Sequential(
            [
                keras.Input(shape=(SEQUENCE_PAST + SEQUENCE_AHEAD, CHANNELS)),
                keras.layers.LSTM(units),
                keras.layers.Dense(units, activation="relu"),
                keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(start)),
            ],
            name="peak_head",
        )

    # ---- asking ---------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """The head's output (relative to the level) per row of ``x``; NaN for a row with no input."""
        out = np.full(len(x), np.nan)
        ok = np.isfinite(x).all(axis=(1, 2)) if len(x) else np.zeros(0, dtype=bool)
        if not ok.any():
            return out
        out[ok] = run_stack(np.asarray(x[ok], dtype="float64"), self.layers)[:, 0]
        return out

    # ---- persistence ----------------------------------------------------------------------
    def save(self, directory: Path, target: str) -> str:
        if self.model is None:
            raise ModelError("peak head: only a freshly trained head is saved (a loaded one is read-only)")
        name = head_file(target)
        self.model.save(Path(directory) / name)
        return name

    @classmethod
    def load(cls, directory: Path, target: str) -> PeakHead:
        """Read ``peak_lstm_<target>.keras`` without TensorFlow; refuse a file that is not this head."""
        name = head_file(target)
        path = Path(directory) / name
        if not path.is_file():
            raise ModelLoadError(f"{name}: file missing in {directory}")
        try:
            root = read_keras_archive(path)
            layers = _numpy_stack(
                "peak_head",
                [(layer.class_name, layer.name, layer.config, layer.weights) for layer in root.layers],
            )
        except ModelLoadError as exc:
            raise ModelLoadError(f"{name}: {exc}") from exc
        except Exception as exc:  # zipfile, h5py and the reader raise many types for a bad archive
            raise ModelLoadError(f"{name}: cannot load ({type(exc).__name__}: {exc})") from exc
        kinds = [kind for kind, _, _ in layers]
        if kinds != ["lstm", "dense", "dense"] or layers[0][2] != "last":
            raise ModelLoadError(f"{name}: not a peak head (layers {kinds})")
        head = cls(units=int(layers[0][1][1].shape[0]), layers=layers)
        try:
            out = head.forward(np.zeros((1, SEQUENCE_PAST + SEQUENCE_AHEAD, CHANNELS)))
        except ValueError as exc:
            raise ModelLoadError(f"{name}: weights do not fit together ({exc})") from exc
        if out.shape != (1,) or layers[0][1][0].shape[0] != CHANNELS or layers[-1][1][0].shape[1] != 1:
            raise ModelLoadError(f"{name}: input or output shape is not the peak head's")
        return head
