"""The manifest of a published model version: what is in it and how it was made.

Written as ``manifest.json`` after every file of the bundle; the registry refuses any file
whose sha256 or size differs from what is listed here, and any manifest whose ``signature`` (an
HMAC by the platform's publisher, ``mora_platform.registry.signing``) does not verify.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import mora_platform

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Library name in the manifest -> distribution names that may provide it.
_LIBRARIES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-intel"),
    "keras": ("keras",),
    "prophet": ("prophet",),
    "pandas": ("pandas",),
    "numpy": ("numpy",),
}

# Metadata keys that get their own manifest field; any other key goes to ``extra``.
METADATA_FIELDS: tuple[str, ...] = ("metrics", "data_window", "fallbacks", "config")


class FileEntry(BaseModel):
    """One file of the bundle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the file's bytes")
    bytes: int = Field(ge=0, description="File size in bytes")


class CodeVersion(BaseModel):
    """Which code produced the bundle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mora_platform: str
    git_commit: str | None = None


class ManifestSignature(BaseModel):
    """The publisher's HMAC-SHA256 over the manifest's canonical JSON (see ``registry.signing``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["hmac-sha256"] = "hmac-sha256"
    key_id: str = Field(pattern=r"^[0-9a-f]{12}$", description="Fingerprint of the signing key (not the key)")
    value: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex HMAC-SHA256")


class Manifest(BaseModel):
    """Everything the registry and a reader need to trust and understand one version."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(MANIFEST_SCHEMA_VERSION, description="Manifest format version")
    service: str
    version: str
    created_at: datetime
    files: dict[str, FileEntry]
    code: CodeVersion
    libraries: dict[str, str | None] = Field(
        default_factory=dict, description="Library versions, None if absent"
    )
    metrics: dict[str, Any] = Field(default_factory=dict, description="Training metrics per target")
    data_window: dict[str, Any] = Field(
        default_factory=dict, description="Training data span (start, end, rows, ...)"
    )
    fallbacks: list[str] = Field(default_factory=list, description="Fallbacks used while training")
    config: dict[str, Any] = Field(default_factory=dict, description="Training configuration")
    extra: dict[str, Any] = Field(default_factory=dict, description="Other metadata given at publish time")
    signature: ManifestSignature | None = Field(
        None, description="The publisher's signature; None in manifests written before signing existed"
    )

    def to_json_bytes(self) -> bytes:
        """Stable, readable JSON."""
        return (self.model_dump_json(indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes) -> Manifest:
        return cls.model_validate_json(data)

    @property
    def total_bytes(self) -> int:
        return sum(entry.bytes for entry in self.files.values())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a bundle depends on (without importing them)."""
    versions: dict[str, str | None] = {}
    for name, distributions in _LIBRARIES.items():
        versions[name] = None
        for distribution in distributions:
            try:
                versions[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    versions["python"] = platform.python_version()
    return versions


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The source checkout's commit (env ``MORA_GIT_COMMIT`` wins), or None outside a git checkout."""
    override = os.environ.get("MORA_GIT_COMMIT")
    if override:
        return override.strip()
    source_dir = Path(mora_platform.__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=source_dir,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


def code_version() -> CodeVersion:
    return CodeVersion(mora_platform=mora_platform.__version__, git_commit=git_commit())


def split_metadata(metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(known manifest fields, everything else) from a publish ``metadata`` dict."""
    known = {key: metadata[key] for key in METADATA_FIELDS if metadata.get(key) is not None}
    extra = {key: value for key, value in metadata.items() if key not in METADATA_FIELDS}
    return known, extra
