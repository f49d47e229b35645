"""One small S3 client for the whole platform: datasets, model artifacts, run outputs.

Everything speaks plain S3 with an explicit endpoint, so the local SeaweedFS server, MinIO and AWS
differ only in settings. Requests are signed with SigV4 and use path-style addressing (what
MinIO and SeaweedFS expect). Transient failures are retried twice over: botocore's "standard"
mode retries throttling and 5xx answers, and ``_call`` adds a backoff for connection errors,
because a local server that is still starting refuses connections for a moment.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import boto3
import pandas as pd
from boto3.exceptions import S3UploadFailedError
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from mora_platform.storage.errors import (
    BucketNotFoundError,
    ObjectNotFoundError,
    StorageAuthError,
    StorageError,
    StorageUnavailableError,
)

if TYPE_CHECKING:
    from pyarrow.fs import S3FileSystem

    from mora_platform.settings import MoraSettings

T = TypeVar("T")

_AUTH_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "Forbidden",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_DELETE_BATCH = 1000  # S3's limit for one DeleteObjects request


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object; ``etag`` (as listed, quotes included) changes whenever its bytes do,
    so readers can tell an unchanged object without reading it (``registry.servable``)."""

    key: str
    size: int
    last_modified: datetime | None
    etag: str | None = None


class ObjectStore:
    """A bucket on an S3-compatible endpoint, with retries and errors that say what to do.

    ``access_key=None`` means anonymous (unsigned) requests. ``list_page_size`` is the MaxKeys of
    each list request; lower it to exercise pagination.
    """

    def __init__(
        self,
        endpoint_url: str,
        bucket: str,
        access_key: str | None,
        secret_key: str | None,
        region: str = "us-east-1",
        *,
        max_attempts: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        backoff_seconds: float = 0.25,
        list_page_size: int = 1000,
    ) -> None:
        if not bucket:
            raise ValueError("bucket name is empty (set MORA_S3_BUCKET)")
        parts = urlsplit(endpoint_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(
                f"invalid S3 endpoint URL {endpoint_url!r}: expected http(s)://host:port (MORA_S3_ENDPOINT_URL)"
            )
        if (access_key is None) != (secret_key is None):
            raise ValueError("set both the S3 access key and the secret key, or neither (anonymous)")
        self.endpoint_url = endpoint_url.rstrip("/")
        self.bucket = bucket
        self.region = region
        self.list_page_size = list_page_size
        self._access_key = access_key
        self._secret_key = secret_key
        self._attempts = max(1, max_attempts)
        self._backoff = backoff_seconds
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._client = self._make_client(max_attempts=max_attempts)

    def __repr__(self) -> str:
        return f"ObjectStore(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r})"

    @classmethod
    def from_settings(cls, settings: MoraSettings, **options: Any) -> ObjectStore:
        """Build a store from ``MoraSettings`` (endpoint, bucket, credentials, region)."""
        access_key, secret_key = settings.s3_credentials()
        return cls(
            settings.s3_endpoint_url,
            settings.s3_bucket,
            access_key,
            secret_key,
            settings.s3_region,
            **options,
        )

    # -- clients -------------------------------------------------------------------------------

    def _make_client(self, *, max_attempts: int, connect_timeout: float | None = None) -> Any:
        config = Config(
            signature_version=UNSIGNED if self._access_key is None else "s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout if connect_timeout is not None else self._connect_timeout,
            read_timeout=self._read_timeout,
            # Flexible checksums are newer than some S3 servers; send them only where S3 requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            region_name=self.region,
            config=config,
        )

    def _call(
        self, what: str, fn: Callable[[], T], *, key: str | None = None, attempts: int | None = None
    ) -> T:
        """Run one request, retrying connection errors with exponential backoff; translate errors."""
        total = attempts or self._attempts
        delay = self._backoff
        for attempt in range(1, total + 1):
            try:
                return fn()
            except (BotoConnectionError, HTTPClientError) as exc:
                if attempt == total:
                    raise StorageUnavailableError(
                        f"{what}: cannot reach the S3 endpoint {self.endpoint_url} after {attempt} attempt(s) "
                        f"({type(exc).__name__}); is it running? (`mora stack up` starts the local one)"
                    ) from exc
                time.sleep(delay * (1.0 + random.random()))
                delay *= 2
            except ClientError as exc:
                raise self._translate(exc, what, key) from exc
            except S3UploadFailedError as exc:
                raise StorageError(f"{what}: upload to s3://{self.bucket}/{key} failed: {exc}") from exc
            except BotoCoreError as exc:
                raise StorageError(f"{what}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, exc: ClientError, what: str, key: str | None) -> StorageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _NOT_FOUND_CODES and key is not None:
            return ObjectNotFoundError(key, self.bucket)
        if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and key is None):
            return BucketNotFoundError(
                f"{what}: bucket {self.bucket!r} does not exist at {self.endpoint_url} "
                "(`mora stack up` creates it locally; elsewhere create it or set MORA_S3_BUCKET)"
            )
        if code in _AUTH_CODES or status == 403:
            who = "anonymous requests" if self._access_key is None else "the credentials"
            return StorageAuthError(
                f"{what}: the S3 endpoint {self.endpoint_url} refused {who} ({code or status}); "
                "check MORA_S3_ACCESS_KEY / MORA_S3_SECRET_KEY (the local stack keeps them in $MORA_HOME/stack.env, default ~/.mora)"
            )
        message = error.get("Message") or str(exc)
        return StorageError(f"{what}: S3 error {code or status} from {self.endpoint_url}: {message}")

    # -- bucket ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Fail fast, with a clear message, unless the endpoint answers and accepts the credentials."""
        client = self._make_client(max_attempts=1, connect_timeout=min(self._connect_timeout, 3.0))
        # A GET (not HEAD) so that a refusal carries its error code, e.g. SignatureDoesNotMatch.
        self._call("check", lambda: client.list_objects_v2(Bucket=self.bucket, MaxKeys=1), attempts=1)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet (safe to call concurrently and repeatedly)."""
        try:
            self._call("head bucket", lambda: self._client.head_bucket(Bucket=self.bucket))
            return
        except BucketNotFoundError:
            pass
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._call("create bucket", lambda: self._client.create_bucket(**kwargs))
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in {
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            }:
                return
            raise

    # -- objects --------------------------------------------------------------------------------

    def uri(self, key: str) -> str:
        """``s3://bucket/key`` for logs and for tools that take URIs."""
        return f"s3://{self.bucket}/{_check_key(key)}"

    def arrow_path(self, key: str = "") -> str:
        """``bucket/key`` as pyarrow's ``S3FileSystem`` (and Ray Tune's ``storage_path``) expects."""
        return f"{self.bucket}/{key.lstrip('/')}".rstrip("/")

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write one object (replacing it if it exists)."""
        key = _check_key(key)
        self._call("put", lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data), key=key)

    def get_bytes(self, key: str) -> bytes:
        """Read one object; ``ObjectNotFoundError`` if it does not exist."""
        key = _check_key(key)

        def fetch() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        return self._call("get", fetch, key=key)

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        key = _check_key(key)
        try:
            self._call("head", lambda: self._client.head_object(Bucket=self.bucket, Key=key), key=key)
        except ObjectNotFoundError:
            return False
        return True

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` (all pages), sorted by key."""

        def collect() -> list[ObjectInfo]:
            paginator = self._client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
            )
            found: list[ObjectInfo] = []
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(
                        ObjectInfo(
                            item["Key"],
                            int(item.get("Size", 0)),
                            item.get("LastModified"),
                            item.get("ETag") or None,
                        )
                    )
            return found

        return sorted(self._call("list", collect), key=lambda info: info.key)

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (all pages), sorted."""
        return [info.key for info in self.list_objects(prefix)]

    def has_prefix(self, prefix: str) -> bool:
        """Whether at least one object lies under ``prefix`` (one small request)."""
        response = self._call(
            "list", lambda: self._client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        )
        return bool(response.get("Contents"))

    def list_prefixes(self, prefix: str = "", delimiter: str = "/") -> list[str]:
        """The "directories" directly under ``prefix`` (S3 common prefixes), sorted, each ending in ``delimiter``.

        Some servers (SeaweedFS) keep listing a directory for a while after its last object went;
        callers that care use ``has_prefix``.
        """

        def collect() -> list[str]:
            paginator = self._client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                Delimiter=delimiter,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            return [entry["Prefix"] for page in pages for entry in page.get("CommonPrefixes", [])]

        return sorted(set(self._call("list prefixes", collect)))

    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing key is not an error."""
        key = _check_key(key)
        self._call("delete", lambda: self._client.delete_object(Bucket=self.bucket, Key=key), key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many were deleted. Refuses an empty prefix."""
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix (refusing to empty the whole bucket)")
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            objects = [{"Key": key} for key in batch]
            response = self._call(
                "delete objects",
                lambda objects=objects: self._client.delete_objects(  # type: ignore[misc]
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                ),
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StorageError(
                    f"delete_prefix {prefix!r}: {len(errors)} object(s) not deleted, "
                    f"first {first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}"
                )
        return len(keys)

    def put_file(self, key: str, path: str | Path) -> None:
        """Upload a local file (multipart for large files)."""
        key = _check_key(key)
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"put_file: {source} is not a file")
        self._call("put file", lambda: self._client.upload_file(str(source), self.bucket, key), key=key)

    def get_file(self, key: str, path: str | Path) -> Path:
        """Download an object to ``path`` (written to a temporary name, then renamed into place)."""
        key = _check_key(key)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            self._call(
                "get file", lambda: self._client.download_file(self.bucket, key, str(partial)), key=key
            )
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    # -- tables ---------------------------------------------------------------------------------

    def write_parquet(self, key: str, frame: pd.DataFrame) -> None:
        """Write a DataFrame as one Parquet object (pandas metadata kept, so it reads back equal)."""
        buffer = io.BytesIO()
        frame.to_parquet(buffer, engine="pyarrow")
        self.put_bytes(key, buffer.getvalue())

    def read_parquet(self, key: str) -> pd.DataFrame:
        """Read one Parquet object into a DataFrame."""
        return pd.read_parquet(io.BytesIO(self.get_bytes(key)), engine="pyarrow")

    def arrow_filesystem(self) -> S3FileSystem:
        """A pyarrow ``S3FileSystem`` for this endpoint (pyarrow ignores AWS_ENDPOINT_URL: pass it explicitly).

        Paths on it are ``bucket/key`` (see ``arrow_path``); Ray Tune takes it as ``storage_filesystem``.
        """
        from pyarrow import fs

        parts = urlsplit(self.endpoint_url)
        options: dict[str, Any] = {
            "endpoint_override": parts.netloc,
            "scheme": parts.scheme,
            "region": self.region,
            "connect_timeout": self._connect_timeout,
            "request_timeout": self._read_timeout,
            "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=self._attempts),
        }
        if self._access_key is None:
            options["anonymous"] = True
        else:
            options["access_key"] = self._access_key
            options["secret_key"] = self._secret_key
        return fs.S3FileSystem(**options)


def _check_key(key: str) -> str:
    if not key or key.startswith("/"):
        raise ValueError(f"invalid object key {key!r}: must be non-empty and not start with '/'")
    return key
