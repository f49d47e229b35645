"""Keep TensorFlow's noise out of what users read (backtest output, fleet job logs, Tune, `mora train`).

Two kinds of noise, neither a problem of the platform:

- C++ start-up logs. ``TF_CPP_MIN_LOG_LEVEL=2`` (what ``models.tf_runtime`` sets) hides most; the
  oneDNN notice TF 2.21 prints while it is imported ("All log messages before absl::InitializeLog()
  ...", "oneDNN custom operations are on") ignores it, so ``quiet_tensorflow`` imports TF with
  the process' stderr (file descriptor 2) pointed at /dev/null for the import only.
- "N out of the last M calls to <function TensorFlowTrainer...> triggered tf.function retracing".
  The platform refits: every fit builds a fresh Keras network whose train and test steps are
  traced once, as they must be. TF's detector counts traces per Python code object, so from the
  fifth fit on it calls those first traces "retracing". Keras' own step functions' warnings are
  dropped; any other function's retracing warning still shows. (Inference never goes through
  Keras: the LSTM answers with a NumPy forward pass over the saved weights, ``models.lstm``.)
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys

RETRACING = "triggered tf.function retracing"
KERAS_STEPS = "TensorFlowTrainer"


class KerasRetracingFilter(logging.Filter):
    """Drops TF's retracing warning about Keras' train / test / predict step functions."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (RETRACING in message and KERAS_STEPS in message)


def _import_silently(module: str) -> None:
    """Import ``module`` with file descriptor 2 on /dev/null (Python errors still raise after)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to keep quiet
        importlib.import_module(module)
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        importlib.import_module(module)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow(import_now: bool = False) -> None:
    """Quiet TF in this process: C++ log level, the Keras retracing filter, and (``import_now``)
    TF imported silently if it is not yet. Idempotent; a missing TF is left for its users to report."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, KerasRetracingFilter) for f in logger.filters):
        logger.addFilter(KerasRetracingFilter())
    if import_now and "tensorflow" not in sys.modules:
        with contextlib.suppress(ImportError):
            _import_silently("tensorflow")
