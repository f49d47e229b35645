"""Forecasters behind one contract: Prophet, LSTM, percentile / naive baselines and their ensemble.

Pure: no S3, Prometheus or Ray. TensorFlow and Prophet are imported lazily, inside the
members that need them, so importing this package stays cheap.
"""

from __future__ import annotations

from mora_platform.models.base import Forecaster, ModelError, ModelLoadError, NotFittedError
from mora_platform.models.config import LSTMConfig, ProphetConfig

__all__ = ["Forecaster", "LSTMConfig", "ModelError", "ModelLoadError", "NotFittedError", "ProphetConfig"]
