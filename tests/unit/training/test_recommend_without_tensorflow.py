"""Answering never imports TensorFlow / Keras (or Prophet, cmdstanpy, Ray): checked in fresh processes.

A tiny bundle is trained here (TensorFlow in this process is fine) and published to a local
registry; then a new interpreter runs ``mora recommend`` on it (registry fetch, checksum
verification, load, answer), and another the Serve replica's loader, and each reports which
heavy modules it imported. Their answers must equal the one computed here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from synthetic_frames import synthetic_service_frame

from mora_platform.registry import LocalBlobBackend, ModelRegistry
from mora_platform.training.bundle import ServiceModel
from mora_platform.training.config import TrainingConfig
from mora_platform.training.service_trainer import train_service

REPO = Path(__file__).resolve().parents[3]
SERVICE = "svc-no-tf"
TINY = {
    "seq_len": 6,
    "lstm": {"units": [6], "dense_units": 4, "epochs": 1, "patience": 1, "batch_size": 64},
    "prophet": {"grid_steps": 16},
}
CONTEXT = {"load_users": 60, "replica_count": 2}
# Must stay out of the answering process: TensorFlow / Keras above all (tens of seconds to import).
FORBIDDEN = ("tensorflow", "keras", "prophet", "cmdstanpy", "ray")

CHILD = textwrap.dedent(
    """
    import json, sys

    report_path, mode = sys.argv[1], sys.argv[2]
    if mode == "cli":
        from mora_platform.cli import main

        sys.argv = ["mora", *sys.argv[3:]]
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
    else:
        from serve.model_slots import load_service_model

        model = load_service_model(sys.argv[3])
        rec = model.recommend(None, json.loads(sys.argv[4]), model_version=sys.argv[5])
        print(rec.model_dump_json())
        code = 0
    modules = sorted({name.split(".")[0] for name in sys.modules})
    with open(report_path, "w", encoding="utf-8") as report:
        json.dump({"code": code, "modules": modules}, report)
    """
)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(registry directory, bundle directory, version) of one tiny trained service."""
    root = tmp_path_factory.mktemp("no-tf")
    frame = synthetic_service_frame(days=1.0, step_seconds=300, seed=9, experiments=2, service=SERVICE)
    bundle = root / "bundle"
    train_service(frame, SERVICE, TrainingConfig.model_validate(TINY), bundle)
    registry = ModelRegistry(LocalBlobBackend(root / "registry"))
    version = registry.publish(SERVICE, bundle, metadata={"metrics": {}})
    return root / "registry", bundle, version


def _run_child(tmp_path: Path, *args: str) -> tuple[dict[str, object], str]:
    """Run CHILD in a new interpreter (clean environment, no stack.env / .env): (report, stdout)."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORA_")}
    env.update(
        {
            "MORA_HOME": str(tmp_path / "home"),
            "MORA_SIGNING_KEY": os.environ["MORA_SIGNING_KEY"],  # the key the fixture published with
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(report), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(report.read_text()), result.stdout


def _expected(bundle: Path, version: str) -> dict[str, object]:
    rec = ServiceModel.load(bundle).recommend(context=CONTEXT, model_version=version)
    return json.loads(rec.model_dump_json())


def test_cli_recommend_imports_no_tensorflow(published: tuple[Path, Path, str], tmp_path: Path) -> None:
    registry, bundle, version = published
    report, stdout = _run_child(
        tmp_path,
        "cli",
        "recommend",
        SERVICE,
        "--registry-dir",
        str(registry),
        "--context",
        json.dumps(CONTEXT),
        "--format",
        "json",
    )
    assert report["code"] == 0, stdout
    answers = json.loads(stdout)
    used = answers[0].pop("history")  # what-if context: answered from the stored tail, which it says
    assert used["source"] == "model" and used["rows"] == len(ServiceModel.load(bundle).history)
    assert answers == [{k: v for k, v in _expected(bundle, version).items() if k != "history"}]
    imported = [name for name in FORBIDDEN if name in report["modules"]]  # type: ignore[operator]
    assert imported == [], f"`mora recommend` imported {imported}"
    # the bundle it answered from is the verified copy in the cache
    assert (tmp_path / "home" / "cache" / "models" / SERVICE / version / "lstm.keras").is_file()


def test_serve_loader_imports_no_tensorflow(published: tuple[Path, Path, str], tmp_path: Path) -> None:
    _, bundle, version = published
    report, stdout = _run_child(tmp_path, "serve", str(bundle), json.dumps(CONTEXT), version)
    assert json.loads(stdout) == _expected(bundle, version)
    imported = [name for name in FORBIDDEN if name in report["modules"]]  # type: ignore[operator]
    assert imported == [], f"the Serve loader imported {imported}"
