"""Which version of a service is actually served: LATEST when it verifies, else the newest that does.

The serving replicas (``serve.model_slots``) refuse a version whose bytes differ from its manifest
and fall back to an older one; a listing that only read ``LATEST`` would advertise the refused
version. :class:`ServableVersions` applies the same rule for listings (``GET /v1/services``):
resolve LATEST (``ModelRegistry.resolve_latest``), then walk down from it to the first version
that verifies. Verifying downloads every byte and checks the publisher's signature, so a version
written straight into storage is refused like a tampered one; each (service, version) result is
remembered for ``max_age_s``; a repaired or newly tampered file is seen at most that long after the
change. An unsigned version accepted by ``MORA_ACCEPT_UNSIGNED`` is served degraded, saying so.
The service list itself (``services``, one listing of the registry prefix) is reused for
``services_max_age_s``: a service published meanwhile is listed at most that long after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mora_platform.registry.errors import ArtifactIntegrityError, ModelNotFoundError
from mora_platform.registry.model_registry import ModelRegistry

#: How long a verification result (valid or refused) is reused.
DEFAULT_VERIFY_MAX_AGE_S = 30.0
#: How long a listing of the registry's services is reused (listing 1,000 services reads every key).
DEFAULT_SERVICES_MAX_AGE_S = 30.0
_MAX_ENTRIES = 4096
_UNSIGNED = "manifest not signed, accepted because MORA_ACCEPT_UNSIGNED is set"


@dataclass(frozen=True)
class Servable:
    """The version a fresh replica serves for ``service`` (None: none verifies), and why it is
    not simply what LATEST names (``degraded_reason``)."""

    service: str
    version: str | None
    degraded_reason: str | None = None

    @property
    def degraded(self) -> bool:
        return self.degraded_reason is not None


class ServableVersions:
    """Per-service servable version from a registry, verification results cached for ``max_age_s``."""

    def __init__(
        self,
        registry: ModelRegistry,
        max_age_s: float = DEFAULT_VERIFY_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
        services_max_age_s: float = DEFAULT_SERVICES_MAX_AGE_S,
    ) -> None:
        self.registry = registry
        self.max_age_s = max_age_s
        self.services_max_age_s = services_max_age_s
        self._clock = clock
        self._checked: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._services: tuple[float, list[str]] | None = None
        self._lock = threading.Lock()

    def services(self) -> list[str]:
        """``registry.list_services()``, listed at most once per ``services_max_age_s``."""
        now = self._clock()
        cached = self._services
        if cached is not None and now - cached[0] < self.services_max_age_s:
            return list(cached[1])
        listed = self.registry.list_services()
        self._services = (now, listed)
        return list(listed)

    def servable(self, service: str) -> Servable:
        """The newest version at or below LATEST's that verifies (errors reaching S3 propagate)."""
        resolved = self.registry.resolve_latest(service)
        problems = [resolved.problem] if resolved.problem else []
        for version in self.registry.serving_candidates(resolved):
            refusal = self._refusal(service, version)
            if refusal is None or refusal.startswith(_UNSIGNED):
                if refusal is not None:
                    problems.append(f"version {version}: {refusal}")
                reason = "; ".join(problems) + f"; serving {version}" if problems else None
                return Servable(service, version, reason)
            problems.append(f"version {version} refused: {refusal}")
        return Servable(service, None, "; ".join(problems) or None)

    def _refusal(self, service: str, version: str) -> str | None:
        """Why ``version`` is refused, None when it verifies (cached); a text starting with
        ``_UNSIGNED`` for an unsigned version that is accepted (served, degraded)."""
        key = (service, version)
        now = self._clock()
        with self._lock:
            cached = self._checked.get(key)
        if cached is not None and now - cached[0] < self.max_age_s:
            return cached[1]
        try:
            manifest = self.registry.verify(service, version)
            refusal = None if manifest.signature is not None else _UNSIGNED
        except (ArtifactIntegrityError, ModelNotFoundError) as exc:
            refusal = str(exc)
        with self._lock:
            if len(self._checked) >= _MAX_ENTRIES:
                self._checked = {k: v for k, v in self._checked.items() if now - v[0] < self.max_age_s}
                if len(self._checked) >= _MAX_ENTRIES:
                    self._checked.clear()
            self._checked[key] = (now, refusal)
        return refusal
