"""Ray backend for the fleet orchestrator: one Ray task per service, collected with ``ray.wait``.

Worker death (a killed or OOM-killed process) is retried by Ray (``max_retries``); exceptions are
not (``retry_exceptions=False``), and the per-service function returns its foreseeable failures
as outcomes anyway. If a service exhausts its retries, it becomes a failed outcome here.

Where tasks run: any node with a free CPU, unless ``MORA_TRAIN_RESOURCES`` (``MoraSettings.train_resources``)
names custom resources each task also asks for, e.g. ``{"mora_train": 1}`` with the training nodes
started by ``ray start --resources='{"mora_train": 4}'``. Each outcome records the node that ran it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ray

from mora_platform.orchestration import ServiceFunction, ServiceOutcome, failed_outcome, run_isolated


def _run_service_task(fn: ServiceFunction, service: str) -> ServiceOutcome:
    """The body of one Ray task."""
    outcome = run_isolated(fn, service)
    with contextlib.suppress(Exception):
        outcome.node_id = ray.get_runtime_context().get_node_id()
    return outcome


def configured_train_resources() -> dict[str, float]:
    """``MORA_TRAIN_RESOURCES`` as the settings read it (environment, stack.env, .env)."""
    from mora_platform.settings import MoraSettings

    return dict(MoraSettings().train_resources)  # type: ignore[call-arg]


class RayTaskBackend:
    """Runs each service as its own Ray task and yields outcomes in completion order."""

    def __init__(
        self,
        *,
        num_cpus: float = 1,
        max_retries: int = 2,
        memory_mb: int | None = None,
        max_calls: int = 0,
        heartbeat_s: float = 20.0,
        task_prefix: str = "retrain",
        on_wait: Callable[[list[str]], None] | None = None,
        resources: Mapping[str, float] | None = None,
    ) -> None:
        """``resources``: custom Ray resources per task (None: ``MORA_TRAIN_RESOURCES``, default none)."""
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.memory_mb = memory_mb
        self.max_calls = max_calls
        self.heartbeat_s = heartbeat_s
        self.task_prefix = task_prefix
        self.on_wait = on_wait
        self.resources = dict(resources) if resources is not None else configured_train_resources()
        self.task_ids: dict[str, str] = {}

    def _options(self, service: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "max_retries": self.max_retries,
            "retry_exceptions": False,
            "name": f"{self.task_prefix}:{service}",
        }
        if self.memory_mb:
            options["memory"] = int(self.memory_mb) * 2**20
        if self.resources:
            options["resources"] = dict(self.resources)
        return options

    def _warn_if_unoffered(self) -> None:
        """Say so when no node offers a requested custom resource (the tasks wait for one to join)."""
        with contextlib.suppress(Exception):
            missing = sorted(set(self.resources) - set(ray.cluster_resources()))
            if missing:
                print(
                    f"warning: no node of the cluster offers the resources {missing} the tasks ask for "
                    "(MORA_TRAIN_RESOURCES); they wait until such a node joins",
                    file=sys.stderr,
                    flush=True,
                )

    def map_services(self, fn: ServiceFunction, services: Sequence[str]) -> Iterator[ServiceOutcome]:
        # max_calls is a property of the remote function, not a per-call option.
        remote = (
            ray.remote(max_calls=self.max_calls)(_run_service_task)
            if self.max_calls
            else ray.remote(_run_service_task)
        )
        if self.resources:
            self._warn_if_unoffered()
        fn_ref = ray.put(fn)
        pending: dict[ray.ObjectRef, tuple[str, float]] = {}
        for service in services:
            ref = remote.options(**self._options(service)).remote(fn_ref, service)
            pending[ref] = (service, time.perf_counter())
            with contextlib.suppress(Exception):
                self.task_ids[service] = ref.task_id().hex()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.heartbeat_s)
            if not ready:
                if self.on_wait is not None:
                    self.on_wait([name for name, _ in pending.values()])
                continue
            for ref in ready:
                service, submitted = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as error:  # retries exhausted, cancelled, or the task's env failed
                    outcome = failed_outcome(service, error, time.perf_counter() - submitted)
                yield outcome


def task_attempts(task_ids: dict[str, str]) -> dict[str, int]:
    """How many attempts Ray made per service (from the state API; best effort, may be empty)."""
    try:
        from ray.util.state import list_tasks
    except ImportError:  # pragma: no cover
        return {}
    attempts: dict[str, int] = {}
    wanted = {task_id: service for service, task_id in task_ids.items()}
    try:
        for task_id, service in wanted.items():
            rows = list_tasks(
                filters=[("task_id", "=", task_id)], detail=False, raise_on_missing_output=False
            )
            if rows:
                attempts[service] = max(int(getattr(row, "attempt_number", 0)) for row in rows) + 1
    except Exception:
        return attempts
    return attempts


class RayFleetMetrics:
    """Custom metrics exported through Ray's metrics agent (dashboard / Prometheus)."""

    def __init__(self, dataset: str, kind: str = "retrain") -> None:
        from ray.util.metrics import Counter, Histogram

        tags = ("dataset", "kind", "service")
        self._tags = {"dataset": dataset, "kind": kind}
        self.trained = Counter(
            "mora_services_trained",
            description="Services trained (and published) by fleet jobs",
            tag_keys=tags,
        )
        self.failed = Counter(
            "mora_services_failed", description="Services that failed in fleet jobs", tag_keys=tags
        )
        self.seconds = Histogram(
            "mora_service_train_seconds",
            description="Wall seconds per service in fleet jobs",
            boundaries=[5, 15, 30, 60, 120, 300, 600, 1200],
            tag_keys=tags,
        )

    def record(self, outcome: ServiceOutcome) -> None:
        tags = {**self._tags, "service": outcome.service}
        if outcome.ok:
            self.trained.inc(1.0, tags=tags)
        else:
            self.failed.inc(1.0, tags=tags)
        self.seconds.observe(outcome.seconds, tags=tags)
