"""One path from a service's rows to a published version, used by `mora train` and the fleet job alike.

``resolve_config`` says which training config a service gets, the same way everywhere: the
defaults, then the service's tuned config from the registry (unless told not to use it), then the
caller's overrides (a ``--config`` file or ``--config-json``) merged over it key by key (nested
objects merge, other values replace), then ``--epochs``, then the task's CPU threads.
``train_and_publish`` trains the bundle and publishes it with the metadata every reader relies on
(the dataset it came from, its data window, metrics, config and where the config came from).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from mora_platform.registry import ModelRegistry
    from mora_platform.training.config import TrainingConfig
    from mora_platform.training.report import TrainingReport


def deep_merge(base: Mapping[str, Any], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each layer merged over it; nested dicts merge, other values replace."""
    merged: dict[str, Any] = copy.deepcopy(dict(base))
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = deep_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


def resolve_config_dict(
    tuned: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    epochs: int | None = None,
    cpu_threads: int | None = None,
) -> dict[str, Any]:
    """The config dict: defaults < tuned < overrides < ``epochs`` < ``cpu_threads``."""
    layers: list[Mapping[str, Any]] = [tuned or {}, overrides or {}]
    if epochs is not None:
        layers.append({"lstm": {"epochs": int(epochs)}})
    if cpu_threads is not None:
        layers.append({"cpu_threads": max(1, int(cpu_threads))})
    return deep_merge({}, *layers)


def resolve_config(
    tuned: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    overrides_label: str = "overrides",
    epochs: int | None = None,
    cpu_threads: int | None = None,
) -> tuple[TrainingConfig, str]:
    """(validated TrainingConfig, a label saying where it came from, e.g. ``tuned config + file x.json``)."""
    from mora_platform.training.config import TrainingConfig

    parts = []
    if tuned:
        parts.append("tuned config from the registry")
    if overrides:
        parts.append(overrides_label)
    label = " + ".join(parts) or "defaults"
    if epochs is not None:
        label += f", epochs={epochs}"
    data = resolve_config_dict(tuned, overrides, epochs=epochs, cpu_threads=cpu_threads)
    return TrainingConfig.model_validate(data), label


def directory_bytes(directory: Path) -> int:
    """Total size of the files under ``directory``."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


@dataclass(frozen=True)
class TrainedService:
    """What training one service produced: the report, the published version (None when not
    published) and the bundle's size."""

    report: TrainingReport
    version: str | None
    bundle_bytes: int


def train_and_publish(
    frame: pd.DataFrame,
    service: str,
    config: TrainingConfig,
    registry: ModelRegistry,
    bundle_dir: Path,
    *,
    dataset: str,
    config_source: str,
    publish: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> TrainedService:
    """Train ``service`` on ``frame`` into ``bundle_dir`` and (``publish``) publish it to ``registry``."""
    from mora_platform.training.service_trainer import train_service

    report = train_service(frame, service, config, bundle_dir)
    dumped = report.model_dump(mode="json")
    version = None
    if publish:
        metadata = {
            "metrics": dumped.get("metrics") or {},
            "validation_metrics": dumped.get("validation") or {},
            "data_window": dumped.get("data_window") or {},
            "fallbacks": dumped.get("fallbacks") or [],
            "config": config.model_dump(mode="json"),
            "config_source": config_source,
            "dataset": dataset,
            "training_seconds": dumped.get("seconds"),
            **dict(extra or {}),
        }
        version = registry.publish(service, bundle_dir, metadata=metadata)
    return TrainedService(report=report, version=version, bundle_bytes=directory_bytes(bundle_dir))
