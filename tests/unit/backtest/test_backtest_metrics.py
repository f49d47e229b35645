"""Metrics on hand-made cases, exact."""

from __future__ import annotations

import numpy as np
import pytest

from mora_platform.backtest.metrics import (
    CurvePoint,
    average_curves,
    efficiency_curve,
    request_changes,
    score_forecast,
    score_requests,
    slack_at_risk,
)


def test_slack_under_provisioning_and_peaks_by_hand() -> None:
    requests = np.array([2.0, 4.0])
    usage = np.array([1.0, 3.0, 4.0, 5.0])
    window_ids = np.array([0, 0, 1, 1])
    score = score_requests(requests, usage, window_ids)
    # per-sample requests 2,2,4,4: waste 1+0+0+0 over 12 requested
    assert score.slack == pytest.approx(1 / 12)
    assert score.under_provisioning_rate == 0.5  # 3 > 2 and 5 > 4
    assert score.peak_exceed_rate == 1.0  # both windows peak above their request
    assert score.changes == 1
    assert score.mean_change_relative == pytest.approx(1.0)  # 2 -> 4
    assert (score.origins, score.samples) == (2, 4)
    assert score.mean_request == 3.0
    assert score.mean_usage == pytest.approx(13 / 4)


def test_generous_request_has_no_risk_and_counted_slack() -> None:
    score = score_requests(np.array([10.0]), np.array([2.0, 4.0]), np.array([0, 0]))
    assert score.slack == pytest.approx((8 + 6) / 20)
    assert score.under_provisioning_rate == 0.0
    assert score.peak_exceed_rate == 0.0
    assert score.changes == 0


def test_peak_exceed_differs_from_sample_rate() -> None:
    score = score_requests(
        np.array([5.0, 5.0]), np.array([1.0, 1.0, 1.0, 6.0, 1.0, 1.0]), np.array([0, 0, 0, 1, 1, 1])
    )
    assert score.under_provisioning_rate == pytest.approx(1 / 6)
    assert score.peak_exceed_rate == 0.5


def test_request_changes_counts_moves_and_relative_size() -> None:
    assert request_changes(np.array([1.0, 1.0, 2.0, 1.0])) == (2, pytest.approx((1.0 + 0.5) / 2))


def test_forecast_mae_and_mase() -> None:
    result = score_forecast(
        np.array([2.0, 3.0, np.nan]), np.array([2.0, 5.0, 1.0]), np.array([1.0, 1.0, 1.0])
    )
    assert result is not None
    assert result.mae == pytest.approx(1.0)
    assert result.naive_mae == pytest.approx(2.5)
    assert result.mase == pytest.approx(0.4)
    assert result.origins == 2
    assert score_forecast(np.array([np.nan]), np.array([1.0]), np.array([1.0])) is None


def test_efficiency_curve_and_slack_at_equal_risk() -> None:
    usage = np.array([1.0, 2.0, 3.0, 4.0])
    curve = efficiency_curve(np.array([2.0]), 0.0, [1.0, 2.0], usage, np.zeros(4, dtype=int))
    assert curve[0].margin == 1.0
    assert curve[0].slack == pytest.approx((1 + 0) / 8)
    assert curve[0].under_provisioning_rate == 0.5
    assert curve[1].slack == pytest.approx((3 + 2 + 1 + 0) / 16)
    assert curve[1].under_provisioning_rate == 0.0
    assert slack_at_risk(curve, 0.0) == pytest.approx(6 / 16)
    assert slack_at_risk(curve, 0.5) == pytest.approx(1 / 8)
    floored = efficiency_curve(np.array([2.0]), 5.0, [1.0], usage, np.zeros(4, dtype=int))
    assert floored[0].under_provisioning_rate == 0.0
    assert slack_at_risk([CurvePoint(1.0, 0.1, 0.3)], 0.2) is None


def test_average_curves_pointwise() -> None:
    a = [CurvePoint(1.0, 0.2, 0.1), CurvePoint(2.0, 0.4, 0.0)]
    b = [CurvePoint(1.0, 0.4, 0.3), CurvePoint(2.0, 0.6, 0.1)]
    mean = average_curves([a, b])
    assert mean[0].slack == pytest.approx(0.3)
    assert mean[1].under_provisioning_rate == pytest.approx(0.05)
    with pytest.raises(ValueError, match="different margin grids"):
        average_curves([a, [CurvePoint(1.5, 0.1, 0.1), CurvePoint(2.0, 0.1, 0.1)]])
