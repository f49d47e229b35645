"""Every Kubernetes manifest parses and carries the fields its kind needs; no real secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

K8S_DIR = Path(__file__).resolve().parents[3] / "infra" / "k8s"
PLACEHOLDER = re.compile(r"^(CHANGE_?ME|<[^>]+>|\$\{[A-Z_]+\}|)$")
SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|ROOT_USER)", re.IGNORECASE)
KNOWN_KINDS = {
    "Namespace",
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "Job",
    "CronJob",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "RayJob",
    "RayService",
}
API_VERSIONS = {
    "Namespace": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "Service": "v1",
    "ServiceAccount": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "RayJob": "ray.io/v1",
    "RayService": "ray.io/v1",
}
RAYJOB_SPEC_FIELDS = {
    "entrypoint",
    "runtimeEnvYAML",
    "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "backoffLimit",
    "submissionMode",
    "rayClusterSpec",
    "jobId",
    "metadata",
    "suspend",
    "entrypointNumCpus",
    "entrypointResources",
    "submitterPodTemplate",
    "clusterSelector",
}


def _manifest_files() -> list[Path]:
    return sorted(K8S_DIR.glob("*.yaml"))


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    # RayJob templates embedded in ConfigMaps are manifests too.
    for name, doc in list(docs):
        if doc.get("kind") == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                if key.endswith(".yaml"):
                    docs.append((f"{name}:{key}", yaml.safe_load(value)))
    return docs


def _of_kind(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in _documents() if doc["kind"] == kind]


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("containers", [])) + list(pod_spec.get("initContainers", []))


def _rayjob_pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = doc["spec"]["rayClusterSpec"]
    specs = [cluster["headGroupSpec"]["template"]["spec"]]
    specs += [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    return specs


def test_the_expected_manifests_exist() -> None:
    names = {path.name for path in _manifest_files()}
    assert {
        "rayjob-retrain-fleet.yaml",
        "rayjob-rightsize-cycle.yaml",
        "cronjob-rightsize-cycle.yaml",
        "minio.yaml",
        "s3-settings.yaml",
        "prometheus-settings.yaml",
    } <= names


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_every_document_has_identity(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path.name} holds no documents"
    for doc in docs:
        kind = doc.get("kind")
        assert kind in KNOWN_KINDS, f"{path.name}: unexpected kind {kind!r}"
        assert doc.get("apiVersion") == API_VERSIONS[kind], (
            f"{path.name}: {kind} apiVersion {doc.get('apiVersion')}"
        )
        meta = doc.get("metadata") or {}
        assert meta.get("name") or meta.get("generateName"), f"{path.name}: {kind} without metadata.name"
        name = meta.get("name") or meta["generateName"].rstrip("-")
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), f"{path.name}: bad name {name!r}"
        if kind != "Namespace" and "namespace" in meta:
            assert meta["namespace"] == "mora", f"{path.name}: {kind} {name} in namespace {meta['namespace']}"


def test_rayjobs_run_the_fleet_entrypoints_with_s3_secret_refs() -> None:
    rayjobs = _of_kind("RayJob")
    entrypoints = {doc["spec"]["entrypoint"].split()[1] for _, doc in rayjobs}
    assert {"jobs/retrain_fleet.py", "jobs/tune_fleet.py", "jobs/rightsize_cycle.py"} <= entrypoints
    for name, doc in rayjobs:
        spec = doc["spec"]
        assert set(spec) <= RAYJOB_SPEC_FIELDS, (
            f"{name}: unknown RayJob spec fields {set(spec) - RAYJOB_SPEC_FIELDS}"
        )
        assert spec["entrypoint"].startswith("python jobs/")
        assert "--dataset" in spec["entrypoint"]
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
        assert spec["shutdownAfterJobFinishes"] is True
        cluster = spec["rayClusterSpec"]
        assert cluster["workerGroupSpecs"], f"{name}: no worker group"
        for group in cluster["workerGroupSpecs"]:
            assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for pod in _rayjob_pod_specs(doc):
            for container in _containers(pod):
                assert container["image"], f"{name}: container without image"
                env = {item["name"]: item for item in container.get("env", [])}
                for key in ("MORA_S3_ACCESS_KEY", "MORA_S3_SECRET_KEY"):
                    ref = env[key]["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == "mora-s3-credentials" and ref["key"] == key
                    assert "value" not in env[key]
                config_refs = [
                    src["configMapRef"]["name"]
                    for src in container.get("envFrom", [])
                    if "configMapRef" in src
                ]
                assert "mora-s3-config" in config_refs


def test_secret_refs_point_to_declared_secrets_and_keys() -> None:
    secrets = {doc["metadata"]["name"]: doc for _, doc in _of_kind("Secret")}
    for name, doc in _documents():
        for ref in _find_dicts(doc, "secretKeyRef"):
            assert ref["name"] in secrets, f"{name}: secretKeyRef to undeclared Secret {ref['name']}"
            assert ref["key"] in (secrets[ref["name"]].get("stringData") or {}), (
                f"{name}: missing key {ref['key']}"
            )


def test_secrets_hold_placeholders_only() -> None:
    secrets = _of_kind("Secret")
    assert secrets
    for name, doc in secrets:
        assert "data" not in doc, f"{name}: base64 data in a committed Secret"
        for key, value in (doc.get("stringData") or {}).items():
            assert PLACEHOLDER.match(str(value)), f"{name}: Secret key {key} holds a non-placeholder value"


def test_no_plaintext_secret_in_container_env() -> None:
    for name, doc in _documents():
        for env_list in _find_lists(doc, "env"):
            for item in env_list:
                if SECRETISH.search(item.get("name", "")):
                    assert "value" not in item or PLACEHOLDER.match(str(item["value"])), (
                        f"{name}: {item['name']}"
                    )
    for name, doc in _of_kind("ConfigMap"):
        for key in doc.get("data") or {}:
            assert not SECRETISH.search(key), f"{name}: secret-looking key {key} in a ConfigMap"


def test_minio_deployment_service_and_volume_fit_together() -> None:
    deployments = {doc["metadata"]["name"]: doc for _, doc in _of_kind("Deployment")}
    minio = deployments["minio"]
    selector = minio["spec"]["selector"]["matchLabels"]
    labels = minio["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    services = {doc["metadata"]["name"]: doc for _, doc in _of_kind("Service")}
    assert services["minio"]["spec"]["selector"].items() <= labels.items()
    ports = {port["port"] for port in services["minio"]["spec"]["ports"]}
    assert 9000 in ports
    claims = {doc["metadata"]["name"]: doc for _, doc in _of_kind("PersistentVolumeClaim")}
    volumes = minio["spec"]["template"]["spec"]["volumes"]
    claim_names = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
    assert claim_names and claim_names <= set(claims)
    for claim in claim_names:
        assert claims[claim]["spec"]["resources"]["requests"]["storage"]
    container = minio["spec"]["template"]["spec"]["containers"][0]
    assert any(src.get("secretRef", {}).get("name") == "minio-root" for src in container["envFrom"])


def test_s3_config_points_at_the_minio_service() -> None:
    maps = {doc["metadata"]["name"]: doc for _, doc in _of_kind("ConfigMap")}
    data = maps["mora-s3-config"]["data"]
    assert data["MORA_S3_ENDPOINT_URL"].startswith("http://minio.mora.svc")
    assert data["MORA_S3_BUCKET"]


def _cron_template() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(the CronJob, its pod spec, the RayJob template it creates)."""
    (name, cron), *others = _of_kind("CronJob")
    assert not others, "one schedule: the rightsizing cycle"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    template_maps = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    maps = {doc["metadata"]["name"]: doc for _, doc in _of_kind("ConfigMap")}
    assert template_maps <= set(maps), f"{name}: template ConfigMap not declared"
    template = yaml.safe_load(maps[next(iter(template_maps))]["data"]["rayjob.yaml"])
    return cron, pod, template


def test_cronjob_creates_the_rightsizing_cycle_hourly() -> None:
    cron, pod, template = _cron_template()
    spec = cron["spec"]
    minute, hour, *rest = spec["schedule"].split()
    assert len(rest) == 3 and minute.isdigit() and hour == "*", f"hourly, got {spec['schedule']!r}"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert template["kind"] == "RayJob" and template["metadata"]["generateName"]
    entrypoint = template["spec"]["entrypoint"].split()
    assert entrypoint[:2] == ["python", "jobs/rightsize_cycle.py"]
    assert {"--dataset", "--namespace", "--since", "--min-new-data"} <= set(entrypoint)
    assert entrypoint[entrypoint.index("--min-new-data") + 1] == "24h"  # collect hourly, retrain daily
    # a run ends before the next one starts (Forbid only covers the kubectl Job that creates the RayJob)
    assert template["spec"]["activeDeadlineSeconds"] < 3600
    accounts = {doc["metadata"]["name"] for _, doc in _of_kind("ServiceAccount")}
    assert pod["serviceAccountName"] in accounts
    rules = [rule for _, doc in _of_kind("Role") for rule in doc["rules"]]
    assert any("rayjobs" in rule["resources"] and "create" in rule["verbs"] for rule in rules)


def test_the_cron_template_is_the_cycle_rayjob() -> None:
    _, _, template = _cron_template()
    (_, rayjob), *_ = [item for item in _of_kind("RayJob") if item[0] == "rayjob-rightsize-cycle.yaml"]
    assert template["spec"] == rayjob["spec"], (
        "cronjob-rightsize-cycle.yaml drifted from rayjob-rightsize-cycle.yaml"
    )


def test_only_the_cycle_head_gets_prometheus_settings_and_from_config_and_secret() -> None:
    for name, doc in _of_kind("RayJob"):
        entrypoint = doc["spec"]["entrypoint"]
        assert "--prometheus" not in entrypoint and "token" not in entrypoint.lower()
        cluster = doc["spec"]["rayClusterSpec"]
        head = _containers(cluster["headGroupSpec"]["template"]["spec"])[0]
        config_refs = {
            src["configMapRef"]["name"] for src in head.get("envFrom", []) if "configMapRef" in src
        }
        env = {item["name"]: item for item in head.get("env", [])}
        if "jobs/rightsize_cycle.py" in entrypoint:
            assert "mora-prometheus-config" in config_refs, name
            ref = env["MORA_PROMETHEUS_BEARER_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "mora-prometheus-credentials" and ref.get("optional") is True
            assert cluster.get("enableInTreeAutoscaling") is True  # nothing to retrain: no worker starts
            for group in cluster["workerGroupSpecs"]:
                assert group["minReplicas"] == 0
                for container in _containers(group["template"]["spec"]):
                    names = {item["name"] for item in container.get("env", [])}
                    assert not any(n.startswith("MORA_PROMETHEUS_") for n in names), (
                        f"{name}: workers never query"
                    )
        else:
            assert "mora-prometheus-config" not in config_refs and "MORA_PROMETHEUS_BEARER_TOKEN" not in env
    maps = {doc["metadata"]["name"]: doc for _, doc in _of_kind("ConfigMap")}
    assert maps["mora-prometheus-config"]["data"]["MORA_PROMETHEUS_URL"].startswith("http")


def _find_dicts(node: Any, key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, dict):
                found.append(v)
            found.extend(_find_dicts(v, key))
    elif isinstance(node, list):
        for item in node:
            found.extend(_find_dicts(item, key))
    return found


def _find_lists(node: Any, key: str) -> list[list[dict[str, Any]]]:
    found: list[list[dict[str, Any]]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, list):
                found.append(v)
            found.extend(_find_lists(v, key))
    elif isinstance(node, list):
        for item in node:
            found.extend(_find_lists(item, key))
    return found
