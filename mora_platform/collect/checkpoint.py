"""Per-service collection checkpoints: which chunks are in the dataset, and with which settings.

A chunk's rows are written first (as their own dataset part, idempotently), then the
checkpoint records the chunk; a crash in between only means the part is written again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Protocol


class BlobStore(Protocol):
    """The object-store calls a checkpoint needs (``ObjectStore`` satisfies it)."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...


class CheckpointMismatchError(ValueError):
    """The dataset was collected with other settings; continuing would mix or overlap rows."""


@dataclass
class ChunkRecord:
    """What one collected chunk holds: covered grid points and row counts."""

    first: int
    last: int
    rows: int
    missing_points: int
    gaps: int


@dataclass
class Checkpoint:
    """The collection state of one service in one dataset."""

    dataset: str
    service: str
    namespace: str
    step_seconds: int
    points_per_chunk: int
    query_fingerprint: str
    chunks: dict[str, ChunkRecord] = field(default_factory=dict)

    def covers(self, part: str, first: int, last: int) -> bool:
        """True when ``part`` was collected for at least the grid points ``first``..``last``."""
        record = self.chunks.get(part)
        return record is not None and record.first <= first and record.last >= last

    def ensure_compatible(
        self, *, namespace: str, step_seconds: int, points_per_chunk: int, fingerprint: str
    ) -> None:
        """Refuse to continue a collection made with other settings (clear message)."""
        differences = []
        if namespace != self.namespace:
            differences.append(f"namespace {self.namespace!r} (now {namespace!r})")
        if step_seconds != self.step_seconds:
            differences.append(f"step {self.step_seconds}s (now {step_seconds}s)")
        if points_per_chunk != self.points_per_chunk:
            differences.append(f"points_per_chunk {self.points_per_chunk} (now {points_per_chunk})")
        if fingerprint != self.query_fingerprint:
            differences.append("other PromQL queries")
        if differences:
            raise CheckpointMismatchError(
                f"dataset {self.dataset!r}, service {self.service!r} was collected with "
                + ", ".join(differences)
                + "; use another --dataset name or the original settings"
            )

    @property
    def total_rows(self) -> int:
        """Rows in all recorded chunks."""
        return sum(record.rows for record in self.chunks.values())

    def to_json(self) -> bytes:
        """Serialised form (sorted, stable)."""
        data = asdict(self)
        data["chunks"] = {name: asdict(self.chunks[name]) for name in sorted(self.chunks)}
        return json.dumps(data, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, source: str) -> Checkpoint:
        """Parse a stored checkpoint, naming ``source`` if it is damaged."""
        try:
            data = json.loads(raw)
            chunks = {name: ChunkRecord(**record) for name, record in data.pop("chunks").items()}
            return cls(**data, chunks=chunks)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CheckpointMismatchError(f"{source}: damaged collection checkpoint ({exc})") from None


class CheckpointStore:
    """Checkpoints at ``checkpoints/collect/{dataset}/{service}.json`` (outside ``datasets/``)."""

    def __init__(self, store: BlobStore, prefix: str = "checkpoints/collect") -> None:
        self._store = store
        self._prefix = prefix.rstrip("/")

    def key(self, dataset: str, service: str) -> str:
        """Object key of one service's checkpoint."""
        return f"{self._prefix}/{dataset}/{service}.json"

    def load(self, dataset: str, service: str) -> Checkpoint | None:
        """The stored checkpoint, or None before the first chunk."""
        key = self.key(dataset, service)
        if not self._store.exists(key):
            return None
        return Checkpoint.from_json(self._store.get_bytes(key), key)

    def save(self, checkpoint: Checkpoint) -> None:
        """Store (replace) a checkpoint."""
        self._store.put_bytes(self.key(checkpoint.dataset, checkpoint.service), checkpoint.to_json())
