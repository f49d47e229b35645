"""The downstream Serve deployment: every service's model, multiplexed by service name.

Requests arrive through ``handle.options(multiplexed_model_id=service)``, so Serve routes a
service to a replica that already holds it; each replica keeps up to
``MAX_MODELS_PER_REPLICA`` models (LRU) and loads the others from S3 on demand, checksums
verified. A background task per replica checks each loaded service's LATEST at most every
``reload_interval_s`` seconds (``user_config``, changeable live through ``reconfigure``) and
swaps in new versions without a restart; a version that fails verification is refused and
the previous one keeps serving, marked degraded. A request that sends no history and no what-if
context is answered on the service's newest rows, which the replica reads from the model's dataset
in S3 (``RecentHistory``, cached ``MORA_SERVE_HISTORY_MAX_AGE_S``). Blocking work runs in worker threads.

Inference runs one request at a time in the replica's inference thread (``_infer``): a call that is
cancelled (the ingress timed out, the client went away) stops after the request in progress, calls
interleave instead of one large batch holding the thread for all of its requests, and a replica with
more than ``MAX_PENDING_PAYLOADS`` requests waiting answers 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ray import serve

from mora_platform.registry import ModelRegistry
from mora_platform.registry.recent_history import RecentHistory
from mora_platform.settings import MoraSettings
from mora_platform.storage.object_store import ObjectStore
from serve.model_slots import (
    ModelFactory,
    ModelLoader,
    NoUsableVersionError,
    ServiceSlot,
    UnknownServiceError,
    load_service_model,
    outcome,
)
from serve.resilience import MAX_PENDING_PAYLOADS, MODELS_OPTIONS

logger = logging.getLogger("ray.serve")

# Fixed when the class is defined (Serve's decorator takes a constant); override per cluster by env.
MAX_MODELS_PER_REPLICA = int(os.environ.get("MORA_SERVE_MAX_MODELS_PER_REPLICA", "64"))
DEFAULT_RELOAD_INTERVAL_S = 10.0


@serve.deployment(
    name="ServiceModels",
    ray_actor_options={"num_cpus": 0.5},
    user_config={"reload_interval_s": DEFAULT_RELOAD_INTERVAL_S},
    # The ingress logs every HTTP request; per-call logs here would double the logging cost.
    logging_config={"enable_access_log": False},
    **MODELS_OPTIONS,
)
class ServiceModels:
    """Per-service ensembles behind one deployment (multiplexed)."""

    def __init__(
        self,
        settings: MoraSettings,
        registry_prefix: str = "models",
        factory: ModelFactory | None = None,
    ) -> None:
        self._registry = ModelRegistry.from_settings(settings, prefix=registry_prefix)
        self._cache_dir = Path(tempfile.mkdtemp(prefix="mora-serve-models-"))
        recent = None
        if settings.serve_history_rows > 0:
            recent = RecentHistory(
                ObjectStore.from_settings(settings),
                rows=settings.serve_history_rows,
                max_age_s=settings.serve_history_max_age_s,
            )
        self._loader = ModelLoader(
            self._registry, self._cache_dir, factory or load_service_model, recent=recent
        )
        # One inference thread keeps TensorFlow from oversubscribing the replica's CPU share;
        # loads get their own so a slow download never stalls answers for loaded services.
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mora-infer")
        self._load_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mora-load")
        self._slots: weakref.WeakValueDictionary[str, ServiceSlot] = weakref.WeakValueDictionary()
        self._reload_interval_s = DEFAULT_RELOAD_INTERVAL_S
        self._refresher: asyncio.Task[None] | None = None
        self._pending = 0  # requests waiting for or in the inference thread

    def reconfigure(self, config: Mapping[str, Any] | None) -> None:
        """Apply ``user_config`` (``reload_interval_s``) without restarting the replica."""
        interval = float((config or {}).get("reload_interval_s", DEFAULT_RELOAD_INTERVAL_S))
        if not 0.1 <= interval <= 86_400:
            raise ValueError(f"user_config.reload_interval_s must be within 0.1..86400 s, got {interval}")
        self._reload_interval_s = interval

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_model(self, service: str) -> ServiceSlot:
        """Load one service's slot (called by Serve's LRU cache on a miss)."""
        loop = asyncio.get_running_loop()
        slot = await loop.run_in_executor(self._load_pool, self._loader.load, service)
        self._slots[service] = slot
        self._ensure_refresher()
        return slot

    async def recommend(self, payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Answer validated request payloads for the service this call was routed for."""
        service = serve.get_multiplexed_model_id()
        slot, failure = await self._slot(service)
        if slot is None:
            return [failure] * len(payloads)
        cached = self._loader.cached_answers(slot, payloads)
        if cached is not None:  # memoised: no thread hop, no model run
            return cached
        return await self._infer(slot, payloads)

    async def _infer(self, slot: ServiceSlot, payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Answers computed one request at a time in the inference thread (see the module's doc)."""
        if self._pending + len(payloads) > MAX_PENDING_PAYLOADS:
            busy = f"replica busy ({self._pending} requests waiting): retry shortly"
            return [outcome(503, error=busy)] * len(payloads)
        self._pending += len(payloads)
        loop = asyncio.get_running_loop()
        answers: list[dict[str, Any]] = []
        try:
            for payload in payloads:  # a cancellation lands here, between two requests
                answers += await loop.run_in_executor(self._infer_pool, self._loader.answer, slot, [payload])
        finally:
            self._pending -= len(payloads)
        return answers

    async def recommend_mixed(self, payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Answer payloads for any mix of services (each names its own), in order."""
        results: list[dict[str, Any] | None] = [None] * len(payloads)
        work: list[tuple[ServiceSlot, list[int]]] = []
        groups: dict[str, list[int]] = {}
        for index, payload in enumerate(payloads):
            groups.setdefault(str(payload["service"]), []).append(index)
        for service, indices in groups.items():
            slot, failure = await self._slot(service)
            if slot is None:
                for index in indices:
                    results[index] = failure
                continue
            cached = self._loader.cached_answers(slot, [payloads[i] for i in indices])
            if cached is None:
                work.append((slot, indices))
                continue
            for index, answer in zip(indices, cached, strict=True):
                results[index] = answer
        for slot, indices in work:
            answers = await self._infer(slot, [payloads[i] for i in indices])
            for index, answer in zip(indices, answers, strict=True):
                results[index] = answer
        return [result if result is not None else outcome(500, error="not answered") for result in results]

    async def _slot(self, service: str) -> tuple[ServiceSlot | None, dict[str, Any]]:
        """(slot, {}) or (None, the error envelope every request for ``service`` gets)."""
        try:
            return await self.get_model(service), {}
        except UnknownServiceError as exc:
            return None, outcome(404, error=str(exc))
        except NoUsableVersionError as exc:
            return None, outcome(503, error=str(exc))
        except Exception as exc:  # registry unreachable and the like: not the client's fault
            logger.exception("loading %s failed", service)
            return None, outcome(503, error=f"model for {service!r} unavailable: {type(exc).__name__}: {exc}")

    async def loaded_versions(self) -> dict[str, str]:
        """service -> version served by this replica (for tests and ``mora serve status``)."""
        return {service: slot.version for service, slot in list(self._slots.items())}

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        """Check each loaded service's LATEST every ``reload_interval_s`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self._reload_interval_s, 1.0))
            now = time.monotonic()
            for slot in list(self._slots.values()):
                if now - slot.checked_at < self._reload_interval_s:
                    continue
                try:
                    await loop.run_in_executor(self._load_pool, self._loader.refresh, slot)
                except Exception:  # the registry may be briefly unreachable; try again next round
                    logger.exception("checking LATEST of %s failed", slot.service)

    def __del__(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        self._infer_pool.shutdown(wait=False)
        self._load_pool.shutdown(wait=False)
        self._loader.close()
