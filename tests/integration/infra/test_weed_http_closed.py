"""The S3 server's other HTTP ports are no way around its credentials (issue 14, item 2).

The session's ``weed server`` (started as ``mora stack up`` starts it: ``WeedServer``) with S3
auth on: the filer's HTTP API, which wrote any bucket without credentials, and the master's (which
deletes a bucket's data on ``/col/delete``) answer 404 to every path; the volume server refuses
writes without the master's JWT. S3 with the key pair keeps working, anonymous S3 is refused.
Every connection goes to 127.0.0.1.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import psutil
import pytest

from infra.local.weed import JWT_KEY_VARIABLES, WeedServer
from mora_platform.storage.errors import StorageError
from mora_platform.storage.object_store import ObjectStore

pytestmark = pytest.mark.integration


def test_filer_and_master_http_refuse_unauthenticated_writes_while_s3_works(
    weed_server: WeedServer, object_store: Any
) -> None:
    prefix = f"closed-{secrets.token_hex(4)}"
    key = f"{prefix}/calibration.json"
    object_store.put_bytes(key, b'{"cpu_offset_millicores": 45}')
    assert object_store.get_bytes(key) == b'{"cpu_offset_millicores": 45}'

    bucket = object_store.bucket
    filer = f"http://127.0.0.1:{weed_server.ports.filer}"
    master = f"http://127.0.0.1:{weed_server.ports.master}"
    volume = f"http://127.0.0.1:{weed_server.ports.volume}"
    forged = b'{"cpu_offset_millicores": 5012}'
    attempts = {
        "filer PUT over an object": ("PUT", f"{filer}/buckets/{bucket}/{key}", {"content": forged}),
        "filer PUT of a new object": (
            "PUT",
            f"{filer}/buckets/{bucket}/{prefix}/new.json",
            {"content": forged},
        ),
        "filer multipart POST": (
            "POST",
            f"{filer}/buckets/{bucket}/{prefix}/",
            {"files": {"file": ("posted.json", forged)}},
        ),
        "filer DELETE": ("DELETE", f"{filer}/buckets/{bucket}/{key}", {}),
        "filer GET": ("GET", f"{filer}/buckets/{bucket}/{key}", {}),
        "filer listing": (
            "GET",
            f"{filer}/buckets/{bucket}/{prefix}/",
            {"headers": {"Accept": "application/json"}},
        ),
        "master assign": ("GET", f"{master}/dir/assign", {}),
        "master collection delete": ("GET", f"{master}/col/delete?collection={bucket}", {}),
        "volume write without JWT": ("POST", f"{volume}/3,01637037d6", {"files": {"file": ("x", forged)}}),
    }
    answers: dict[str, int] = {}
    for name, (method, url, options) in attempts.items():
        try:
            answers[name] = httpx.request(method, url, timeout=10, **options).status_code
        except httpx.ConnectError:
            answers[name] = 0  # nothing listening is as good
    print("\nunauthenticated requests to weed's HTTP ports:", answers)
    for name, status in answers.items():
        if name.startswith(("filer", "master")):
            assert status in (0, 401, 403, 404), f"{name}: HTTP {status}"
        else:
            assert status in (0, 401, 403), f"{name}: HTTP {status}"

    # Nothing changed: the object is intact, nothing new appeared, the bucket's data is still there.
    assert object_store.get_bytes(key) == b'{"cpu_offset_millicores": 45}'
    assert sorted(object_store.list_keys(f"{prefix}/")) == [key]
    # S3 without the key pair is refused; with it, writes and deletes work.
    anonymous = ObjectStore(weed_server.endpoint_url, bucket, None, None, "us-east-1", max_attempts=1)
    with pytest.raises(StorageError):
        anonymous.put_bytes(f"{prefix}/anonymous.json", forged)
    object_store.put_bytes(f"{prefix}/second.json", b"{}")
    object_store.delete(f"{prefix}/second.json")
    assert sorted(object_store.list_keys(f"{prefix}/")) == [key]


def test_weed_runs_with_jwt_keys_that_are_not_on_its_command_line(weed_server: WeedServer) -> None:
    assert weed_server.record is not None
    command = " ".join(psutil.Process(weed_server.record.pid).cmdline())
    assert "-filer.disableHttp" in command and "-disableHttp" in command
    environment = weed_server.environment({"PATH": "/bin", "WEED_JWT_SIGNING_KEY": "old"})
    assert set(JWT_KEY_VARIABLES) <= set(environment) and environment["WEED_JWT_SIGNING_KEY"] != "old"
    for name in JWT_KEY_VARIABLES:
        assert len(environment[name]) == 64 and environment[name] not in command
    assert "jwt" not in command.lower()
