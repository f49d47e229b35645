"""The ingress deployment: FastAPI (``serve.http_api``) in front of the multiplexed models.

Validation, auth and errors happen here; recommendations are computed by ``ServiceModels``
reached through a ``DeploymentHandle`` with ``multiplexed_model_id=service``. The registry health
is read from S3 directly and cached for a few seconds. The service list names the version the
replicas serve (LATEST only when it verifies, see ``ServableVersions.catalog``: one listing of
the registry per refresh, versions verified again only when their objects changed) and is served
stale-while-revalidate: only the very first call waits for it; afterwards callers get the cached
list at once and, once it is older than ``services_ttl_s``, one background refresh replaces it.

A model call that outlives ``request_timeout_s`` is cancelled (504), a model replica that dies under a
call is retried once on another replica, and a full queue (``max_queued_requests``) is answered at
once with 503 + ``Retry-After`` (``ServeBackend._ask``).

Warm answers skip the model hop: each ingress replica keeps an answer cache (``serve.answer_cache``)
of plain 200 answers to questions without client history, keyed by (service, canonical request), for
``answer_cache_ttl_s`` (default 2 s, ``0`` turns it off). ``serve.app`` caps that TTL at the model
replicas' reload interval (10 s) and recent-history max age (``MORA_SERVE_HISTORY_MAX_AGE_S``, 60 s),
the only two things that change an answer, so a publish or new recent rows show up at most one TTL
later than without the cache. Identical concurrent misses share one model call; a hit is sent as
the JSON bytes stored, before its body is even parsed when the same bytes were answered before, and
is marked ``X-Mora-Cache: hit`` (a model call's answer: ``miss``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from mora_platform.registry import ModelRegistry, ServableVersions
from mora_platform.settings import MoraSettings
from serve.answer_cache import AnswerCache
from serve.api import RecommendationRequest, ServiceInfo
from serve.http_api import ModelOutcome, create_api
from serve.resilience import INGRESS_OPTIONS

logger = logging.getLogger("ray.serve")

SERVICES_TTL_S = 5.0  # a service list older than this is refreshed in the background
HEALTH_TTL_S = 2.0
MAX_CACHED_HANDLES = 4096
UNKNOWN_TTL_S = 2.0  # how long "no such service" is remembered (a publish shows up after this)
REPLICA_LOST = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)


def _envelopes(count: int, status: int, error: str) -> list[dict[str, Any]]:
    return [{"status": status, "recommendation": None, "error": error}] * count


def _cancel(response: Any) -> None:
    """Cancel a model call (a ``DeploymentResponse``; the replica's task is cancelled with it)."""
    cancel = getattr(response, "cancel", None)
    if callable(cancel):
        cancel()


class ServeBackend:
    """``RecommendationBackend`` over a model DeploymentHandle and the registry."""

    def __init__(
        self,
        models: DeploymentHandle,
        registry: ModelRegistry,
        request_timeout_s: float = 30.0,
        services_ttl_s: float = SERVICES_TTL_S,
        prefill: bool = False,
    ) -> None:
        """``prefill``: start reading the service list now, on a thread, so the first
        ``GET /v1/services`` finds it read (the first read of a large registry verifies every
        service: tens of seconds for 1,000) or waits only for the rest of that one read."""
        self._models = models
        self._registry = registry
        self._servable = ServableVersions(registry)  # what a replica serves: LATEST only if it verifies
        self._timeout = request_timeout_s
        self._services_ttl_s = services_ttl_s
        self._services: list[ServiceInfo] | None = None
        self._services_due = 0.0  # monotonic time after which the list is refreshed
        self._services_refresh: asyncio.Task[None] | None = None  # the one background refresh
        self._health: tuple[float, str | None] | None = None
        self._lock = asyncio.Lock()
        self._handles: dict[str, DeploymentHandle] = {}  # one routed handle per service, reused
        self._unknown: dict[str, float] = {}  # service -> until when it is known to be unpublished
        self._prefill: concurrent.futures.Future[list[ServiceInfo]] | None = None
        if prefill:
            self._prefill = concurrent.futures.Future()
            threading.Thread(target=self._prefill_services, name="services-prefill", daemon=True).start()

    async def recommend(self, service: str, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        unknown_until = self._unknown.get(service)
        if unknown_until is not None:
            if time.monotonic() < unknown_until:
                return [self._unknown_outcome(service)] * len(requests)
            del self._unknown[service]
        payloads = [request.model_dump(mode="json", exclude_none=True) for request in requests]
        answers = await self._ask(service, "recommend", payloads)
        outcomes = [ModelOutcome(**answer) for answer in answers]
        if outcomes and all(outcome.status == 404 for outcome in outcomes):
            self._remember_unknown(service)
        return outcomes

    def _remember_unknown(self, service: str) -> None:
        """Unknown services are remembered briefly: a flood of them must not keep the model
        replicas busy asking S3 (their loads are serialised)."""
        if len(self._unknown) >= MAX_CACHED_HANDLES:
            self._unknown.clear()
        self._unknown[service] = time.monotonic() + UNKNOWN_TTL_S

    async def recommend_batch(self, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        """One call for the whole batch, routed to the replica of its most frequent service.

        The replica loads any other service of the batch itself (same LRU), which costs far less
        than one routed call per service when the batch spans many services.
        """
        results: list[ModelOutcome | None] = [None] * len(requests)
        pending: list[int] = []
        now = time.monotonic()
        for index, request in enumerate(requests):
            unknown_until = self._unknown.get(request.service)
            if unknown_until is not None and now < unknown_until:
                results[index] = self._unknown_outcome(request.service)
            else:
                pending.append(index)
        if pending:
            services = [requests[i].service for i in pending]
            routed = max(set(services), key=services.count)
            payloads = [requests[i].model_dump(mode="json", exclude_none=True) for i in pending]
            answers = await self._ask(routed, "recommend_mixed", payloads)
            for index, answer in zip(pending, answers, strict=True):
                results[index] = ModelOutcome(**answer)
                if answer["status"] == 404:
                    self._remember_unknown(requests[index].service)
        return [outcome for outcome in results if outcome is not None]

    async def _ask(self, routed: str, method: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The model deployment's answers, or one error envelope per payload.

        Past ``request_timeout_s`` the call is cancelled (its replica stops between requests of a batch)
        and answered 504; so is it when this request is cancelled (client gone, proxy timeout). A replica
        that dies under the call is left behind: the call is sent once more (recommending is idempotent)
        and Serve routes it to a live replica. A full queue is a 503 at once.
        """
        deadline = time.monotonic() + self._timeout
        for attempt in (1, 2):
            response = getattr(self._handle(routed), method).remote(payloads)
            try:
                answers: list[dict[str, Any]] = await asyncio.wait_for(
                    response, timeout=max(deadline - time.monotonic(), 0.001)
                )
                return answers
            except TimeoutError:
                _cancel(response)
                return _envelopes(len(payloads), 504, f"{routed}: no answer within {self._timeout:g} s")
            except asyncio.CancelledError:
                _cancel(response)
                raise
            except BackPressureError:
                return _envelopes(len(payloads), 503, "the model replicas are busy: retry shortly")
            except REPLICA_LOST as exc:
                if attempt == 1 and deadline - time.monotonic() > 0.5:
                    logger.warning(
                        "model replica lost under a call (%s): sending it again", type(exc).__name__
                    )
                    continue
                return _envelopes(
                    len(payloads), 503, f"model replica unavailable ({type(exc).__name__}): retry shortly"
                )
        raise AssertionError("unreachable")

    def _handle(self, service: str) -> DeploymentHandle:
        handle = self._handles.get(service)
        if handle is None:
            if len(self._handles) >= MAX_CACHED_HANDLES:
                self._handles.clear()
            handle = self._handles[service] = self._models.options(multiplexed_model_id=service)
        return handle

    @staticmethod
    def _unknown_outcome(service: str) -> ModelOutcome:
        return ModelOutcome(
            404,
            error=f"unknown service {service!r}: no published model (GET /v1/services lists the known ones)",
        )

    async def list_services(self) -> list[ServiceInfo]:
        """The services and the versions served, stale-while-revalidate.

        Reading them takes a while on a large registry (the first time: every service verified),
        so nobody waits for it but the very first caller(s): afterwards the cached list is
        answered at once, and a list older than ``services_ttl_s`` starts one background refresh
        (never two at once); its callers and the next ones get the previous list until it ends.
        """
        infos = self._services
        if infos is None:
            async with self._lock:  # the first fill: concurrent first callers wait for one read
                if self._services is None:
                    self._services = await self._first_read()
                    self._services_due = time.monotonic() + self._services_ttl_s
                return self._services
        if time.monotonic() >= self._services_due and self._services_refresh is None:
            self._services_refresh = asyncio.get_running_loop().create_task(self._refresh_services())
        return infos

    def _prefill_services(self) -> None:
        assert self._prefill is not None
        try:
            self._prefill.set_result(self._read_services())
        except BaseException as exc:  # handed to the first caller, who reads again
            self._prefill.set_exception(exc)

    async def _first_read(self) -> list[ServiceInfo]:
        """The prefill's list when it succeeded (waiting for it if it is still running), else a read."""
        if self._prefill is not None:
            prefill, self._prefill = self._prefill, None
            try:
                return await asyncio.wrap_future(prefill)
            except Exception:
                logger.exception("reading the service list at start-up failed; reading it again")
        return await asyncio.to_thread(self._read_services)

    async def _refresh_services(self) -> None:
        """Replace the service list; on failure keep the previous one and try again after the TTL."""
        try:
            self._services = await asyncio.to_thread(self._read_services)
        except Exception:
            logger.exception("refreshing the service list failed; answering the previous one")
        finally:
            self._services_due = time.monotonic() + self._services_ttl_s
            self._services_refresh = None

    def _read_services(self) -> list[ServiceInfo]:
        """One ``ServableVersions.catalog`` (one listing of the registry; the manifests come with
        the verdicts), as the API describes the services."""
        infos = []
        for served in self._servable.catalog():
            manifest = served.manifest  # read while verifying the served version
            if served.version is None or manifest is None:
                infos.append(ServiceInfo(service=served.service, latest_version=served.version))
            else:
                infos.append(
                    ServiceInfo(
                        service=served.service,
                        latest_version=served.version,
                        trained_at=manifest.created_at,
                        metrics=manifest.metrics,
                    )
                )
        return infos

    async def registry_problem(self) -> str | None:
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < HEALTH_TTL_S:
            return self._health[1]
        problem = await asyncio.to_thread(self._probe_registry)
        self._health = (time.monotonic(), problem)
        return problem

    def _probe_registry(self) -> str | None:
        backend: Any = self._registry.backend
        try:
            if hasattr(backend, "check"):
                backend.check()
            else:
                backend.list_keys(f"{self._registry.prefix}/LATEST")
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None


@serve.deployment(name="RecommendationIngress", ray_actor_options={"num_cpus": 0.25}, **INGRESS_OPTIONS)
@serve.ingress()
class RecommendationIngress:
    """HTTP entry point; the FastAPI app is built per replica after the constructor."""

    def __init__(
        self,
        models: DeploymentHandle,
        settings: MoraSettings,
        registry_prefix: str = "models",
        request_timeout_s: float = 30.0,
        answer_cache_ttl_s: float = 0.0,
    ) -> None:
        registry = ModelRegistry.from_settings(settings, prefix=registry_prefix)
        self._backend = ServeBackend(models, registry, request_timeout_s, prefill=True)
        self._token = settings.serve_token.get_secret_value() if settings.serve_token else None
        self._answer_cache = AnswerCache(answer_cache_ttl_s)  # per replica; TTL 0: off (serve.app sets it)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self._backend, token=self._token, answer_cache=self._answer_cache)
