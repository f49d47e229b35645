"""Tune one service (or a fleet, one service after another) and store the best config.

Per service: random search seeded by ``seed`` with an ASHA scheduler, ``num_samples`` trials and a
wall-time budget, one CPU per trial (TensorFlow threads capped inside the trial), Tune's experiment
state written to the S3 server under ``tune/{run_id}/`` through a pyarrow filesystem with the
endpoint given explicitly. The best trial's config, layered over the base config, is saved with
``ModelRegistry.save_tuned_config`` so the next retraining and ``mora train`` use it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from mora_platform.orchestration import ServiceOutcome
from mora_platform.settings import MoraSettings
from tune.search_space import METRIC, MODE, SearchBounds, param_space, trial_to_config


@dataclass(frozen=True)
class TuneRequest:
    """One service's search: where its data is, how much to spend, what to start from."""

    dataset: str
    service: str
    run_id: str
    num_samples: int = 8
    time_budget_s: float = 900.0
    bounds: SearchBounds = field(default_factory=lambda: SearchBounds())
    base_config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    cpus_per_trial: float = 1.0
    max_concurrent_trials: int | None = None
    save: bool = True
    grace_period: int = 1
    reduction_factor: int = 2
    resources: dict[str, float] | None = None  # custom Ray resources per trial (None: MORA_TRAIN_RESOURCES)


class TuneResult(BaseModel):
    """What a service's search found."""

    service: str
    run_id: str
    best_metric: float
    best_trial: dict[str, Any]
    best_config: dict[str, Any]
    trials: int
    trials_completed: int
    experiment_uri: str
    seconds: float
    saved: bool = False
    trial_metrics: list[float | None] = Field(default_factory=list)


def experiment_prefix(run_id: str) -> str:
    """Object-store prefix (inside the bucket) holding a tuning run's experiments."""
    return f"tune/{run_id}"


def connect(address: str | None) -> None:
    """Join the Ray cluster for a search without echoing the trial workers' output here.

    Tune reports every trial's result and error itself; what the workers print is TensorFlow's
    start-up chatter and, when Tune stops a finished trial's actor, the ``SystemExit`` traceback
    of Ray's SIGTERM handler. Both stay in the Ray session logs (dashboard, Logs tab).
    """
    import ray

    ray.init(address=address or None, log_to_driver=False)


def tune_service(request: TuneRequest, settings: MoraSettings) -> TuneResult:
    """Run the search for ``request.service`` on the connected Ray cluster; return the best config."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from mora_platform.registry import ModelRegistry
    from mora_platform.storage.datasets import DatasetStore
    from mora_platform.storage.object_store import ObjectStore
    from tune.trial import epoch_rungs, prepare_reference, run_trial

    started = time.perf_counter()
    store = ObjectStore.from_settings(settings)
    frame = DatasetStore(store).read(request.dataset, request.service)
    reference = prepare_reference(frame, request.service, request.base_config)
    del frame
    if not ray.is_initialized():
        connect(settings.ray_address)

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            reference=reference,
            base_config=request.base_config,
            max_epochs=request.bounds.max_epochs,
            cpu_threads=max(1, math.floor(request.cpus_per_trial)),
        ),
        {
            "cpu": request.cpus_per_trial,
            **(request.resources if request.resources is not None else settings.train_resources),
        },
    )
    rungs = len(epoch_rungs(request.bounds.max_epochs))
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=rungs,
        grace_period=min(request.grace_period, rungs),
        reduction_factor=request.reduction_factor,
    )
    name = request.service
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(request.bounds),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=BasicVariantGenerator(random_state=request.seed),
            scheduler=scheduler,
            num_samples=request.num_samples,
            time_budget_s=request.time_budget_s,
            max_concurrent_trials=request.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=store.arrow_path(experiment_prefix(request.run_id)),
            storage_filesystem=store.arrow_filesystem(),
            verbose=1,
        ),
    )
    grid = tuner.fit()
    results = [grid[index] for index in range(len(grid))]
    metrics = [_metric_of(result.metrics, result.metrics_dataframe) for result in results]
    finished = [value for value in metrics if value is not None]
    if not finished:
        errors = [str(result.error) for result in results if result.error is not None]
        detail = f"; first error: {errors[0]}" if errors else ""
        raise RuntimeError(f"tune {request.service}: no trial reported {METRIC}{detail}")
    best = grid.get_best_result(metric=METRIC, mode=MODE, scope="all")
    best_trial = {key: value for key, value in sorted((best.config or {}).items())}
    best_config = trial_to_config(best_trial, request.base_config)
    best_metric = _metric_of(best.metrics, scope_all=best.metrics_dataframe)
    saved = False
    if request.save:
        ModelRegistry(store).save_tuned_config(request.service, best_config)
        saved = True
        store.put_bytes(
            f"{experiment_prefix(request.run_id)}/{request.service}/best.json",
            json.dumps(
                {"metric": METRIC, "value": best_metric, "trial": best_trial, "config": best_config}, indent=2
            ).encode(),
        )
    return TuneResult(
        service=request.service,
        run_id=request.run_id,
        best_metric=float(best_metric if best_metric is not None else min(finished)),
        best_trial=best_trial,
        best_config=best_config,
        trials=len(metrics),
        trials_completed=len(finished),
        experiment_uri=store.uri(f"{experiment_prefix(request.run_id)}/{name}"),
        seconds=round(time.perf_counter() - started, 3),
        saved=saved,
        trial_metrics=metrics,
    )


def _metric_of(metrics: dict[str, Any] | None, scope_all: Any = None) -> float | None:
    """The trial's best reported metric (over all its iterations when a dataframe is given)."""
    if scope_all is not None and METRIC in getattr(scope_all, "columns", ()):
        values = [float(v) for v in scope_all[METRIC].tolist() if v is not None and math.isfinite(float(v))]
        if values:
            return min(values)
    if not metrics or METRIC not in metrics:
        return None
    value = float(metrics[METRIC])
    return value if math.isfinite(value) else None


def tune_outcome(request: TuneRequest, settings: MoraSettings) -> ServiceOutcome:
    """``tune_service`` as a fleet outcome (for the orchestrator and the run summary)."""
    result = tune_service(request, settings)
    return ServiceOutcome(
        service=request.service,
        status="trained",
        seconds=result.seconds,
        metrics={
            METRIC: result.best_metric,
            "trials": result.trials,
            "trials_completed": result.trials_completed,
            "best_trial": result.best_trial,
            "experiment": result.experiment_uri,
            "saved": result.saved,
        },
        tuned_config=result.saved,
    )
