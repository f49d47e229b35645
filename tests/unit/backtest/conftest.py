"""Fixtures of the backtest unit tests."""

from __future__ import annotations

import pandas as pd
import pytest

from mora_platform.backtest.engine import BacktestConfig


@pytest.fixture
def small_config() -> BacktestConfig:
    return BacktestConfig(
        step=pd.Timedelta(hours=2),
        horizon=pd.Timedelta(hours=1),
        warmup=pd.Timedelta(hours=24),
        margins=(0.8, 1.0, 1.5),
    )
