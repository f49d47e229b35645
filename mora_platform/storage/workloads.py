"""The ``WorkloadState`` of each service of a dataset, as JSON beside the dataset's rows.

Layout: ``datasets/{name}/_workloads/{service}.json``: under the dataset's prefix, so deleting the
dataset deletes them too, and in a ``_``-prefixed folder, which Parquet readers (pyarrow's dataset
discovery) and the dataset layer's own listings (``service=`` folders, ``.parquet`` keys) skip.
One object per service, replaced whole by a single PUT (atomic on S3: a reader sees the old or the
new state, never a mix). JSON only: a state is data, never code.
"""

from __future__ import annotations

import json
from typing import Protocol

from pydantic import ValidationError

from mora_platform.recommend.workload import WORKLOAD_FORMAT, WorkloadState
from mora_platform.storage.datasets import DatasetStore
from mora_platform.storage.errors import ObjectNotFoundError, StorageError

WORKLOADS_FOLDER = "_workloads"


class WorkloadBlobs(Protocol):
    """The object-store calls used here (``ObjectStore`` satisfies it)."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def list_keys(self, prefix: str = "") -> list[str]: ...


class WorkloadFormatError(StorageError):
    """A stored workload state is not valid JSON of a ``WorkloadState`` (the message names its key)."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        super().__init__(f"{key}: not a valid workload state ({detail})")


def workloads_prefix(dataset: str) -> str:
    """``datasets/{dataset}/_workloads/``."""
    return f"{DatasetStore.dataset_prefix(dataset)}{WORKLOADS_FOLDER}/"


def workload_key(dataset: str, service: str) -> str:
    """``datasets/{dataset}/_workloads/{service}.json``."""
    if not isinstance(service, str) or not service or "/" in service or service != service.strip():
        raise ValueError(
            f"invalid service name {service!r}: must be non-empty, without '/' or surrounding spaces"
        )
    return f"{workloads_prefix(dataset)}{service}.json"


def write_workload(store: WorkloadBlobs, dataset: str, state: WorkloadState) -> str:
    """Store (replace) ``state`` for (``dataset``, ``state.service``); returns the object key."""
    key = workload_key(dataset, state.service)
    store.put_bytes(key, state.model_dump_json(indent=1).encode("utf-8"))
    return key


def read_workload(store: WorkloadBlobs, dataset: str, service: str) -> WorkloadState | None:
    """The stored state of (``dataset``, ``service``); None if there is none.

    Raises ``WorkloadFormatError`` (naming the key) for a damaged file or one of a newer format.
    """
    key = workload_key(dataset, service)
    try:
        raw = store.get_bytes(key)
    except ObjectNotFoundError:
        return None
    return parse_workload(raw, key)


def parse_workload(raw: bytes, key: str) -> WorkloadState:
    """A ``WorkloadState`` from stored JSON; ``key`` names the object in errors."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkloadFormatError(key, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WorkloadFormatError(key, f"expected a JSON object, got {type(data).__name__}")
    version = data.get("format")
    if isinstance(version, int) and version > WORKLOAD_FORMAT:
        raise WorkloadFormatError(
            key, f"format {version} is newer than this version reads ({WORKLOAD_FORMAT}); upgrade mora"
        )
    try:
        return WorkloadState.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'state'}: {err['msg']}" for err in exc.errors()[:3]
        )
        raise WorkloadFormatError(key, problems) from None


def list_workloads(store: WorkloadBlobs, dataset: str) -> list[str]:
    """The services of ``dataset`` with a stored workload state, sorted."""
    prefix = workloads_prefix(dataset)
    return sorted(
        key[len(prefix) : -len(".json")]
        for key in store.list_keys(prefix)
        if key.endswith(".json") and "/" not in key[len(prefix) :]
    )
