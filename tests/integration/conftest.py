"""Integration fixtures: a real SeaweedFS S3 server (auth on, free 127.0.0.1 ports) and the Online Boutique data.

The server is started once per session with a random access key / secret and stopped by PID at
the end, whatever the tests did (model manifests are signed with the session key of
``tests/conftest.py``). Its data is thrown away, so teardown does not wait for weed's
slow graceful exit (~16 s): SIGKILL follows SIGTERM after a few seconds.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from online_boutique import DataDirError, online_boutique_dir
from pydantic import SecretStr

from infra.local.processes import ProcessStartError
from infra.local.weed import WeedPorts, WeedServer
from mora_platform.settings import MoraSettings
from mora_platform.storage.object_store import ObjectStore

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_BUCKET = "mora-test"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Online Boutique CSVs: the subset in examples/ (or MORA_SHARED_DATA when set; see tests/helpers)."""
    try:
        return online_boutique_dir()
    except DataDirError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def weed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """A running ``weed server`` with S3 auth on; retried on fresh ports if a port was taken meanwhile."""
    root = tmp_path_factory.mktemp("weed")
    access_key = "test" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(24)
    server: WeedServer | None = None
    failures: list[str] = []
    for attempt in range(3):
        candidate = WeedServer(
            root / f"data-{attempt}",
            WeedPorts.free(),
            access_key,
            secret_key,
            log_path=root / f"weed-{attempt}.log",
            config_path=root / "identities.json",
        )
        try:
            candidate.start(timeout=60)
        except ProcessStartError as exc:
            failures.append(str(exc))
            continue
        server = candidate
        break
    if server is None:
        pytest.fail("the S3 test server did not start:\n" + "\n".join(failures), pytrace=False)
    try:
        yield server
    finally:
        server.stop(timeout=5)


@pytest.fixture(scope="session")
def s3_settings(weed_server: WeedServer, tmp_path_factory: pytest.TempPathFactory) -> MoraSettings:
    """Settings for the session's S3 server (bucket created); env files are ignored."""
    access_key, secret_key = weed_server.credentials()
    settings = MoraSettings(  # type: ignore[call-arg]
        _env_file=None,
        home=tmp_path_factory.mktemp("mora-home"),
        s3_endpoint_url=weed_server.endpoint_url,
        s3_bucket=TEST_BUCKET,
        s3_access_key=SecretStr(access_key),
        s3_secret_key=SecretStr(secret_key),
    )
    ObjectStore.from_settings(settings).ensure_bucket()
    return settings


@pytest.fixture(scope="session")
def object_store(s3_settings: MoraSettings) -> ObjectStore:
    """An ``ObjectStore`` on the session's S3 server and bucket."""
    return ObjectStore.from_settings(s3_settings)
