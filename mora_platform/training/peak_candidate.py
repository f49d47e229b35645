"""Fit the peak-quantile candidate (``models.peak``) for a service, beside its ensemble.

``fit_peak_candidate`` fits it on a prepared frame's training rows and calibrates its training-time
head-room on the validation rows, with the service's ``TrainingConfig`` (``peak``, the held steps
``calibration_horizon_steps``, ``coverage``, ``head_room``); targets without data are left out.

``attach_peak_candidate`` adds it to a bundle ``train_service`` has written: the same rows are
selected, prepared and split as training did (``check_service_frame``, ``prepare_frame``,
``split_frame``), and ``peak_quantile.json`` is written (or an older one removed when nothing could
be fitted), so ``ServiceModel.load`` offers the candidate; when training already wrote one for these
rows it is kept as it is. The file records which data it belongs to (``data_end`` and ``data_rows``,
matched against ``metrics.json``'s data window), so a file left from an earlier training is never
used with a newer ensemble.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from mora_platform.features.split import Split, split_frame
from mora_platform.features.targets import prepare_frame
from mora_platform.models.base import ModelError
from mora_platform.models.peak import PEAK_FILE, PEAK_TARGETS, PeakQuantileModel
from mora_platform.models.peak_lstm import HEAD_PATTERN
from mora_platform.training.config import TrainingConfig


def fit_peak_candidate(
    prepared: pd.DataFrame,
    labels: np.ndarray,
    config: TrainingConfig,
    unavailable: Collection[str] = (),
) -> PeakQuantileModel | None:
    """The fitted candidate for a prepared frame split into ``labels`` (``features.split``), or None
    when ``config.peak.enabled`` is off or no target could be fitted."""
    if not config.peak.enabled:
        return None
    labels = np.asarray(labels)
    targets = [t for t in PEAK_TARGETS if t not in unavailable]
    if not targets:
        return None
    try:
        model = PeakQuantileModel.fit(
            prepared,
            labels == Split.TRAIN.value,
            labels == Split.VALIDATION.value,
            horizon_steps=config.calibration_horizon_steps,
            coverage=config.coverage,
            config=config.peak,
            targets=targets,
            relative=config.head_room == "relative",
            cpu_threads=config.cpu_threads,
            seed=config.seed,
        )
    except ModelError:
        return None
    return model if model.targets else None


def attach_peak_candidate(
    frame: pd.DataFrame, service: str, config: TrainingConfig, directory: Path
) -> str | None:
    """Fit the candidate on the rows ``train_service(frame, service, config, directory)`` trained on
    and write ``peak_quantile.json`` into ``directory``; returns the file name (None, and no file,
    when there is nothing to write)."""
    from mora_platform.models.base import read_json
    from mora_platform.training.bundle import METRICS_FILE, fill_unavailable, read_peak_candidate
    from mora_platform.training.service_trainer import check_service_frame

    path = Path(directory) / PEAK_FILE
    if config.peak.enabled and path.is_file():
        metrics = read_json(Path(directory) / METRICS_FILE)
        if isinstance(metrics, dict) and read_peak_candidate(Path(directory), metrics) is not None:
            return PEAK_FILE  # training wrote it already, on these rows
    path.unlink(missing_ok=True)
    for stale in Path(directory).glob(HEAD_PATTERN):
        stale.unlink()
    if not config.peak.enabled:
        return None
    selected, unavailable = check_service_frame(frame, service, config)
    prepared = prepare_frame(fill_unavailable(selected, unavailable))
    labels = split_frame(
        prepared, config.validation_fraction, config.test_fraction, config.split_by
    ).to_numpy()
    model = fit_peak_candidate(prepared, labels, config, unavailable)
    return None if model is None else model.save(Path(directory))
