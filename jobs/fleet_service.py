"""The per-service work of a fleet retraining: read one service's data, train, publish.

Runs inside a Ray task (or the local loop). It imports no Ray: the Ray backend only decides
where it runs. Every failure it can foresee (missing or corrupt data, unusable series, a failed
upload) comes back as a failed :class:`ServiceOutcome`, never as an exception, so Ray does not
retry a deterministic error; only the death of the worker process is retried (task ``max_retries``).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mora_platform.models.tf_runtime import cap_compute_threads
from mora_platform.orchestration import (
    PeakRssSampler,
    ServiceOutcome,
    cpu_seconds_used,
    failed_outcome,
    lifetime_peak_rss_mb,
)
from mora_platform.settings import MoraSettings
from mora_platform.training.publish import deep_merge, directory_bytes, resolve_config_dict

__all__ = [
    "RetrainSpec",
    "cap_compute_threads",
    "deep_merge",
    "directory_bytes",
    "resolve_training_config",
    "retrain_service",
]

#: Environment variable naming a directory where each task writes ``{service}.{pid}.pid`` just
#: before training starts (so a test can kill the worker mid-training). Unset in production.
PID_DIR_ENV = "MORA_FLEET_PID_DIR"


@dataclass(frozen=True)
class RetrainSpec:
    """What every service of one fleet run shares (names and options only, no data)."""

    dataset: str
    run_id: str
    config_overrides: dict[str, Any] = field(default_factory=dict)
    use_tuned: bool = True
    publish: bool = True
    num_cpus: int = 1


def resolve_training_config(
    tuned: Mapping[str, Any] | None, overrides: Mapping[str, Any], num_cpus: int
) -> dict[str, Any]:
    """The config dict for one service: defaults < tuned config < explicit overrides < CPU threads."""
    return resolve_config_dict(tuned, overrides, cpu_threads=num_cpus)


def _work_prefix(service: str) -> str:
    """The per-task working directory's name prefix: the service and the worker's PID."""
    return f"mora-{service}-pid{os.getpid()}-"


def sweep_stale_work_dirs(service: str, root: Path | None = None) -> list[Path]:
    """Remove the working directories an earlier task for ``service`` left behind in ``root`` (the
    temporary directory) because its worker died mid-training (killed, out of memory): the
    directory names its worker's PID, and only those whose worker is gone are removed. Returns them."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for path in root.glob(f"mora-{glob.escape(service)}-pid*-*"):
        match = re.fullmatch(rf"mora-{re.escape(service)}-pid(\d+)-[^/]*", path.name)
        if not match or not path.is_dir() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _write_pid_marker(service: str) -> None:
    pid_dir = os.environ.get(PID_DIR_ENV)
    if pid_dir:
        Path(pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(pid_dir) / f"{service}.{os.getpid()}.pid").write_text(str(os.getpid()))


def retrain_service(spec: RetrainSpec, service: str, settings: MoraSettings | None = None) -> ServiceOutcome:
    """Read ``service`` from ``spec.dataset`` on S3, train it and publish a new version."""
    started = time.perf_counter()
    cpu_started = cpu_seconds_used()
    sampler = PeakRssSampler()
    stage = ["setting up"]
    try:
        with sampler:
            outcome = _retrain(spec, service, settings or MoraSettings(), stage)  # type: ignore[call-arg]
    except Exception as error:
        outcome = failed_outcome(service, error, time.perf_counter() - started)
        outcome.error = f"{stage[0]}: {outcome.error}"
    outcome.seconds = round(time.perf_counter() - started, 3)
    outcome.peak_rss_mb = sampler.peak_mb
    outcome.cpu_seconds = round(cpu_seconds_used() - cpu_started, 3)
    outcome.worker_pid = os.getpid()
    outcome.worker_peak_rss_mb = lifetime_peak_rss_mb()
    return outcome


def _retrain(spec: RetrainSpec, service: str, settings: MoraSettings, stage: list[str]) -> ServiceOutcome:
    """Read, train, publish; ``stage[0]`` names the step in progress (for the error message)."""
    cap_compute_threads(spec.num_cpus)
    from mora_platform.registry import ModelRegistry
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.object_store import ObjectStore
    from mora_platform.training.publish import resolve_config, train_and_publish

    stage[0] = f"reading s3://{settings.s3_bucket}/{DatasetStore.service_prefix(spec.dataset, service)}"
    store = ObjectStore.from_settings(settings)
    registry = ModelRegistry(store)
    frame = DatasetStore(store).read(spec.dataset, service)
    stage[0] = "resolving the training config"
    tuned = registry.load_tuned_config(service) if spec.use_tuned else None
    config, source = resolve_config(
        tuned, spec.config_overrides, overrides_label="--config-json", cpu_threads=spec.num_cpus
    )

    sweep_stale_work_dirs(service)
    with tempfile.TemporaryDirectory(prefix=_work_prefix(service)) as tmp:
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        _write_pid_marker(service)
        stage[0] = "training"
        trained = train_and_publish(
            frame,
            service,
            config,
            registry,
            bundle,
            dataset=spec.dataset,
            config_source=source,
            publish=spec.publish,
            extra={"run_id": spec.run_id, "tuned_config": bool(tuned)},
        )
        del frame
        _release_keras_state()
    return ServiceOutcome(
        service=service,
        status="published" if spec.publish else "trained",
        version=trained.version,
        metrics=trained.report.model_dump(mode="json").get("metrics") or {},
        tuned_config=bool(tuned),
        artifact_bytes=trained.bundle_bytes,
    )


def _release_keras_state() -> None:
    """Drop Keras graphs between services in a reused worker."""
    try:
        import keras

        keras.backend.clear_session()
    except Exception:  # pragma: no cover - best effort
        pass
