"""`mora stack up` and `status` on the folder's shared stack; `stack down` is checked by its teardown.

What `up` left behind (owner-only credentials and identities, the endpoints in ``stack.env``), an S3
server with auth really on, `status`, a second `up` that starts nothing, and a second stack on the
same ports refused before anything starts. ``conftest.py`` then stops the stack with `mora stack down`
and checks every process of it is gone, no PID record is left, the head's address is dropped from
``stack.env`` (its credentials kept) and `status` says stopped.
"""

from __future__ import annotations

import stat

import pytest

from infra.local.envfile import read_env_file
from infra.local.processes import ProcessRecord
from mora_platform.storage.errors import StorageAuthError
from mora_platform.storage.object_store import ObjectStore

from .conftest import COMPONENTS, Stack, mora, plain_env

pytestmark = pytest.mark.integration


def test_stack_up_left_owner_only_credentials_and_a_second_up_starts_nothing(stack: Stack) -> None:
    assert stack.up_output.count("started") >= len(COMPONENTS)

    # stack.env: endpoints and credentials, owner-only; identities too
    env_file = stack.home / "stack.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((stack.home / "s3" / "identities.json").stat().st_mode) == 0o600
    values = read_env_file(env_file)
    assert values["MORA_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{stack.ports['s3_port']}"
    assert values["MORA_RAY_ADDRESS"] == f"127.0.0.1:{stack.ports['ray_port']}"
    assert values["MORA_RAY_DASHBOARD_URL"] == stack.dashboard
    secret = values["MORA_S3_SECRET_KEY"]
    assert len(secret) >= 32

    # the S3 server really has auth on, with the generated credentials
    endpoint, bucket = values["MORA_S3_ENDPOINT_URL"], values["MORA_S3_BUCKET"]
    store = ObjectStore(endpoint, bucket, values["MORA_S3_ACCESS_KEY"], secret)
    store.put_bytes("probe", b"ok")
    assert store.get_bytes("probe") == b"ok"
    with pytest.raises(StorageAuthError):
        ObjectStore(endpoint, bucket, None, None).get_bytes("probe")

    status = stack.mora(["stack", "status"])
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("running") == len(COMPONENTS), status.stdout
    assert "anonymous refused" in status.stdout and "GCS healthy" in status.stdout
    records = {name: stack.record(name) for name in COMPONENTS}
    assert len(stack.pids()) > 3  # weed + ray start + gcs_server, raylet, dashboard, prometheus ...

    # a second `up` starts nothing
    again = stack.mora(["stack", "up", "--prometheus"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == len(COMPONENTS), again.stdout
    assert {name: ProcessRecord.load(stack.home / "run" / f"{name}.json") for name in COMPONENTS} == records

    # a taken port: a second stack on the same S3 port is refused before anything starts
    other = stack.work / "other"
    other.mkdir()
    other_env = plain_env(other / "user") | {"MORA_HOME": str(other / ".mora"), "COLUMNS": "300"}
    other_env |= {f"MORA_STACK_{name.upper()}": str(port) for name, port in stack.ports.items()}
    clash = mora(["stack", "up"], other_env, other)
    assert clash.returncode == 2
    message = " ".join(clash.stderr.split())
    assert f"port {stack.ports['s3_port']} (s3)" in message
    assert "--port s3=N" in message and "MORA_STACK_S3_PORT" in message
    assert not list((other / ".mora" / "run").glob("*.json"))

    # no secret ever printed
    for output in (stack.up_output, status.stdout + status.stderr, again.stdout + again.stderr):
        assert secret not in output
    assert secret not in clash.stdout + clash.stderr
