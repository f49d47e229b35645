"""The image the KubeRay manifests name is one this repository builds, on the Ray it is tested with."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _ray_version() -> str:
    match = re.search(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "the Dockerfile pins RAY_VERSION"
    return match.group(1)


def _images(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [str(node["image"])] if isinstance(node.get("image"), str) else []
        return found + [image for value in node.values() for image in _images(value)]
    if isinstance(node, list):
        return [image for value in node for image in _images(value)]
    return []


def test_base_image_is_the_ray_the_project_accepts() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py(\d+)-cpu$", text, re.MULTILINE)
    python = re.search(r"-py(\d)(\d+)-cpu", text)
    assert python is not None
    project = _pyproject()["project"]
    assert (
        Version(f"{python.group(1)}.{python.group(2)}")
        in Requirement(f"x{project['requires-python']}").specifier
    )
    ray = next(Requirement(d) for d in project["dependencies"] if d.startswith("ray"))
    assert Version(_ray_version()) in ray.specifier, (ray, _ray_version())
    assert "ray==${RAY_VERSION}" in text  # pip keeps the base image's Ray


def test_image_carries_what_the_job_entrypoints_and_serve_need() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    for folder in ("mora_platform", "jobs", "serve", "tune", "infra"):
        assert re.search(rf"^COPY .*\b{folder} \./{folder}$", text, re.MULTILINE), folder
    assert "WORKDIR /app" in text
    assert not re.search(r"(SECRET|ACCESS_KEY|TOKEN)\s*=", text), "no credential baked into the image"


def test_manifests_run_the_image_this_repository_builds_from_app() -> None:
    version = _pyproject()["project"]["version"]
    images: set[str] = set()
    for path in sorted((ROOT / "infra" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            images |= {image for image in _images(doc) if "mora-platform" in image}
    assert images == {f"ghcr.io/mora-platform/mora-platform:{version}"}
    assert f"-t ghcr.io/mora-platform/mora-platform:{version} ." in DOCKERFILE.read_text(encoding="utf-8")
