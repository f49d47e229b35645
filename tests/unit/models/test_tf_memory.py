"""An LSTM fit leaves no traced graph behind in TensorFlow's global gradient registry.

Keras' optimizer sums gradients through a ``tf.custom_gradient`` that registers a new
``CustomGradient-<uid>`` per trace and never unregisters it; its closures hold the traced graphs
(a fleet worker or an in-process backtest grew with every fit). ``LSTMForecaster._fit`` drops them
(``tf_runtime.forget_custom_gradients``). Checked on a real tiny fit; no timings.
"""

from __future__ import annotations

import gc
from typing import Any

import pandas as pd
import pytest

from mora_platform.features.split import split_frame
from mora_platform.features.targets import prepare_frame
from mora_platform.models import lstm as lstm_module
from mora_platform.models import tf_runtime
from mora_platform.models.config import LSTMConfig
from mora_platform.models.lstm import LSTMForecaster
from tests.helpers.synthetic_frames import synthetic_service_frame

TINY = LSTMConfig(units=[4], dense_units=0, epochs=1, batch_size=64)


def test_forget_drops_only_the_custom_gradients_registered_since(monkeypatch: pytest.MonkeyPatch) -> None:
    registry: dict[str, Any] = {"CustomGradient-1": 1, "Relu": 2}
    monkeypatch.setattr(tf_runtime, "gradient_registry", lambda: registry)
    before = tf_runtime.custom_gradient_names()
    registry.update({"CustomGradient-7": 3, "CustomGradient-8": 4, "MyOp": 5})
    assert tf_runtime.forget_custom_gradients(before) == 2
    assert registry == {"CustomGradient-1": 1, "Relu": 2, "MyOp": 5}


def _custom() -> set[str]:
    return {name for name in tf_runtime.custom_gradient_names() if name.startswith("CustomGradient-")}


def _graphs() -> int:
    gc.collect()
    return sum(type(o).__name__ == "FuncGraph" for o in gc.get_objects())


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    frame = prepare_frame(synthetic_service_frame(days=1.5, step_seconds=300, seed=3, experiments=1))
    return frame[(split_frame(frame, 0.15, 0.15) == "train").to_numpy()]


def test_an_lstm_fit_leaves_no_custom_gradient_or_graph_behind(
    train: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    LSTMForecaster(TINY, seq_len=6, seed=1).fit(train)  # TensorFlow loaded, one-off registrations done
    before, graphs = _custom(), _graphs()
    for seed in (2, 3):
        model = LSTMForecaster(TINY, seq_len=6, seed=seed).fit(train)
        assert _custom() == before
        assert _graphs() <= graphs  # nothing accumulates from fit to fit
    assert len(model.predict(train)) == len(train)  # the kept network still answers
    # without the clean-up the fit does leave entries behind (else this test would prove nothing)
    monkeypatch.setattr(lstm_module, "forget_custom_gradients", lambda names: 0)
    LSTMForecaster(TINY, seq_len=6, seed=4).fit(train)
    assert _custom() - before, "a Keras fit no longer registers custom gradients: the clean-up is moot"
