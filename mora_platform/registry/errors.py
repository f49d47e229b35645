"""Errors raised by the model registry, each with a message a user can act on."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class for registry errors."""


class InvalidServiceNameError(RegistryError, ValueError):
    """A service name that cannot be a Kubernetes object name / registry key."""

    def __init__(self, service: object, reason: str) -> None:
        self.service = service
        super().__init__(f"invalid service name {service!r}: {reason}")


class InvalidVersionError(RegistryError, ValueError):
    """A version string that is not of the registry's form."""

    def __init__(self, version: object) -> None:
        self.version = version
        super().__init__(
            f"invalid model version {version!r}: expected YYYYMMDDTHHMMSSZ-xxxxxx (6 lowercase hex digits)"
        )


class ModelNotFoundError(RegistryError, LookupError):
    """No published version (or not the requested one) for a service."""

    def __init__(self, service: str, version: str | None = None, detail: str | None = None) -> None:
        self.service = service
        self.version = version
        if version is None:
            message = f"no published model for service {service!r}"
        else:
            message = f"model version {version!r} of service {service!r} not found"
        super().__init__(f"{message}: {detail}" if detail else message)


class ArtifactIntegrityError(RegistryError):
    """A stored artifact does not match its manifest (tampered, truncated, missing or unexpected)."""

    def __init__(
        self,
        service: str,
        version: str,
        file: str,
        problem: str,
        *,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        self.service = service
        self.version = version
        self.file = file
        self.problem = problem
        self.expected = expected
        self.actual = actual
        message = f"{service}/{version}: file {file!r}: {problem}"
        if expected is not None or actual is not None:
            message += f" (manifest sha256 {expected or '-'}, stored sha256 {actual or '-'})"
        super().__init__(message)


class BlobNotFoundError(RegistryError, LookupError):
    """A key that does not exist in a blob backend."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no object at key {key!r}")
