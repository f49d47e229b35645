"""A member that reads a row's own load regressors (Prophet) is judged over past rows as it answers now.

``forecast_next`` without a context reads the last row's ``load_users`` / ``replica_count``; over the rows
of a history the same member would otherwise read each row's own, which a request cannot know yet, and its
recent residuals would look better than its answers are. ``member_predictions(as_asked=True)`` gives such
a member the previous row's regressors; members that read only earlier rows (the LSTM) are unaffected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
from synthetic_frames import synthetic_service_frame

from mora_platform.data.schema import EXPERIMENT_ID, LOAD_USERS, REPLICA_COUNT
from mora_platform.features.targets import prepare_frame
from mora_platform.models.base import Forecaster, known_context
from mora_platform.models.ensemble import EnsembleForecaster
from mora_platform.recommend.types import TARGETS


class RowLoad(Forecaster):
    """Forecasts every target as the load of the row it is asked about (as Prophet's regressors do)."""

    name = "row_load"
    reads_row_context = True

    def _fit(self, frame: pd.DataFrame) -> None:
        return None

    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {t: frame[LOAD_USERS].to_numpy(dtype="float64") for t in TARGETS}, index=frame.index
        )

    def _forecast_next(self, history: pd.DataFrame, context: dict[str, float | str]) -> dict[str, float]:
        return dict.fromkeys(TARGETS, float(history[LOAD_USERS].iloc[-1]))

    def _save(self, directory: Path) -> list[str]:
        return []

    @classmethod
    def _load(cls, directory: Path) -> Self:
        return cls()


class EarlierRows(RowLoad):
    """The same forecast from a member that reads only earlier rows: no lag is added for it."""

    name = "earlier_rows"
    reads_row_context = False


def two_experiments() -> pd.DataFrame:
    frame = prepare_frame(synthetic_service_frame(days=1.0, step_seconds=300, seed=2, experiments=2))
    return frame.assign(**{LOAD_USERS: np.arange(len(frame), dtype="float64")})


def test_known_context_is_the_previous_row_of_the_same_experiment() -> None:
    frame = two_experiments()
    known = known_context(frame)
    experiments = frame[EXPERIMENT_ID].to_numpy()
    first = np.r_[True, experiments[1:] != experiments[:-1]]
    assert first.sum() == 2
    load = frame[LOAD_USERS].to_numpy()
    # each row sees the row before it; an experiment's first row has no earlier one and keeps its own
    np.testing.assert_array_equal(known[LOAD_USERS].to_numpy()[~first], load[np.flatnonzero(~first) - 1])
    np.testing.assert_array_equal(known[LOAD_USERS].to_numpy()[first], load[first])
    replicas = frame[REPLICA_COUNT].to_numpy()
    np.testing.assert_array_equal(
        known[REPLICA_COUNT].to_numpy()[~first], replicas[np.flatnonzero(~first) - 1]
    )
    others = [LOAD_USERS, REPLICA_COUNT]
    pd.testing.assert_frame_equal(known.drop(columns=others), frame.drop(columns=others))
    assert frame[LOAD_USERS].to_numpy()[1] == 1.0  # the caller's frame is left as it was


def test_as_asked_lags_only_the_members_that_read_the_row_itself() -> None:
    frame = two_experiments()
    ensemble = EnsembleForecaster.from_fitted(
        {"row_load": RowLoad().fit(frame), "earlier_rows": EarlierRows().fit(frame)}
    )
    hindsight = ensemble.member_predictions(frame)
    asked = ensemble.member_predictions(frame, as_asked=True)
    expected = known_context(frame)[LOAD_USERS].to_numpy()
    np.testing.assert_array_equal(asked["row_load"]["cpu"].to_numpy(), expected)
    assert not np.array_equal(hindsight["row_load"]["cpu"].to_numpy(), expected)
    pd.testing.assert_frame_equal(asked["earlier_rows"], hindsight["earlier_rows"])
    # and the answer now reads the last row, as the lagged predictions did for every row
    now = ensemble.members["row_load"].forecast_next(frame)
    assert now["cpu"] == frame[LOAD_USERS].iloc[-1]
