"""Where the registry keeps its bytes: any object with five methods.

``ObjectStore`` (S3) satisfies :class:`BlobBackend`; :class:`LocalBlobBackend` keeps the same
keys as files under a directory, for unit tests and for working offline.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Protocol, runtime_checkable

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
    """Blobs as files under ``root``; each write lands atomically (temp file + ``os.replace``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

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
