"""Per-service training: split, fit members, fuse, calibrate, evaluate, write a bundle (pure, no Ray/S3).

Public API: ``train_service`` / ``fit_service`` (``service_trainer``), ``ServiceModel`` (``bundle``),
``TrainingConfig`` (``config``), ``TrainingReport`` and ``ServiceDataError`` (``report``).
TensorFlow and Prophet are imported only when a model is fitted or loaded.
"""

from __future__ import annotations

from mora_platform.training.bundle import ServiceModel
from mora_platform.training.config import LSTMConfig, ProphetConfig, TrainingConfig
from mora_platform.training.report import ServiceDataError, TrainingReport
from mora_platform.training.service_trainer import FittedService, fit_service, train_service

__all__ = [
    "FittedService",
    "LSTMConfig",
    "ProphetConfig",
    "ServiceDataError",
    "ServiceModel",
    "TrainingConfig",
    "TrainingReport",
    "fit_service",
    "train_service",
]
