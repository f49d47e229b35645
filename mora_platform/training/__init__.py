"""Per-service training: split, fit members, fuse, calibrate, evaluate, write a bundle (pure, no Ray/S3)."""

from __future__ import annotations

from mora_platform.training.config import LSTMConfig, ProphetConfig, TrainingConfig

__all__ = ["LSTMConfig", "ProphetConfig", "TrainingConfig"]
