"""A real Ray cluster + Serve for the endpoint tests, and tiny trained models published to S3.

The Ray head is started by ``ray start --head --block`` on 127.0.0.1 with free ports and its own
temp dir, and stopped by signalling that one process (its SIGTERM handler stops every process it
started). Models are trained with a tiny config from the shared Online Boutique CSVs and published
with the real registry, under a registry prefix only these tests use.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_harness import (
    DRILL_REPLICAS,
    RELOAD_INTERVAL_S,
    SOURCE_SERVICES,
    TINY_CONFIG,
    Endpoint,
    RayHead,
    free_port,
    reset_ray_auth_state,
    stop_process,
    wait_until,
)

from mora_platform.registry import ModelRegistry


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A single-node Ray cluster on 127.0.0.1 (4 logical CPUs, no dashboard), stopped by PID.

    Four logical CPUs (whatever the machine has) so two replicas of each deployment (1.5 CPUs) and the
    single-replica secured app of ``test_bearer_token_auth`` (0.75) fit side by side.

        The cluster gets a token of its own (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN in this process and
        the cluster's environment), so a shared ``~/.ray/auth_token`` written by other clusters on
        the machine cannot lock the test out.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="mora-ray-", dir="/tmp"))
    gcs_port = free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    ports = {
        "port": gcs_port,
        "node-manager-port": free_port(),
        "object-manager-port": free_port(),
        "ray-client-server-port": free_port(),
        "dashboard-agent-listen-port": free_port(),
        "dashboard-agent-grpc-port": free_port(),
        "runtime-env-agent-port": free_port(),
        "metrics-export-port": free_port(),
    }
    command = [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
    command += [f"--{name}={port}" for name, port in ports.items()]
    command += [
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--num-cpus=4",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        patch.setenv("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        reset_ray_auth_state()
        log_path = temp_dir / "ray-start.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(
                lambda: process.poll() is None and b"Ray runtime started" in log_path.read_bytes(),
                90,
                "the Ray head to start",
            )
            yield RayHead(f"127.0.0.1:{gcs_port}", temp_dir)
        finally:
            stop_process(process)
            shutil.rmtree(temp_dir, ignore_errors=True)
    reset_ray_auth_state()  # back to the environment without this cluster's token


@pytest.fixture(scope="module")
def serve_registry(object_store: Any) -> ModelRegistry:
    """A registry under a prefix of its own, so other tests' models never show up here."""
    return ModelRegistry(object_store, prefix=f"serve-it-{secrets.token_hex(3)}")


@pytest.fixture(scope="session")
def training_frames(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """service -> the loaded frame of a few of its browsing experiments (what the models train on)."""
    from mora_platform.data.loaders import load_path

    root = tmp_path_factory.mktemp("serve-csv")
    frames: dict[str, Any] = {}
    for source in SOURCE_SERVICES:
        csv_dir = root / f"csv-{source}"
        csv_dir.mkdir()
        for path in sorted(shared_data_dir.glob(f"{source}_browsing_*.csv"))[:6]:
            shutil.copy(path, csv_dir / path.name)
        frames[source] = load_path(csv_dir).frame
    return frames


@pytest.fixture(scope="session")
def trained_bundles(
    training_frames: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """service -> bundle directory, two services trained with the tiny config on a few experiments."""
    from mora_platform.training.config import TrainingConfig
    from mora_platform.training.service_trainer import train_service

    root = tmp_path_factory.mktemp("serve-bundles")
    config = TrainingConfig.model_validate(TINY_CONFIG)
    bundles: dict[str, Path] = {}
    for source, frame in training_frames.items():
        out_dir = root / f"bundle-{source}"
        out_dir.mkdir()
        train_service(frame, source, config, out_dir)
        bundles[source] = out_dir
    return bundles


@pytest.fixture(scope="module")
def served_dataset(object_store: Any, shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A dataset in S3 holding every experiment of the served services (the training rows and more, as
    collection adds after a fit), named in each published manifest as `mora train` does."""
    from mora_platform.data.loaders import load_path
    from mora_platform.storage.datasets import DatasetStore

    csv_dir = tmp_path_factory.mktemp("serve-dataset")
    for source in SOURCE_SERVICES:
        for path in sorted(shared_data_dir.glob(f"{source}_*_replicas_*.csv")):
            shutil.copy(path, csv_dir / path.name)
    name = f"serve-it-{secrets.token_hex(3)}"
    DatasetStore(object_store).write(name, load_path(csv_dir).frame)
    return name


@pytest.fixture(scope="module")
def published(
    serve_registry: ModelRegistry, trained_bundles: dict[str, Path], served_dataset: str
) -> dict[str, str]:
    """service -> published version."""
    return {
        service: serve_registry.publish(
            service, bundle, metadata={"metrics": {"cpu": {"mae": 0.001}}, "dataset": served_dataset}
        )
        for service, bundle in trained_bundles.items()
    }


@pytest.fixture(scope="module")
def serve_endpoint(
    ray_head: RayHead, s3_settings: Any, serve_registry: ModelRegistry, published: dict[str, str]
) -> Iterator[Endpoint]:
    """The recommendation app deployed on the test cluster, HTTP on a free 127.0.0.1 port."""
    import ray
    from ray import serve

    from serve.app import ServeAppArgs, compose_app

    port = free_port()
    ray.init(address=ray_head.address, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = ServeAppArgs(registry_prefix=serve_registry.prefix, reload_interval_s=RELOAD_INTERVAL_S)
        settings = s3_settings.model_copy(update={"serve_token": None})
        app = compose_app(args, settings, replicas=DRILL_REPLICAS)  # two of each: the drill kills one
        serve.run(app, name="mora", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200, 60, "/healthz")
        yield Endpoint(url, serve_registry)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
