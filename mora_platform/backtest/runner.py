"""Running a backtest's series: in this process or one Ray task each, memory released as it goes.

What ``mora backtest`` (``mora_platform.cli.backtest``) and ``benchmarks/backtest_report.py`` share:
``MethodSpec`` (what to build for each series, plain data so a Ray task builds its own methods),
``build_methods``, ``replay_one`` and ``replay_all`` (in process, or ``--ray``: one task per series,
longest first, a worker replaced after ``RayOptions.max_calls`` series, a series that fails or whose
worker is lost reported with its error while the others go on).

Memory stays flat in the in-process run: each platform fit's leftovers are released after it
(``release_memory``: TensorFlow's gradient registry keeps every traced train step otherwise, about
16 MB a fit), and what a series keeps is its scored windows (``SeriesReplay``), not its models.
Imports nothing heavy at module level (the CLI starts without pandas).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from mora_platform.backtest.baselines import Recommender
    from mora_platform.backtest.engine import BacktestConfig, BacktestSeries, Progress, SeriesReplay
    from mora_platform.backtest.platform import PlatformModel, PlatformTrainer
    from mora_platform.backtest.progress import ProgressReporter


@dataclass(frozen=True)
class MethodSpec:
    """What to build for each series (plain data, so a Ray task can build its own fresh methods)."""

    names: tuple[str, ...]
    refit_seconds: float
    training: dict[str, Any]
    horizon_steps: int = 1
    head_room: str = "auto"  # the platform's head-room: "auto", "recent" rows or training-time "validation"
    recent_rows: int = 1_440  # models.recent.RECENT_ROWS (not imported: the CLI starts without pandas)
    # the run's floor policy (CPU millicores, memory MiB): the platform serves with these floors
    floors: tuple[float, float] = (10, 32)  # recommend.policy's CPU_FLOOR_MILLICORES, MEMORY_FLOOR_MIB


# ---- memory: what a platform fit leaves behind in the process ----------------------------------------


def _gradient_names() -> frozenset[str]:
    """TF's gradient registry names now, when TF is loaded (``models.tf_runtime``); none else."""
    if "tensorflow" not in sys.modules:
        return frozenset()
    from mora_platform.models.tf_runtime import custom_gradient_names

    return custom_gradient_names()


def _malloc_trim() -> None:
    """Hand the heap's free pages back to the OS (glibc), so RSS shows what was freed."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process' own symbols: glibc's when it is glibc
    except (OSError, AttributeError):
        return
    trim(0)


def release_memory(gradients_before: Collection[str] | None = None) -> int:
    """Free what finished platform fits left in this process; returns the registry entries dropped.

    Measured on the in-process backtest (RSS +16 MB and ~23,000 Python objects per fit, never freed,
    whatever ``gc.collect()`` or ``keras.backend.clear_session()`` did): Keras' TensorFlow optimizer
    sums gradients through ``tf.distribute``'s ``all_reduce``, a ``tf.custom_gradient``; every trace
    of a train step registers its gradient function under a new ``CustomGradient-<uid>`` name in
    TF's global gradient registry (``tensorflow.python.framework.ops._gradient_registry``), which
    nothing unregisters and whose closures hold the traced graphs. With ``gradients_before`` (the
    registry's names before a fit), the ``CustomGradient-`` names registered since are dropped: they
    belong to networks already discarded (the platform answers with the saved weights, in NumPy).
    Then Keras' global state is reset (each fit starts as in a fresh process: same names, seeds
    re-set by the fit), cycles are collected and the heap trimmed. TensorFlow is never imported here.
    """
    dropped = 0
    if gradients_before is not None and "tensorflow" in sys.modules:
        from mora_platform.models.tf_runtime import forget_custom_gradients

        dropped = forget_custom_gradients(frozenset(gradients_before))
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session(free_memory=False)
    gc.collect()
    _malloc_trim()
    return dropped


class FreeingTrainer:
    """The platform's trainer, releasing after each fit what the fit left in the process (``release_memory``).

    The platform's variants share one trainer, which hands the model it just trained to the next
    variant asking at the same origin: memory is released once per fit, not per variant.
    """

    def __init__(self, trainer: PlatformTrainer) -> None:
        self.trainer = trainer
        self._last: PlatformModel | None = None

    def __call__(self, frame: pd.DataFrame, service: str) -> PlatformModel:
        before = _gradient_names()
        fitted = True
        try:
            model = self.trainer(frame, service)
            fitted = model is not self._last
            self._last = model
            return model
        finally:
            if fitted:
                release_memory(before)


def build_methods(spec: MethodSpec) -> list[Recommender]:
    """Fresh recommenders for one series (the platform carries per-series state)."""
    import math

    import pandas as pd

    from mora_platform.backtest.baselines import create_recommender
    from mora_platform.backtest.platform import PlatformRecommender

    methods: list[Recommender] = []
    trainer = None
    for name in spec.names:
        if name.startswith("platform"):
            from mora_platform.backtest.baselines import registered_recommenders
            from mora_platform.backtest.platform_training import ServiceModelTrainer

            cls = registered_recommenders()[name]
            assert issubclass(cls, PlatformRecommender)
            trainer = trainer or FreeingTrainer(
                ServiceModelTrainer(
                    spec.training,
                    horizon_steps=spec.horizon_steps,
                    head_room=spec.head_room,
                    recent_rows=spec.recent_rows,
                )
            )
            # "platform" serves with the run's floor policy (the serving policy takes 1m / 1 MiB at
            # least); the variants keep their own floors, raised to the policy by the engine
            served = name == "platform"
            methods.append(
                cls(
                    trainer=trainer,
                    refit=pd.Timedelta(seconds=spec.refit_seconds),
                    cpu_floor_millicores=max(1, math.ceil(spec.floors[0])) if served else None,
                    memory_floor_mib=max(1, math.ceil(spec.floors[1])) if served else None,
                )
            )
        else:
            methods.append(create_recommender(name))
    return methods


def horizon_steps(series: Sequence[BacktestSeries], horizon: pd.Timedelta) -> int:
    """Rows per horizon at the finest typical sampling interval of the series (at least 1)."""
    import math

    import pandas as pd

    spacings = [(u.index[1:] - u.index[:-1]).median() for s in series for u in s.usage.values() if len(u) > 1]
    spacing = min(spacings) if spacings else horizon
    return max(1, math.ceil(horizon / spacing)) if spacing > pd.Timedelta(0) else 1


def platform_available() -> str | None:
    """None if MODELS' training code can be imported, else the reason it cannot."""
    try:
        from mora_platform.backtest.platform_training import check_available

        check_available()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _failed_replay(name: str, error: BaseException) -> SeriesReplay:
    """A series that could not be replayed at all: its error, no resource scored."""
    from mora_platform.backtest.engine import SeriesReplay

    text = str(error).strip()
    message = text.splitlines()[0][:500] if text else repr(error)
    return SeriesReplay(
        name=name, resources={}, errors=[f"series {name!r} failed: {type(error).__name__}: {message}"]
    )


def replay_one(
    one: BacktestSeries,
    spec: MethodSpec,
    config: BacktestConfig,
    progress: Progress | None = None,
) -> SeriesReplay:
    """One series with fresh methods. A method's failure is already that method's (``replay_series``);
    a failure of the series itself (its rows, building the methods) is that series' error, not the
    run's. Memory is released after it either way."""
    from mora_platform.backtest.engine import replay_series

    try:
        return replay_series(one, build_methods(spec), config, progress=progress)
    except Exception as exc:  # one series must not end the others
        return _failed_replay(one.name, exc)
    finally:
        release_memory()


def _rss_mb() -> tuple[float | None, float | None]:
    """This process' RSS now and its lifetime peak (``ru_maxrss``), in MiB."""
    import resource

    import psutil

    try:
        now = round(psutil.Process().memory_info().rss / 2**20, 1)
    except psutil.Error:
        now = None
    return now, round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class SeriesRun:
    """What a Ray task returns: the series' replay (scored windows and requests, no model, no input
    rows) and how its worker process fared."""

    replay: SeriesReplay
    pid: int
    seconds: float
    rss_mb: float | None = None  # the worker's RSS when the series ended
    peak_rss_mb: float | None = None  # the worker's lifetime peak (a reused worker: over its series)


def _replay_task(one: BacktestSeries, spec: MethodSpec, config: BacktestConfig) -> SeriesRun:
    """The body of one Ray task (module level: workers import it by name)."""
    started = time.perf_counter()
    replay = replay_one(one, spec, config)
    rss, peak = _rss_mb()
    return SeriesRun(replay, os.getpid(), round(time.perf_counter() - started, 3), rss, peak)


@dataclass(frozen=True)
class RayOptions:
    """How ``--ray`` runs the series."""

    task_cpus: float = 1.0  # Ray CPUs reserved per series (the fit itself uses the budget's threads)
    max_calls: int = 1  # series a worker process runs before Ray replaces it (0: never)
    local_cpus: int | None = None  # CPUs of the local Ray started when no address is set (None: all)
    heartbeat_s: float = 60.0  # a progress line at least this often while series run
    max_retries: int = 1  # a task whose worker died (killed, out of memory) is run again this often


def _ensure_ray(address: str | None, local_cpus: int | None) -> None:
    """Connect to ``address`` (else ``MORA_RAY_ADDRESS``, else ``RAY_ADDRESS``), or start a local Ray
    for this run when there is none or it is ``local``, unless Ray is up in this process already."""
    import ray

    if ray.is_initialized():
        return
    from mora_platform.settings import MoraSettings

    settings = MoraSettings()  # type: ignore[call-arg]  # fields come from the environment
    target = address or settings.ray_address or os.environ.get("RAY_ADDRESS") or None
    if target and target != "local":
        from infra.local.ray_head import use_client_env

        use_client_env(settings.home, target)  # the local stack's token, when it is the local stack
        ray.init(address=target, log_to_driver=False)
    else:
        # "local": a new Ray for this run, never someone's cluster found in /tmp/ray
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, log_to_driver=False)


def _replay_in_process(
    series: Sequence[BacktestSeries],
    spec: MethodSpec,
    config: BacktestConfig,
    progress: ProgressReporter | None,
) -> list[SeriesReplay]:
    from mora_platform.backtest.engine import planned_origins

    replays = []
    for index, one in enumerate(series, start=1):
        callback = None
        if progress is not None:
            callback = progress.start(index, one.name, len(planned_origins(one, config)))
        replay = replay_one(one, spec, config, callback)
        if progress is not None:
            progress.done(index, one.name, _origins(replay), len(replay.errors), rss_mb=_rss_mb()[0])
        replays.append(replay)
    return replays


def _replay_on_ray(
    series: Sequence[BacktestSeries],
    spec: MethodSpec,
    config: BacktestConfig,
    ray_address: str | None,
    options: RayOptions,
    progress: ProgressReporter | None,
) -> list[SeriesReplay]:
    """One Ray task per series, the longest submitted first (the run ends with the last to finish),
    collected as they finish; the replays come back in the series' order. A task that raised or
    whose worker was lost past its retries is that series' error."""
    import ray

    from mora_platform.backtest.engine import planned_origins

    _ensure_ray(ray_address, options.local_cpus)
    remote = (
        ray.remote(max_calls=options.max_calls)(_replay_task)
        if options.max_calls
        else ray.remote(_replay_task)
    )
    spec_ref, config_ref = ray.put(spec), ray.put(config)
    order = sorted(range(len(series)), key=lambda k: -len(planned_origins(series[k], config)))
    pending: dict[Any, int] = {}
    for k in order:
        ref = remote.options(
            num_cpus=options.task_cpus,
            max_retries=options.max_retries,
            retry_exceptions=False,
            name=f"backtest:{series[k].name}",
        ).remote(series[k], spec_ref, config_ref)
        pending[ref] = k
    if progress is not None:
        cpus = ray.cluster_resources().get("CPU", 0)
        recycled = (
            f"a worker replaced after {options.max_calls} series" if options.max_calls else "workers reused"
        )
        progress.note(
            f"{len(series)} Ray tasks submitted, longest first ({options.task_cpus:g} CPU each, {recycled}; "
            f"the cluster has {cpus:g} CPU)"
        )
    results: list[SeriesReplay | None] = [None] * len(series)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=options.heartbeat_s)
        if not ready:
            if progress is not None:
                progress.waiting(len(pending))
            continue
        for ref in ready:
            k = pending.pop(ref)
            try:
                run: SeriesRun | None = ray.get(ref)
            except Exception as exc:  # the worker died past its retries, the task was cancelled, ...
                run = None
                replay = _failed_replay(series[k].name, exc)
            else:
                assert run is not None
                replay = run.replay
            results[k] = replay
            if progress is not None:
                progress.done_remote(
                    replay.name,
                    _origins(replay),
                    len(replay.errors),
                    seconds=run.seconds if run else None,
                    worker=run.pid if run else None,
                    peak_rss_mb=run.peak_rss_mb if run else None,
                )
    return [r for r in results if r is not None]


def replay_all(
    series: Sequence[BacktestSeries],
    spec: MethodSpec,
    config: BacktestConfig,
    use_ray: bool,
    ray_address: str | None,
    progress: ProgressReporter | None = None,
    ray_options: RayOptions | None = None,
) -> list[SeriesReplay]:
    """Replay every series (results in order), in process or one Ray task each; ``progress`` reports
    as they go. A series that fails is returned with its error and no resource; the others go on."""
    if not use_ray:
        return _replay_in_process(series, spec, config, progress)
    return _replay_on_ray(series, spec, config, ray_address, ray_options or RayOptions(), progress)


def _origins(replay: SeriesReplay) -> int:
    """Origins scored in a replay (the most over its resources)."""
    return max((len(r.origins) for r in replay.resources.values()), default=0)
