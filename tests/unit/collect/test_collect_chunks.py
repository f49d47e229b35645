"""The chunk grid: fixed to the epoch, never overlapping, within Prometheus' point limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mora_platform.collect.chunks import format_compact, plan_chunks
from mora_platform.collect.timeparse import parse_duration, parse_time

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def test_chunks_tile_the_range_without_overlap() -> None:
    windows = plan_chunks(T0 + timedelta(seconds=7), T0 + timedelta(hours=3), 30, 100)
    assert windows[0].first == int(T0.timestamp()) + 30  # first grid point at or after the start
    assert windows[-1].last == int((T0 + timedelta(hours=3)).timestamp())
    points = [p for w in windows for p in range(w.first, w.last + 1, 30)]
    assert points == list(range(windows[0].first, windows[-1].last + 1, 30))
    assert all(w.points <= 100 for w in windows)
    assert all(w.chunk.end - w.chunk.start == 99 * 30 for w in windows)


def test_chunk_boundaries_do_not_depend_on_the_requested_range() -> None:
    a = plan_chunks(T0, T0 + timedelta(hours=5), 30, 120)
    b = plan_chunks(T0 + timedelta(minutes=47), T0 + timedelta(hours=9), 30, 120)
    common = {w.chunk for w in a} & {w.chunk for w in b}
    assert len(common) >= 3
    assert {w.chunk.part for w in a if w.chunk in common} == {w.chunk.part for w in b if w.chunk in common}


def test_part_names_are_sortable_utc_stamps() -> None:
    window = plan_chunks(T0, T0 + timedelta(minutes=1), 30, 10)[0]
    assert (
        window.chunk.part == f"part-{format_compact(window.chunk.start)}-{format_compact(window.chunk.end)}"
    )
    assert format_compact(T0.timestamp()) == "20260105T000000Z"


def test_until_before_since_is_refused() -> None:
    with pytest.raises(ValueError, match="before --since"):
        plan_chunks(T0, T0 - timedelta(hours=1), 30, 10)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("7d", 604800), ("1h30m", 5400), ("15", 15), ("500ms", 0.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7x", "1h 30m", "-5s", "0s"])
def test_bad_durations_are_named(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_times_relative_absolute_and_unix() -> None:
    now = T0 + timedelta(days=10)
    assert parse_time("now", now) == now
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("2026-01-05T00:00:00Z", now) == T0
    assert parse_time("2026-01-05T00:00:00", now) == T0
    assert parse_time(str(int(T0.timestamp())), now) == T0
    with pytest.raises(ValueError, match="invalid time 'yesterday'"):
        parse_time("yesterday", now)
