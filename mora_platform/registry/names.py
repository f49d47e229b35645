"""What a service and a version may be called in the registry.

A service is a DNS-1123 label, as a Kubernetes Deployment's name is; a version is the UTC second of
its publish plus six hex digits, so versions sort by creation time as plain strings.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from pathlib import PurePosixPath

from mora_platform.registry.errors import InvalidServiceNameError, InvalidVersionError

MAX_SERVICE_NAME_LENGTH = 63

SERVICE_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def validate_service_name(service: str) -> str:
    """Return ``service`` if it is a DNS-1123 label (what a Kubernetes Deployment may be called)."""
    if not isinstance(service, str) or not service:
        raise InvalidServiceNameError(service, "must be a non-empty string")
    if len(service) > MAX_SERVICE_NAME_LENGTH:
        raise InvalidServiceNameError(service, f"longer than {MAX_SERVICE_NAME_LENGTH} characters")
    if not SERVICE_NAME_PATTERN.match(service):
        raise InvalidServiceNameError(
            service, "use lowercase letters, digits and '-', starting and ending with a letter or digit"
        )
    return service


def validate_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise InvalidVersionError(version)
    return version


def new_version(now: datetime | None = None) -> str:
    """A version string that sorts by creation time: UTC second, then microsecond (5 hex) + 1 random hex."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{now.microsecond:05x}{secrets.randbelow(16):x}"


def check_relative_name(name: str) -> bool:
    """True if ``name`` is a safe relative POSIX path (no traversal, no absolute path)."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and all(part not in ("", ".", "..") for part in path.parts)
