"""Time chunks of a collection, on a grid fixed to the epoch so re-runs hit the same chunks.

Evaluation points are multiples of the step since 1970; chunk ``k`` holds the points
``k * span`` .. ``(k + 1) * span - step`` with ``span = step * points_per_chunk``. Because the
boundaries never depend on ``--since``/``--until``, the same chunk always lands in the same
dataset part, and parts never overlap: re-running cannot duplicate rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, order=True)
class Chunk:
    """One chunk of the grid: first and last evaluation time (unix seconds, inclusive)."""

    start: int
    end: int

    @property
    def part(self) -> str:
        """The dataset part holding this chunk's rows."""
        return f"part-{format_compact(self.start)}-{format_compact(self.end)}"


@dataclass(frozen=True)
class ChunkWindow:
    """The part of a chunk a collection asks for: grid points ``first``..``last``, inclusive."""

    chunk: Chunk
    first: int
    last: int
    step: int

    @property
    def points(self) -> int:
        """Grid points in the window."""
        return 0 if self.last < self.first else (self.last - self.first) // self.step + 1


def plan_chunks(
    start: datetime, end: datetime, step_seconds: int, points_per_chunk: int
) -> list[ChunkWindow]:
    """The chunk windows covering ``[start, end]`` (grid points inside the interval only)."""
    if step_seconds < 1:
        raise ValueError(f"step must be at least 1 s, got {step_seconds}")
    if points_per_chunk < 1:
        raise ValueError(f"points_per_chunk must be at least 1, got {points_per_chunk}")
    start_s, end_s = start.timestamp(), end.timestamp()
    if end_s < start_s:
        raise ValueError(f"--until ({format_iso(end_s)}) is before --since ({format_iso(start_s)})")
    first = -(-int(start_s) // step_seconds) * step_seconds  # ceil to the grid
    if first < start_s:  # a fractional start just above a grid point
        first += step_seconds
    last = int(end_s) // step_seconds * step_seconds
    span = step_seconds * points_per_chunk
    windows: list[ChunkWindow] = []
    chunk_start = first // span * span
    while chunk_start <= last:
        chunk = Chunk(chunk_start, chunk_start + span - step_seconds)
        windows.append(ChunkWindow(chunk, max(first, chunk.start), min(last, chunk.end), step_seconds))
        chunk_start += span
    return windows


def format_compact(seconds: int | float) -> str:
    """``20260105T000000Z``: sortable, safe in object keys."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y%m%dT%H%M%SZ")


def format_iso(seconds: int | float) -> str:
    """``2026-01-05T00:00:00Z`` for messages."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
