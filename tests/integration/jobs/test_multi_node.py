"""Two Ray nodes on this machine: training, Tune trials and the Serve model replicas run on the second.

The head is ``infra.local.ray_head.RayHead`` as in the other jobs tests (token auth, free ports, its
own temp dir and MORA_HOME holding ``stack.env``), with one CPU and ``MORA_TRAIN_RESOURCES`` naming a
custom resource that only the second node offers, as a cluster's head would be configured. The second
node is ``ray start --address=HEAD --block`` with its own temp dir, working directory and MORA_HOME
(empty), its S3 settings and signing key in its environment (as a Kubernetes pod gets them from
secrets) and ``--resources`` offering that custom resource: every training task and Tune trial must land
there, and whatever they need from the head comes through Ray (the job's packaged working dir) or S3.

Both nodes run with Ray's multi-node switch on (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1``): with the
stack's loopback-only switch a second node cannot join (``ray start --address`` refuses, and the node
would reach the GCS at the machine's address). So this throw-away cluster's GCS and raylets listen on
the machine's address for the test's duration, behind the cluster's own token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TINY_CONFIG, FleetDataset, write_fleet_dataset

from infra.local.envfile import stack_env_path, update_env_file
from infra.local.processes import ProcessRecord, find_executable, free_ports, log_tail, spawn, stop
from infra.local.ray_head import RayHead, RayPorts, head_environment, reset_ray_auth_cache, token_path
from mora_platform.cli.fleet import jobs_client, retrain_entrypoint, submit_job
from mora_platform.orchestration import new_run_id
from mora_platform.registry import ModelRegistry
from mora_platform.settings import MoraSettings

pytestmark = pytest.mark.integration

#: The custom resource only the second node offers; the head's MORA_TRAIN_RESOURCES asks for it.
WORKER_RESOURCE = "mora_multinode_worker"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
CONTEXT = {"load_users": 30, "replica_count": 2, "scenario": "synthetic"}


@dataclass(frozen=True)
class TwoNodes:
    head: RayHead
    worker: ProcessRecord
    head_node_id: str
    worker_node_id: str
    settings: MoraSettings
    worker_home: Path
    worker_temp: Path
    worker_log: Path


def _worker_node_command(head: RayHead, temp_dir: Path) -> list[str]:
    """``ray start`` joining ``head`` with its own ports, worker-port window and temp dir."""
    manager, objects, agent, agent_grpc, runtime_env, metrics = free_ports(6)
    return [
        str(find_executable("ray")),
        "start",
        "--block",
        f"--address={head.address}",
        "--node-ip-address=127.0.0.1",
        f"--node-manager-port={manager}",
        f"--object-manager-port={objects}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        "--min-worker-port=0",  # workers on ports the OS picks: no window shared with another head
        "--max-worker-port=0",
        "--num-cpus=2",
        f"--resources={json.dumps({WORKER_RESOURCE: 2})}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]


def _worker_node_env(settings: MoraSettings, home: Path, token: Path) -> dict[str, str]:
    """The second node's environment: no MORA_* of this process but its own home, S3 and key."""
    key, secret = settings.s3_credentials()
    env = {k: v for k, v in head_environment(dict(os.environ)).items() if not k.startswith(("MORA_", "RAY_"))}
    env.update(
        {
            "MORA_HOME": str(home),
            "MORA_S3_ENDPOINT_URL": settings.s3_endpoint_url,
            "MORA_S3_BUCKET": settings.s3_bucket,
            "MORA_S3_ACCESS_KEY": key or "",
            "MORA_S3_SECRET_KEY": secret or "",
            "MORA_SIGNING_KEY": os.environ["MORA_SIGNING_KEY"],
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    return env


@pytest.fixture(scope="module")
def two_nodes(s3_settings: MoraSettings) -> Iterator[TwoNodes]:
    """A 1-CPU head and a 2-CPU second node (the only one with WORKER_RESOURCE); this process connected."""
    import ray

    temp = Path(tempfile.mkdtemp(prefix="mora-2n-", dir="/tmp"))
    home, worker_home, worker_dir = temp / "home", temp / "worker-home", temp / "worker"
    worker_home.mkdir()
    worker_dir.mkdir()
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
        dataclasses.replace(RayPorts.free(), min_worker=0, max_worker=0),
        temp / "ray.log",
        temp_dir=temp / "ray",
        num_cpus=1,
        extra_env={
            "MORA_HOME": str(home),
            "MORA_TRAIN_RESOURCES": json.dumps({WORKER_RESOURCE: 1}),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        },
        auth_token_path=token_path(home),
    )
    worker: ProcessRecord | None = None
    worker_log, worker_temp = temp / "worker.log", temp / "ray-worker"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN_PATH", str(token_path(home)))
        patch.delenv("RAY_AUTH_TOKEN", raising=False)
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
        from ray._private import ray_constants

        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # another test may have set it off
        try:
            head.start(timeout=120)
            token = worker_dir / "ray_auth_token"  # the node's own copy: nothing read from the head's home
            shutil.copy(token_path(home), token)
            os.chmod(token, 0o600)
            worker = spawn(
                "ray-worker-node",
                _worker_node_command(head, worker_temp),
                worker_log,
                env=_worker_node_env(s3_settings, worker_home, token),
                cwd=worker_dir,
            )
            reset_ray_auth_cache()
            ray.init(address=head.address, log_to_driver=False)
            deadline = time.monotonic() + 90
            nodes: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                nodes = [node for node in ray.nodes() if node["Alive"]]
                if len(nodes) == 2:
                    break
                assert worker.is_alive(), f"the second node exited:\n{log_tail(worker_log, 40)}"
                time.sleep(0.5)
            assert len(nodes) == 2, f"the second node never joined:\n{log_tail(worker_log, 40)}"
            (second,) = [n for n in nodes if WORKER_RESOURCE in n["Resources"]]
            (first,) = [n for n in nodes if WORKER_RESOURCE not in n["Resources"]]
            settings = s3_settings.model_copy(
                update={"ray_dashboard_url": head.dashboard_url, "ray_address": head.address, "home": home}
            )
            yield TwoNodes(
                head=head,
                worker=worker,
                head_node_id=first["NodeID"],
                worker_node_id=second["NodeID"],
                settings=settings,
                worker_home=worker_home,
                worker_temp=worker_temp,
                worker_log=worker_log,
            )
        finally:
            ray.shutdown()
            if worker is not None:
                stop(worker, 30)
            head.stop(timeout=30)
            shutil.rmtree(temp, ignore_errors=True)
    reset_ray_auth_cache()


def _run_job(
    nodes: TwoNodes, entrypoint: str, run_id: str, kind: str, timeout: float = 150.0
) -> tuple[str, str]:
    """Submit through the Jobs API as `mora retrain` / `mora tune` do; (ray job id, logs) once it SUCCEEDED."""
    client = jobs_client(nodes.settings)
    job_id = submit_job(nodes.settings, entrypoint, run_id, kind)
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            break
        time.sleep(0.5)
    logs = client.get_job_logs(job_id)
    if status not in TERMINAL:
        client.stop_job(job_id)
    assert status == "SUCCEEDED", f"{kind} job {job_id}: {status}; log tail:\n{logs[-3000:]}"
    return str(client.get_job_info(job_id).job_id), logs


@dataclass(frozen=True)
class FleetRun:
    dataset: FleetDataset
    run_id: str
    logs: str
    seconds: float


@pytest.fixture(scope="module")
def fleet_run(two_nodes: TwoNodes, object_store: Any) -> FleetRun:
    """`mora retrain`'s job (Jobs API, the repository as packaged working dir) over two services."""
    started = time.monotonic()
    dataset = write_fleet_dataset(object_store, 2, seed=21)
    run_id = new_run_id("retrain")
    entrypoint = retrain_entrypoint(
        dataset=dataset.name,
        services=",".join(dataset.services),
        run_id=run_id,
        num_cpus=1,
        max_retries=1,
        epochs=1,
        config_json=json.dumps(TINY_CONFIG),
        no_tuned=True,
    )
    _, logs = _run_job(two_nodes, entrypoint, run_id, "retrain")
    return FleetRun(dataset, run_id, logs, time.monotonic() - started)


def test_fleet_job_trains_on_the_second_node_and_publishes_to_s3(
    two_nodes: TwoNodes, fleet_run: FleetRun, object_store: Any
) -> None:
    assert "FLEET RESULT: 2 succeeded, 0 failed; exit 0" in fleet_run.logs, fleet_run.logs[-3000:]
    assert "no node of the cluster offers" not in fleet_run.logs

    # Every service trained on the second node and published to S3, where the test reads it back.
    summary = json.loads(object_store.get_bytes(f"runs/{fleet_run.run_id}/summary.json"))
    registry = ModelRegistry(object_store)
    assert sorted(row["service"] for row in summary["services"]) == fleet_run.dataset.services
    for row in summary["services"]:
        assert row["status"] == "published", row
        assert row["node_id"] == two_nodes.worker_node_id, (row["node_id"], two_nodes.head_node_id)
        assert row["version"] == registry.latest_version(row["service"])
        manifest = registry.read_manifest(row["service"], row["version"])  # signature verified
        assert manifest.extra["run_id"] == fleet_run.run_id
    # They landed there because they asked for the head's MORA_TRAIN_RESOURCES, not by chance.
    from ray.util.state import list_tasks

    for service in fleet_run.dataset.services:
        tasks = list_tasks(
            address=two_nodes.head.dashboard_url,
            filters=[("name", "=", f"retrain:{service}")],
            detail=True,
            raise_on_missing_output=False,
        )
        assert tasks and all(task.required_resources.get(WORKER_RESOURCE) == 1 for task in tasks), tasks
        assert {task.node_id for task in tasks} == {two_nodes.worker_node_id}

    # The code came to the second node as the job's package (unpacked in its own temp dir) and its
    # home stayed empty: its S3 settings and signing key came from its environment.
    packages = list(two_nodes.worker_temp.glob("session_*/runtime_resources/working_dir_files/*/jobs"))
    assert packages, "the job's working dir was not unpacked on the second node"
    assert list(two_nodes.worker_home.iterdir()) == []
    print(f"\nmulti-node timings: retrain job {fleet_run.seconds:.1f}s")


def test_tune_trials_run_on_the_second_node(
    two_nodes: TwoNodes, fleet_run: FleetRun, object_store: Any
) -> None:
    """A tiny search (2 trials, 1 epoch): its trials ask for the same resource, so they run there too."""
    from ray.util.state import list_actors

    started = time.monotonic()
    service = fleet_run.dataset.services[0]
    run_id = new_run_id("tune")
    base = {k: v for k, v in TINY_CONFIG.items() if k != "lstm"}
    entrypoint = shlex.join(
        [
            "python",
            "jobs/tune_fleet.py",
            "--dataset",
            fleet_run.dataset.name,
            "--services",
            service,
            "--samples",
            "2",
            "--tiny",
            "--max-epochs",
            "1",
            "--time-budget-s",
            "120",
            "--run-id",
            run_id,
            "--config-json",
            json.dumps(base),
        ]
    )
    ray_job, logs = _run_job(two_nodes, entrypoint, run_id, "tune")
    assert "TUNE RESULT: 1 succeeded, 0 failed" in logs, logs[-3000:]
    assert object_store.exists(f"tune/{run_id}/{service}/best.json")
    assert ModelRegistry(object_store).load_tuned_config(service) is not None

    actors = list_actors(
        address=two_nodes.head.dashboard_url,
        filters=[("job_id", "=", ray_job)],
        detail=True,
        raise_on_missing_output=False,
    )
    trials = [
        actor
        for actor in actors
        if any(name.startswith(WORKER_RESOURCE) for name in (actor.required_resources or {}))
    ]
    assert len(trials) == 2, [(a.class_name, a.required_resources) for a in actors]
    assert {actor.node_id for actor in trials} == {two_nodes.worker_node_id}
    print(f"\nmulti-node timings: tune job {time.monotonic() - started:.1f}s")


def test_serve_model_replica_on_the_second_node_answers_over_http(
    two_nodes: TwoNodes, fleet_run: FleetRun, object_store: Any
) -> None:
    """Ingress on the head, the model replica pinned to the second node (ray_actor_options resources);
    the model the fleet job published and the service's recent rows come from S3."""
    from ray import serve
    from ray.util.state import list_actors

    from serve.ingress import RecommendationIngress
    from serve.model_deployment import ServiceModels

    started = time.monotonic()
    service = fleet_run.dataset.services[1]
    version = ModelRegistry(object_store).latest_version(service)
    assert version is not None
    settings = two_nodes.settings.model_copy(update={"serve_token": None})
    models_deployment: Any = ServiceModels
    ingress_deployment: Any = RecommendationIngress
    models = models_deployment.options(
        num_replicas=1,
        autoscaling_config=None,
        user_config={"reload_interval_s": 10},
        ray_actor_options={"num_cpus": 0.5, "resources": {WORKER_RESOURCE: 1}},
    ).bind(settings, "models", None)
    ingress = ingress_deployment.options(
        num_replicas=1,
        autoscaling_config=None,
        ray_actor_options={"num_cpus": 0.25, "resources": {"node:__internal_head__": 0.01}},
    ).bind(models, settings, "models", 30.0)
    (port,) = free_ports(1)
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(ingress, name="mora-multinode", route_prefix="/", blocking=False)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/recommendations",
            json={"service": service, "context": CONTEXT},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["service"] == service and body["model_version"] == version
        assert body["recommendations"]["replicas"] >= 1

        replicas = {
            actor.class_name: actor.node_id
            for actor in list_actors(
                address=two_nodes.head.dashboard_url,
                filters=[("state", "=", "ALIVE")],
                raise_on_missing_output=False,
            )
            if actor.class_name.startswith("ServeReplica:mora-multinode:")
        }
        assert replicas == {
            "ServeReplica:mora-multinode:ServiceModels": two_nodes.worker_node_id,
            "ServeReplica:mora-multinode:RecommendationIngress": two_nodes.head_node_id,
        }
    finally:
        serve.shutdown()
    print(f"\nmulti-node timings: serve {time.monotonic() - started:.1f}s")
