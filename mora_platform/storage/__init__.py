"""Object storage: the S3 client (``ObjectStore``) and named datasets on top of it (``DatasetStore``)."""

from __future__ import annotations

from mora_platform.storage.datasets import DatasetStore, ServiceSummary
from mora_platform.storage.errors import (
    BucketNotFoundError,
    DatasetNotFoundError,
    ObjectNotFoundError,
    ServiceNotInDatasetError,
    StorageAuthError,
    StorageError,
    StorageUnavailableError,
)
from mora_platform.storage.object_store import ObjectInfo, ObjectStore

__all__ = [
    "BucketNotFoundError",
    "DatasetNotFoundError",
    "DatasetStore",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "ServiceNotInDatasetError",
    "ServiceSummary",
    "StorageAuthError",
    "StorageError",
    "StorageUnavailableError",
]
