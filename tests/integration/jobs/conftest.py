"""A real local Ray head (dashboard + Jobs API on free 127.0.0.1 ports) and fleet datasets on S3.

The head is ``infra.local.ray_head.RayHead`` (``ray start --head --block``), stopped by its PID,
started exactly as ``mora stack up`` starts it: this process's PATH untouched (RayHead itself puts the
interpreter's bin/ first, so a job's ``python`` entrypoint is the project's Python) and ``MORA_HOME``
pointing at a home whose ``stack.env`` holds the test S3 settings, so jobs find their credentials
without any in their runtime_env. Like the stack's head it runs with Ray's token authentication and
listens on 127.0.0.1 only; its token is in ``{home}/ray_auth_token`` and this process (and its
children: ``mora tune``, ``ray job submit``) has RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH, as
the README tells a shell to.
Datasets get unique service names so the shared ``models/`` prefix never mixes with other tests.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.local.envfile import stack_env_path, update_env_file
from infra.local.ray_head import RayHead, RayPorts, reset_ray_auth_cache, token_path
from mora_platform.settings import MoraSettings

#: A tiny training config (seconds per service); jobs get it through --config-json.
TINY_CONFIG: dict[str, Any] = {
    "seq_len": 6,
    "lstm": {"units": [4], "dense_units": 0, "epochs": 2, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 12, "weekly_seasonality": False},
}


@dataclass(frozen=True)
class FleetCluster:
    head: RayHead
    settings: MoraSettings
    home: Path


@pytest.fixture(scope="session")
def fleet_cluster(s3_settings: MoraSettings) -> Iterator[FleetCluster]:
    """A 2-CPU Ray head with dashboard; settings pointing at it and at the test S3 server."""
    temp = Path(tempfile.mkdtemp(prefix="mora-fleet-", dir="/tmp"))
    home = temp / "home"
    key, secret = s3_settings.s3_credentials()
    update_env_file(
        stack_env_path(home),
        {
            "MORA_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url,
            "MORA_S3_BUCKET": s3_settings.s3_bucket,
            "MORA_S3_ACCESS_KEY": key or "",
            "MORA_S3_SECRET_KEY": secret or "",
        },
    )
    head = RayHead(
        RayPorts.free(),
        temp / "ray.log",
        temp_dir=temp / "ray",
        num_cpus=2,
        extra_env={"MORA_HOME": str(home)},
        auth_token_path=token_path(home),
    )
    with pytest.MonkeyPatch.context() as patch:
        # Every Ray client of this process (Jobs API, ray.init) and its children sends the head's token.
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN_PATH", str(token_path(home)))
        patch.delenv("RAY_AUTH_TOKEN", raising=False)
        head.start(timeout=120)
        reset_ray_auth_cache()
        settings = s3_settings.model_copy(
            update={"ray_dashboard_url": head.dashboard_url, "ray_address": head.address, "home": home}
        )
        try:
            yield FleetCluster(head=head, settings=settings, home=home)
        finally:
            head.stop(timeout=30)
    reset_ray_auth_cache()


@dataclass(frozen=True)
class FleetDataset:
    name: str
    services: list[str]


def write_fleet_dataset(
    object_store: Any, n_services: int, *, days: float = 0.6, seed: int = 7
) -> FleetDataset:
    """Synthetic services at 5-minute steps under unique names, written to ``datasets/{name}/``."""
    from mora_platform.data.schema import EXPERIMENT_ID, SERVICE
    from mora_platform.data.synthetic import generate_fleet
    from mora_platform.storage.datasets import DatasetStore

    token = secrets.token_hex(3)
    frame = generate_fleet(n_services, days=days, step_seconds=300, seed=seed)
    renames = {old: f"fleet-{token}-{i}" for i, old in enumerate(sorted(frame[SERVICE].unique()))}
    frame[SERVICE] = frame[SERVICE].map(renames)
    frame[EXPERIMENT_ID] = "synthetic-" + frame[SERVICE]
    name = f"fleet-test-{token}"
    DatasetStore(object_store).write(name, frame)
    return FleetDataset(name=name, services=sorted(renames.values()))
