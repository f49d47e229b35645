"""Where the registry keeps its bytes: any object with five methods (and an optional sixth).

``ObjectStore`` (S3) satisfies :class:`BlobBackend`; :class:`LocalBlobBackend` keeps the same
keys as files under a directory, for unit tests and for working offline.

A backend may also offer ``list_objects(prefix)``: every key with its size and a content
fingerprint (S3's ETag), in the same listing requests as ``list_keys``. ``list_blobs`` uses it
when present and falls back to ``list_keys`` (no fingerprints) otherwise, so that a reader can
tell "unchanged since I verified it" without downloading the bytes again
(``registry.servable``); a blob without a fingerprint has to be read to be trusted.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mora_platform.registry.errors import BlobNotFoundError

# Temp files written by LocalBlobBackend before their atomic rename; never listed as keys.
_TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


@runtime_checkable
class BlobBackend(Protocol):
    """The minimal object-storage interface the registry needs."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class BlobInfo:
    """One listed blob: its key, its size (-1: not known) and ``etag``, a fingerprint that changes
    whenever its bytes do (None: the backend cannot vouch for the bytes; read them to trust them)."""

    key: str
    size: int
    etag: str | None = None


def list_blobs(backend: BlobBackend, prefix: str) -> list[BlobInfo]:
    """Every blob under ``prefix`` with its size and fingerprint, sorted by key.

    One listing (``backend.list_objects``; on S3 one request per 1,000 keys) when the backend has
    it; otherwise ``list_keys`` without fingerprints. Listed items only need ``key`` and ``size``;
    an ``etag`` attribute, when there and not empty, is the fingerprint.
    """
    lister = getattr(backend, "list_objects", None)
    if not callable(lister):
        return [BlobInfo(key, -1) for key in backend.list_keys(prefix)]
    items: Iterable[Any] = lister(prefix)
    infos = []
    for item in items:
        etag = getattr(item, "etag", None)
        infos.append(BlobInfo(str(item.key), int(item.size), str(etag) if etag else None))
    return sorted(infos, key=lambda info: info.key)


def not_found_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "no such key" for the known backends."""
    types: list[type[BaseException]] = [BlobNotFoundError, FileNotFoundError]
    try:
        from mora_platform.storage.errors import ObjectNotFoundError
    except ImportError:  # storage layer absent: only local backends in use
        pass
    else:
        types.append(ObjectNotFoundError)
    return tuple(types)


class LocalBlobBackend:
    """Blobs as files under ``root``; each write lands atomically (temp file + ``os.replace``).

    ``list_objects`` fingerprints each file by its stat (inode, size, mtime, ctime) without reading
    it. A file changed within ``settle_s`` of the listing gets no fingerprint: file times are
    coarse (a kernel tick), so a same-size rewrite in place right after the listing could keep
    the same stat ("racy git"); readers then read the bytes, as they would without fingerprints.
    """

    def __init__(self, root: Path | str, *, settle_s: float = 0.05) -> None:
        self.root = Path(root)
        self.settle_s = settle_s

    def __repr__(self) -> str:
        return f"LocalBlobBackend({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(
                f"invalid blob key {key!r}: use non-empty '/'-separated names without '.' or '..'"
            )
        return self.root.joinpath(*parts)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFoundError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (a plain string prefix, as in S3), sorted."""
        if not self.root.is_dir():
            return []
        # Walk only the deepest directory the prefix fully names.
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*head.split("/")) if head else self.root
        if not start.is_dir():
            return []
        keys = []
        for path in start.rglob("*"):
            if path.is_file() and not _TEMP_NAME.match(path.name):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def list_objects(self, prefix: str) -> list[BlobInfo]:
        """``list_keys(prefix)`` with each file's size and stat fingerprint (no byte is read)."""
        settled_before = time.time_ns() - int(self.settle_s * 1e9)
        infos = []
        for key in self.list_keys(prefix):
            try:
                stat = self._path(key).stat()
            except FileNotFoundError:  # deleted since it was listed
                continue
            etag = None
            if max(stat.st_mtime_ns, stat.st_ctime_ns) < settled_before:
                etag = f"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}-{stat.st_ctime_ns:x}"
            infos.append(BlobInfo(key, stat.st_size, etag))
        return infos

    def delete(self, key: str) -> None:
        """Remove ``key`` (absent is fine) and any directories it leaves empty."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone): stop climbing
                break
            parent = parent.parent
