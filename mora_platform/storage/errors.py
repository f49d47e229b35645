"""Errors raised by the object-store and dataset layers, each with a message a user can act on."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for every storage failure."""


class ObjectNotFoundError(StorageError):
    """A key that was asked for does not exist in the bucket."""

    def __init__(self, key: str, bucket: str | None = None) -> None:
        self.key = key
        self.bucket = bucket
        where = f"s3://{bucket}/{key}" if bucket else key
        super().__init__(f"object not found: {where}")


class StorageUnavailableError(StorageError):
    """The endpoint cannot be reached (down, wrong URL, timeouts) or the bucket is missing."""


class StorageAuthError(StorageUnavailableError):
    """The endpoint answered but refused the credentials (wrong key/secret, anonymous access).

    A subclass of ``StorageUnavailableError``: for a caller the storage is unusable either way.
    """


class DatasetNotFoundError(StorageError):
    """No dataset of that name exists under ``datasets/``."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"dataset {name!r} not found (import it with `mora data import PATH --dataset {name}`)"
        )


class ServiceNotInDatasetError(StorageError):
    """The dataset exists but holds no data for that service."""

    def __init__(self, name: str, service: str, available: list[str] | None = None) -> None:
        self.name = name
        self.service = service
        self.available = list(available or [])
        known = ", ".join(self.available) if self.available else "none"
        super().__init__(f"service {service!r} not in dataset {name!r} (services: {known})")


class BucketNotFoundError(StorageUnavailableError):
    """The endpoint answered but the configured bucket does not exist."""
