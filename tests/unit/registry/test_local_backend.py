"""LocalBlobBackend: the filesystem stand-in for S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from mora_platform.registry import BlobBackend, BlobNotFoundError, LocalBlobBackend


def test_satisfies_protocol(tmp_path: Path) -> None:
    assert isinstance(LocalBlobBackend(tmp_path), BlobBackend)


def test_put_get_list_delete(tmp_path: Path) -> None:
    backend = LocalBlobBackend(tmp_path / "blobs")
    backend.put_bytes("models/a/v1/x.json", b"{}")
    backend.put_bytes("models/a/v1/sub/y.bin", b"\x00\x01")
    backend.put_bytes("models/ab/LATEST", b"v")
    assert backend.get_bytes("models/a/v1/sub/y.bin") == b"\x00\x01"
    assert backend.exists("models/a/v1/x.json")
    assert not backend.exists("models/a/v1")  # a "directory" is not a key
    # plain string prefixes, as in S3
    assert backend.list_keys("models/a") == [
        "models/a/v1/sub/y.bin",
        "models/a/v1/x.json",
        "models/ab/LATEST",
    ]
    assert backend.list_keys("models/a/") == ["models/a/v1/sub/y.bin", "models/a/v1/x.json"]
    assert backend.list_keys("nothing/") == []
    backend.delete("models/a/v1/sub/y.bin")
    backend.delete("models/a/v1/sub/y.bin")  # absent is fine
    assert not (tmp_path / "blobs/models/a/v1/sub").exists()  # empty dirs removed
    with pytest.raises(BlobNotFoundError, match=r"models/a/v1/sub/y\.bin"):
        backend.get_bytes("models/a/v1/sub/y.bin")


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    backend = LocalBlobBackend(tmp_path)
    backend.put_bytes("k/LATEST", b"one")
    backend.put_bytes("k/LATEST", b"two")
    assert backend.get_bytes("k/LATEST") == b"two"
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["LATEST"]


def test_temp_files_are_not_listed(tmp_path: Path) -> None:
    backend = LocalBlobBackend(tmp_path)
    backend.put_bytes("k/a", b"1")
    (tmp_path / "k" / ".a.tmp-0123456789ab").write_bytes(b"half")
    assert backend.list_keys("k/") == ["k/a"]


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_unsafe_keys_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        LocalBlobBackend(tmp_path).put_bytes(key, b"x")
