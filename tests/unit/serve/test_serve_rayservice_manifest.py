"""infra/k8s/rayservice.yaml: a valid RayService whose serveConfigV2 matches serve/config.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[3]


def test_rayservice_matches_serve_config() -> None:
    documents = list(yaml.safe_load_all((ROOT / "infra/k8s/rayservice.yaml").read_text()))
    [service] = [d for d in documents if d["kind"] == "RayService"]
    assert service["apiVersion"] == "ray.io/v1"
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    local = yaml.safe_load((ROOT / "serve/config.yaml").read_text())
    assert serve_config["applications"] == local["applications"]
    assert serve_config["http_options"]["host"] == "0.0.0.0"
    for group in [
        service["spec"]["rayClusterConfig"]["headGroupSpec"],
        *service["spec"]["rayClusterConfig"]["workerGroupSpecs"],
    ]:
        [container] = group["template"]["spec"]["containers"]
        # The same ConfigMap/Secret names as the training jobs (infra/k8s/s3-settings.yaml).
        assert {"secretRef": {"name": "mora-s3-credentials"}} in container["envFrom"]
        assert {"configMapRef": {"name": "mora-s3-config"}} in container["envFrom"]
        env_names = {item["name"] for item in container.get("env", [])}
        assert not env_names & {"MORA_S3_ACCESS_KEY", "MORA_S3_SECRET_KEY", "MORA_SERVE_TOKEN"}
