"""ObjectStore against the real SeaweedFS server: auth is enforced, bytes and Parquet round-trip, listing pages."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from pandas.testing import assert_frame_equal

from mora_platform.settings import MoraSettings
from mora_platform.storage.errors import (
    ObjectNotFoundError,
    StorageAuthError,
    StorageUnavailableError,
)
from mora_platform.storage.object_store import ObjectStore

pytestmark = pytest.mark.integration


def _unique(prefix: str) -> str:
    return f"tests/{prefix}-{secrets.token_hex(4)}/"


def _sample_frame(rows: int = 50, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cpu = rng.gamma(2.0, 0.05, rows)
    cpu[5] = np.nan
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=rows, freq="15s", tz="UTC"),
            "service": ["frontend"] * rows,
            "replica_count": rng.integers(1, 5, rows),
            "cpu_cores_value": cpu,
            "mem_bytes_value": rng.normal(2e8, 1e7, rows),
        }
    )


def test_wrong_secret_is_refused_with_signature_mismatch(
    s3_settings: MoraSettings, object_store: ObjectStore
) -> None:
    object_store.put_bytes("tests/auth/probe.txt", b"hello")
    access_key, _secret = s3_settings.s3_credentials()
    wrong = ObjectStore(s3_settings.s3_endpoint_url, s3_settings.s3_bucket, access_key, "not-the-secret")

    with pytest.raises(StorageAuthError, match="SignatureDoesNotMatch") as caught:
        wrong.get_bytes("tests/auth/probe.txt")
    cause = caught.value.__cause__
    assert isinstance(cause, ClientError)
    assert cause.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(StorageAuthError):
        wrong.put_bytes("tests/auth/intruder.txt", b"x")
    with pytest.raises(StorageUnavailableError, match="refused the credentials"):
        wrong.check()
    assert not object_store.exists("tests/auth/intruder.txt")


def test_unknown_access_key_is_refused(s3_settings: MoraSettings) -> None:
    stranger = ObjectStore(s3_settings.s3_endpoint_url, s3_settings.s3_bucket, "nobody", "nothing")
    with pytest.raises(StorageAuthError):
        stranger.list_keys("tests/")


def test_anonymous_access_gets_403(s3_settings: MoraSettings, object_store: ObjectStore) -> None:
    object_store.put_bytes("tests/auth/public.txt", b"secret data")
    url = f"{s3_settings.s3_endpoint_url}/{s3_settings.s3_bucket}/tests/auth/public.txt"
    assert httpx.get(url, timeout=10).status_code == 403
    assert httpx.put(url, content=b"overwrite", timeout=10).status_code == 403
    assert httpx.get(f"{s3_settings.s3_endpoint_url}/{s3_settings.s3_bucket}", timeout=10).status_code == 403

    anonymous = ObjectStore(s3_settings.s3_endpoint_url, s3_settings.s3_bucket, None, None)
    with pytest.raises(StorageAuthError, match="anonymous"):
        anonymous.get_bytes("tests/auth/public.txt")
    assert object_store.get_bytes("tests/auth/public.txt") == b"secret data"


def test_check_passes_with_the_right_credentials(object_store: ObjectStore) -> None:
    object_store.check()  # raises if unreachable or refused


def test_bytes_roundtrip_exists_and_delete(object_store: ObjectStore) -> None:
    key = _unique("bytes") + "blob.bin"
    payload = bytes(range(256)) * 40
    assert not object_store.exists(key)
    object_store.put_bytes(key, payload)
    assert object_store.exists(key)
    assert object_store.get_bytes(key) == payload
    object_store.put_bytes(key, b"replaced")
    assert object_store.get_bytes(key) == b"replaced"
    object_store.delete(key)
    assert not object_store.exists(key)
    with pytest.raises(ObjectNotFoundError, match=key):
        object_store.get_bytes(key)
    object_store.delete(key)  # deleting again is not an error


def test_parquet_roundtrip_through_store_and_arrow_filesystem(object_store: ObjectStore) -> None:
    frame = _sample_frame()
    key = _unique("parquet") + "frame.parquet"
    object_store.write_parquet(key, frame)
    assert_frame_equal(object_store.read_parquet(key), frame)

    filesystem = object_store.arrow_filesystem()
    through_arrow = pq.read_table(object_store.arrow_path(key), filesystem=filesystem).to_pandas()
    assert_frame_equal(through_arrow, frame)

    # and the other way: written by pyarrow's S3 filesystem, read by boto3
    other_key = _unique("parquet") + "arrow.parquet"
    pq.write_table(
        pq.read_table(object_store.arrow_path(key), filesystem=filesystem),
        object_store.arrow_path(other_key),
        filesystem=filesystem,
    )
    assert_frame_equal(object_store.read_parquet(other_key), frame)
    assert object_store.uri(other_key) == f"s3://{object_store.bucket}/{other_key}"


def test_list_keys_paginates_and_delete_prefix(s3_settings: MoraSettings) -> None:
    store = ObjectStore.from_settings(s3_settings, list_page_size=7)
    prefix = _unique("paging")
    keys = [f"{prefix}obj-{index:03d}" for index in range(25)]
    for key in reversed(keys):
        store.put_bytes(key, key.encode())
    outside = prefix.rstrip("/") + "-outside/keep"
    store.put_bytes(outside, b"keep")

    requests: list[str] = []
    store._client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **kwargs: requests.append("list")
    )
    assert store.list_keys(prefix) == sorted(keys)
    assert len(requests) == 4  # 25 keys at 7 per page
    assert store.list_prefixes(prefix.split("/")[0] + "/") and all(
        p.endswith("/") for p in store.list_prefixes("tests/")
    )

    assert store.delete_prefix(prefix) == 25
    assert store.list_keys(prefix) == []
    assert store.get_bytes(outside) == b"keep"
    with pytest.raises(ValueError, match="non-empty prefix"):
        store.delete_prefix("")


def test_put_file_and_get_file(object_store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "model.keras"
    source.write_bytes(np.random.default_rng(0).bytes(1_500_000))
    key = _unique("files") + "model.keras"
    object_store.put_file(key, source)
    target = object_store.get_file(key, tmp_path / "out" / "model.keras")
    assert target.read_bytes() == source.read_bytes()
    assert not list((tmp_path / "out").glob(".*.part"))
    with pytest.raises(ObjectNotFoundError):
        object_store.get_file(_unique("files") + "missing", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_ensure_bucket_creates_new_buckets_once(s3_settings: MoraSettings) -> None:
    access_key, secret_key = s3_settings.s3_credentials()
    for _ in range(3):  # several buckets: each one takes its own volumes on the server
        bucket = "fresh-" + secrets.token_hex(4)
        store = ObjectStore(s3_settings.s3_endpoint_url, bucket, access_key, secret_key)
        with pytest.raises(StorageUnavailableError, match="does not exist"):
            store.check()
        store.ensure_bucket()
        store.ensure_bucket()
        store.check()
        store.put_bytes("x", b"1")
        assert store.list_keys() == ["x"]
