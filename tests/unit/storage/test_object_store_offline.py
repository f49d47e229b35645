"""ObjectStore behaviour that needs no server: argument checks, URIs, unreachable endpoints."""

from __future__ import annotations

import time

import pytest

from infra.local.processes import free_ports
from mora_platform.storage.errors import StorageAuthError, StorageError, StorageUnavailableError
from mora_platform.storage.object_store import ObjectStore


def _dead_endpoint() -> str:
    (port,) = free_ports(1)  # nothing listens there
    return f"http://127.0.0.1:{port}"


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="bucket name is empty"):
        ObjectStore("http://127.0.0.1:1", "", "k", "s")
    with pytest.raises(ValueError, match="both the S3 access key and the secret key"):
        ObjectStore("http://127.0.0.1:1", "b", "k", None)


def test_keys_and_uris() -> None:
    store = ObjectStore("http://127.0.0.1:9000/", "mora", "key-id", "top-secret-value")
    assert store.endpoint_url == "http://127.0.0.1:9000"
    assert store.uri("datasets/x/part.parquet") == "s3://mora/datasets/x/part.parquet"
    assert store.arrow_path("models/a") == "mora/models/a"
    assert store.arrow_path() == "mora"
    for bad in ("", "/leading"):
        with pytest.raises(ValueError, match="invalid object key"):
            store.uri(bad)
    assert "top-secret-value" not in repr(store) and "key-id" not in repr(store)


def test_arrow_filesystem_gets_the_endpoint_explicitly() -> None:
    store = ObjectStore("https://minio.example:9443", "mora", "k", "s", region="eu-west-1")
    filesystem = store.arrow_filesystem()
    assert filesystem.region == "eu-west-1"
    assert "minio.example:9443" in repr(filesystem.__reduce__())
    for bad in ("minio:9000", "ftp://host:21", "http://"):
        with pytest.raises(ValueError, match="invalid S3 endpoint URL"):
            ObjectStore(bad, "mora", "k", "s")


def test_check_fails_fast_on_an_unreachable_endpoint() -> None:
    endpoint = _dead_endpoint()
    store = ObjectStore(endpoint, "mora", "k", "s", connect_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="cannot reach the S3 endpoint") as caught:
        store.check()
    assert time.monotonic() - began < 10
    assert endpoint in str(caught.value) and "mora stack up" in str(caught.value)
    assert not isinstance(caught.value, StorageAuthError)


def test_requests_retry_then_report_unavailable() -> None:
    store = ObjectStore(
        _dead_endpoint(), "mora", "k", "s", max_attempts=2, backoff_seconds=0.01, connect_timeout=1.0
    )
    with pytest.raises(StorageUnavailableError, match="after 2 attempt"):
        store.get_bytes("a/b")
    with pytest.raises(StorageError):
        store.list_keys("a/")
    with pytest.raises(ValueError, match="non-empty prefix"):
        store.delete_prefix("")
