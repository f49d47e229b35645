"""A verified local copy of a published bundle: checked file by file, put in place whole.

``verify_local_bundle`` compares a directory with its manifest (no file missing, none extra, every
checksum equal); ``swap_into_place`` renames a completed staging directory over the destination so
that readers sharing the cache see the previous bundle or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from mora_platform.registry.errors import ArtifactIntegrityError
from mora_platform.registry.manifest import MANIFEST_NAME, Manifest, sha256_file


@dataclass(frozen=True)
class FetchedBundle:
    """A verified local copy of one published version."""

    service: str
    version: str
    path: Path
    manifest: Manifest
    cached: bool = False


def verify_local_bundle(directory: Path, manifest: Manifest | None = None) -> Manifest:
    """Check a local bundle against its manifest; raise ``ArtifactIntegrityError`` on any difference."""
    directory = Path(directory)
    if manifest is None:
        manifest_path = directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ArtifactIntegrityError("?", "?", MANIFEST_NAME, f"missing in {directory}")
        manifest = Manifest.from_json_bytes(manifest_path.read_bytes())
    present = {
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.is_file() and path.relative_to(directory).as_posix() != MANIFEST_NAME
    }
    unexpected = sorted(present - set(manifest.files))
    if unexpected:
        raise ArtifactIntegrityError(
            manifest.service, manifest.version, unexpected[0], "not listed in the manifest"
        )
    for name, entry in sorted(manifest.files.items()):
        if name not in present:
            raise ArtifactIntegrityError(
                manifest.service,
                manifest.version,
                name,
                "listed in the manifest but missing",
                expected=entry.sha256,
            )
        actual = sha256_file(directory / name)
        if actual != entry.sha256:
            raise ArtifactIntegrityError(
                manifest.service,
                manifest.version,
                name,
                "checksum mismatch",
                expected=entry.sha256,
                actual=actual,
            )
    return manifest


def matches_manifest(directory: Path, manifest: Manifest) -> bool:
    """True if ``directory`` holds exactly the bundle ``manifest`` describes, byte for byte."""
    try:
        return verify_local_bundle(directory) == manifest
    except (ArtifactIntegrityError, ValidationError, OSError):
        return False


def swap_into_place(staging: Path, dest: Path) -> None:
    """Rename ``staging`` to ``dest``, replacing an existing ``dest`` directory.

    Safe against other threads or processes filling the same ``dest``: whatever happens, no
    ``.old-`` directory is left behind, and ``dest`` is either the previous complete bundle or
    a new complete one.
    """
    if not dest.exists():
        try:
            os.rename(staging, dest)
            return
        except OSError:
            if not dest.exists():
                raise
            # Someone else put a bundle in place between our check and our rename.
    old = dest.with_name(f".{dest.name}.old-{secrets.token_hex(4)}")
    with contextlib.suppress(FileNotFoundError):  # moved away by a concurrent swap
        os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except OSError:
        if old.exists():
            try:
                os.rename(old, dest)
            except OSError:
                # A concurrent fetch already installed its bundle; ours and the old one go.
                shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
