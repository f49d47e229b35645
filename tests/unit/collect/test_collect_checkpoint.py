"""Collection checkpoints: round trip, coverage, refusing other settings."""

from __future__ import annotations

import pytest

from mora_platform.collect.checkpoint import (
    Checkpoint,
    CheckpointMismatchError,
    CheckpointStore,
    ChunkRecord,
)


class MemoryBlobs:
    """Just enough of an object store, in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def get_bytes(self, key: str) -> bytes:
        return self.objects[key]

    def exists(self, key: str) -> bool:
        return key in self.objects


def test_round_trip_and_coverage() -> None:
    blobs = MemoryBlobs()
    store = CheckpointStore(blobs)
    assert store.load("ds", "svc") is None
    checkpoint = Checkpoint("ds", "svc", "ns", 30, 100, "abc")
    checkpoint.chunks["part-a"] = ChunkRecord(first=0, last=2970, rows=100, missing_points=0, gaps=0)
    store.save(checkpoint)
    assert list(blobs.objects) == ["checkpoints/collect/ds/svc.json"]
    loaded = store.load("ds", "svc")
    assert loaded == checkpoint
    assert loaded is not None and loaded.total_rows == 100
    assert loaded.covers("part-a", 30, 2970)
    assert not loaded.covers("part-a", 0, 3000)
    assert not loaded.covers("part-b", 0, 30)


def test_other_settings_are_refused_with_the_differences() -> None:
    checkpoint = Checkpoint("ds", "svc", "ns", 30, 100, "abc")
    checkpoint.ensure_compatible(namespace="ns", step_seconds=30, points_per_chunk=100, fingerprint="abc")
    with pytest.raises(CheckpointMismatchError, match=r"step 30s \(now 60s\).*other PromQL"):
        checkpoint.ensure_compatible(namespace="ns", step_seconds=60, points_per_chunk=100, fingerprint="x")


def test_damaged_checkpoint_names_its_key() -> None:
    blobs = MemoryBlobs()
    blobs.objects["checkpoints/collect/ds/svc.json"] = b"{not json"
    with pytest.raises(CheckpointMismatchError, match=r"checkpoints/collect/ds/svc.json: damaged"):
        CheckpointStore(blobs).load("ds", "svc")
