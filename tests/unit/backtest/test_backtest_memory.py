"""The in-process backtest keeps its memory flat, and one failed series never ends the run.

A Keras fit's traced graphs are dropped by the LSTM itself (``tests/unit/models/test_tf_memory.py``);
``FreeingTrainer`` releases what else a platform fit left (Keras' global state, cycles, the heap) after
every fit. Checked here on real (tiny) fits; no timings.
"""

from __future__ import annotations

import gc
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mora_platform.backtest import runner
from mora_platform.backtest.engine import BacktestConfig, BacktestSeries
from mora_platform.backtest.inputs import read_value_csv
from mora_platform.backtest.progress import ProgressReporter

TINY = {"epochs": 1, "seq_len": 12, "lstm": {"units": [4], "dense_units": 0}}


def test_freeing_trainer_releases_once_per_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[object] = []

    def release(before: object = None) -> int:
        released.append(before)
        return 0

    monkeypatch.setattr(runner, "release_memory", release)
    models = iter([object(), object()])
    current: list[object] = []

    def trainer(frame: pd.DataFrame, service: str) -> Any:
        if service == "new fit" or not current:
            current[:] = [next(models)]
        return current[0]  # the variants asking at the same origin get the model just trained

    freeing = runner.FreeingTrainer(trainer)
    first = freeing(pd.DataFrame(), "new fit")
    assert freeing(pd.DataFrame(), "same") is first and len(released) == 1
    assert freeing(pd.DataFrame(), "new fit") is not first and len(released) == 2

    def failing(frame: pd.DataFrame, service: str) -> Any:
        raise RuntimeError("no data")

    with pytest.raises(RuntimeError):
        runner.FreeingTrainer(failing)(pd.DataFrame(), "svc")
    assert len(released) == 3  # a failed fit's leftovers are released too


def _cpu_csv(path: Path, days: float = 1.5, seed: int = 0) -> Path:
    times = pd.date_range("2026-03-02", periods=int(days * 288), freq="5min", tz="UTC")
    rng = np.random.default_rng(seed)
    values = 0.4 + 0.2 * np.sin(2 * np.pi * np.arange(len(times)) / 288) + rng.normal(0, 0.02, len(times))
    pd.DataFrame({"timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": values.round(4)}).to_csv(
        path, index=False
    )
    return path


def _graphs() -> int:
    gc.collect()
    return sum(type(o).__name__ == "FuncGraph" for o in gc.get_objects())


def test_platform_fits_through_the_freeing_trainer_accumulate_no_graphs(tmp_path: Path) -> None:
    from mora_platform.backtest.platform_training import ServiceModelTrainer

    frame = read_value_csv(_cpu_csv(tmp_path / "vm.csv")).frame
    assert frame is not None
    freeing = runner.FreeingTrainer(ServiceModelTrainer(TINY))
    freeing(frame.iloc[:380], "vm")  # TensorFlow loaded; whatever it registers once is there now
    graphs = _graphs()
    for rows in (400, 420):
        model = freeing(frame.iloc[:rows], "vm")
        assert _graphs() <= graphs  # no traced graph accumulates from fit to fit
    # the model still answers: it never needed the Keras graphs
    answer = model.predict(frame.iloc[:420], pd.Timedelta(hours=1))
    assert answer.requests["cpu"] > 0


def test_a_failed_series_in_process_is_reported_and_the_others_run(
    small_config: BacktestConfig, tmp_path: Path
) -> None:
    good = read_value_csv(_cpu_csv(tmp_path / "vm.csv"))
    broken = BacktestSeries(name="broken", usage=dict(good.usage), frame=pd.DataFrame({"nope": [1.0]}))
    spec = runner.MethodSpec(names=("vpa", "max"), refit_seconds=86_400, training={})
    stream = io.StringIO()
    replays = runner.replay_all(
        [broken, good], spec, small_config, False, None, ProgressReporter(2, stream=stream)
    )
    assert [r.name for r in replays] == ["broken", "vm"]
    assert replays[0].resources == {} and replays[0].errors[0].startswith(
        "series 'broken' failed: ValueError"
    )
    assert not replays[1].errors and replays[1].resources["cpu"].traces["max"].ok
    lines = stream.getvalue().splitlines()
    assert (
        lines[1].startswith("backtest: [1/2] broken done: 0 origins in ") and "1 error(s), RSS " in lines[1]
    )
    assert lines[3].startswith("backtest: [2/2] vm done: ") and ", RSS " in lines[3]


def test_ray_progress_lines() -> None:
    now = [0.0]
    stream = io.StringIO()
    reporter = ProgressReporter(3, stream=stream, clock=lambda: now[0])
    reporter.note("3 Ray tasks submitted")
    now[0] = 75.0
    reporter.done_remote("a", 12, seconds=70.2, worker=4242, peak_rss_mb=812.4)
    now[0] = 135.0
    reporter.waiting(2)
    reporter.done_remote("b", 0, errors=1)
    assert stream.getvalue().splitlines() == [
        "backtest: 3 Ray tasks submitted, elapsed 0s",
        "backtest: [1/3] a done: 12 origins in 1m10s, worker 4242 peak RSS 812 MB, elapsed 1m15s",
        "backtest: 1/3 series done, 2 running or queued, elapsed 2m15s",
        "backtest: [2/3] b done: 0 origins, 1 error(s), elapsed 2m15s",
    ]
