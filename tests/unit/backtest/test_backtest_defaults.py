"""Settings derived from the data (spacing, length), the exit-2 messages, progress lines, quiet TF."""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
import pytest

from mora_platform.backtest.defaults import (
    SettingsError,
    format_duration,
    no_origin_message,
    resolve_settings,
)
from mora_platform.backtest.engine import (
    BacktestConfig,
    BacktestSeries,
    SeriesExtent,
    planned_origins,
    series_extent,
)
from mora_platform.backtest.progress import ProgressReporter, format_elapsed
from mora_platform.models.tf_quiet import KerasRetracingFilter

START = pd.Timestamp("2026-01-01T00:00:00Z")


def extent(name: str, samples: int, spacing: str) -> SeriesExtent:
    step = pd.Timedelta(spacing)
    return SeriesExtent(name, START, START + (samples - 1) * step, step, samples)


def series(name: str, samples: int, spacing: str) -> BacktestSeries:
    index = pd.date_range(START, periods=samples, freq=pd.Timedelta(spacing))
    values = pd.Series(np.linspace(0.1, 0.2, samples), index=index)
    return BacktestSeries(name=name, usage={"cpu": values, "memory": values * 1e9})


def flags(settings_text: str) -> dict[str, str]:
    words = settings_text.split()
    return {words[k].lstrip("-"): words[k + 1] for k in range(0, 8, 2)}


@pytest.mark.parametrize(
    ("extents", "expected"),
    [
        # examples/online-boutique: 7 services, 426-537 rows at 15 s, experiments back to back
        (
            [extent("adservice", 426, "15s"), extent("frontend", 537, "15s")],
            {"warmup": "50min", "step": "5min", "horizon": "5min", "refit": "4h"},
        ),
        # the full shared set (2,515-3,066 rows per service): benchmarks/backtest_report.py's settings
        (
            [extent("adservice", 2515, "15s"), extent("frontend", 3066, "15s")],
            {"warmup": "1h", "step": "5min", "horizon": "5min", "refit": "4h"},
        ),
        # ten days of 1-minute samples (the synthetic fleet): the former fixed defaults
        (
            [extent("svc", 10 * 1440, "1min")],
            {"warmup": "24h", "step": "1h", "horizon": "1h", "refit": "24h"},
        ),
        # hourly samples for a month: one-sample horizon
        ([extent("svc", 720, "1h")], {"warmup": "24h", "step": "1h", "horizon": "1h", "refit": "24h"}),
        # ten samples: still origins, in whole samples
        ([extent("tiny", 10, "15s")], {"warmup": "1min", "step": "30s", "horizon": "30s", "refit": "24min"}),
    ],
)
def test_derived_settings_follow_spacing_and_length(
    extents: list[SeriesExtent], expected: dict[str, str]
) -> None:
    settings = resolve_settings(extents)
    assert flags(settings.flags()) == expected
    assert settings.derived == ("warmup", "step", "horizon", "refit") and settings.user_set == ()
    config = settings.config
    spacing = settings.scale.spacing
    assert config.horizon % spacing == pd.Timedelta(0) and config.warmup % spacing == pd.Timedelta(0)


@pytest.mark.parametrize(("samples", "spacing"), [(5, "15s"), (40, "15s"), (426, "15s"), (3 * 144, "10min")])
def test_derived_settings_leave_origins_on_the_shortest_series(samples: int, spacing: str) -> None:
    short, long = series("short", samples, spacing), series("long", 3 * samples, spacing)
    settings = resolve_settings([series_extent(short), series_extent(long)])  # type: ignore[list-item]
    assert len(planned_origins(short, settings.config)) >= 1
    assert len(planned_origins(long, settings.config)) > len(planned_origins(short, settings.config))


def test_user_settings_are_kept_and_the_rest_derived() -> None:
    settings = resolve_settings(
        [extent("a", 426, "15s")], horizon=pd.Timedelta("10min"), refit=pd.Timedelta("1h")
    )
    assert settings.config.horizon == pd.Timedelta("10min")
    assert settings.config.step == pd.Timedelta("10min")  # the step follows the horizon
    assert settings.refit == pd.Timedelta("1h")
    assert settings.derived == ("warmup", "step") and settings.user_set == ("horizon", "refit")
    assert settings.config.warmup == pd.Timedelta("50min")  # whole steps


def test_warmup_that_leaves_no_origin_names_the_flag_and_a_bound_that_works() -> None:
    data = [series("adservice", 426, "15s"), series("frontend", 537, "15s")]
    extents = [series_extent(s) for s in data]
    settings = resolve_settings(extents, warmup=pd.Timedelta("2D"))  # type: ignore[arg-type]
    assert all(len(planned_origins(s, settings.config)) == 0 for s in data)
    message = no_origin_message(settings)
    assert message.startswith("--warmup 48h leaves no origin: the longest series (frontend) is 2h14min15s")
    assert "15s spacing" in message
    bound = message.split("use --warmup <= ")[1].split()[0]
    assert bound == "2h9min15s"
    fits = BacktestConfig(step=pd.Timedelta("5min"), horizon=pd.Timedelta("5min"), warmup=pd.Timedelta(bound))
    assert len(planned_origins(data[1], fits)) == 1
    beyond = BacktestConfig(
        step=pd.Timedelta("5min"),
        horizon=pd.Timedelta("5min"),
        warmup=pd.Timedelta(bound) + pd.Timedelta("15s"),
    )
    assert len(planned_origins(data[1], beyond)) == 0


def test_horizon_that_leaves_no_origin_names_the_horizon() -> None:
    settings = resolve_settings([extent("a", 426, "15s")], horizon=pd.Timedelta("3h"))
    message = no_origin_message(settings)
    assert message.startswith("--horizon 3h leaves no origin")
    assert "use --horizon <= 56min30s" in message  # 1h46min30s - the 50 min warm-up
    # each too long on its own: both named, with the room they share
    both = resolve_settings([extent("a", 426, "15s")], horizon=pd.Timedelta("3h"), warmup=pd.Timedelta("2h"))
    assert no_origin_message(both).startswith("--warmup 2h and --horizon 3h leave no origin")
    assert "use --warmup + --horizon <= 1h46min15s" in no_origin_message(both)
    # a warm-up too long for the user's horizon: the warm-up is named
    one = resolve_settings(
        [extent("a", 426, "15s")], horizon=pd.Timedelta("10min"), warmup=pd.Timedelta("2h")
    )
    assert no_origin_message(one).startswith("--warmup 2h leaves no origin")
    assert "use --warmup <= 1h36min30s (or shorten --horizon 10min)" in no_origin_message(one)


def test_data_too_short_for_any_setting() -> None:
    settings = resolve_settings([extent("one", 1, "0s")])
    assert "too short to backtest with any --warmup / --horizon" in no_origin_message(settings)
    with pytest.raises(SettingsError):
        resolve_settings([])


@pytest.mark.parametrize("text", ["15s", "5min", "50min", "1h", "4h", "24h", "2h9min15s", "1h46min30s"])
def test_durations_are_printed_the_way_the_flags_read_them(text: str) -> None:
    value = pd.Timedelta(text)
    assert format_duration(value) == text and pd.Timedelta(format_duration(value)) == value


def test_progress_lines_are_throttled() -> None:
    now = [0.0]
    stream = io.StringIO()
    reporter = ProgressReporter(2, stream=stream, every=10.0, clock=lambda: now[0])
    callback = reporter.start(1, "cartservice", 30)
    for done in range(1, 31):
        now[0] += 1.0  # one origin a second: a line every 10 s, not one per origin
        callback(done, 30)
    reporter.done(1, "cartservice", 30)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "backtest: [1/2] cartservice: replaying 30 origins, elapsed 0s"
    assert lines[1:3] == [
        "backtest: [1/2] cartservice: 10/30 origins, elapsed 10s",
        "backtest: [1/2] cartservice: 20/30 origins, elapsed 20s",
    ]
    assert lines[3] == "backtest: [1/2] cartservice done: 30 origins in 30s, elapsed 30s"
    reporter.done_remote("frontend", 12, errors=1)
    assert (
        stream.getvalue().splitlines()[-1]
        == "backtest: [2/2] frontend done: 12 origins, 1 error(s), elapsed 30s"
    )
    assert format_elapsed(3725) == "1h02m05s" and format_elapsed(75.2) == "1m15s"


def test_keras_retracing_warning_is_filtered_others_are_not() -> None:
    keras_steps = logging.LogRecord(
        "tensorflow",
        logging.WARNING,
        __file__,
        1,
        "%d out of the last %d calls to %s triggered tf.function retracing.",
        (5, 14, "<function TensorFlowTrainer._make_function.<locals>.multi_step_on_iterator>"),
        None,
    )
    own = logging.LogRecord(
        "tensorflow",
        logging.WARNING,
        __file__,
        1,
        "5 out of the last 5 calls to <function my_step> triggered tf.function retracing.",
        None,
        None,
    )
    other = logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, "something else", None, None)
    keep = KerasRetracingFilter()
    assert not keep.filter(keras_steps) and keep.filter(own) and keep.filter(other)
