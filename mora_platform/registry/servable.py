"""Which version of a service is actually served: LATEST when it verifies, else the newest that does.

The serving replicas (``serve.model_slots``) refuse a version whose bytes differ from its manifest
and fall back to an older one; a listing that only read ``LATEST`` would advertise the refused
version. :class:`ServableVersions` applies the same rule for listings (``GET /v1/services``):
resolve LATEST (``ModelRegistry.resolve_latest``), then walk down from it to the first version
that verifies. Verifying downloads every byte and checks the publisher's signature, so a version
written straight into storage is refused like a tampered one.

Verifying every version of 1,000 services on each refresh cost ~16,000 requests, so a verdict is
kept for as long as the bytes it judged are unchanged. Everything is read through one listing
(``catalog``: of the registry prefix; ``servable``: of one service's prefix) that carries each
object's size and fingerprint (S3's ETag; ``backend.list_blobs``), and the registry's own checks
run on that listing (``ModelRegistry.with_backend``). The rule:

* A (service, version) verdict is tied to the fingerprint of all the version's objects (keys,
  sizes, ETags) and of the trust settings (signing key id, ``MORA_ACCEPT_UNSIGNED``); while a
  listing shows that same fingerprint it is reused at any age, with no request.
* A version is verified in full (every byte, the signature) when first seen or when its
  fingerprint changed: a tampered file, a recomputed manifest, a forged copy that LATEST names
  are refused at the next listing. A refusal is kept for ``max_age_s`` even if the files change
  meanwhile (a broken version is downloaded at most that often), so a repair is advertised at
  most ``max_age_s`` after it.
* Without a fingerprint (a backend without ``list_objects``, an object listed without ETag, a
  local file changed in the last moment) a verdict is reused for ``max_age_s``, then the version
  is verified in full again.
* An ETag that is a plain MD5 is checked against the bytes verified: a verdict is tied to a
  fingerprint only when the fingerprint describes the very bytes checked (a file swapped during
  the verification gets no fingerprint, so the rule above applies).
* ``LATEST`` pointers are read again only when their ETag changed; the manifest read while
  verifying is kept with the verdict (``Servable.manifest``), so the listing's ``trained_at`` and
  metrics cost no request.

So a refresh where nothing changed costs the listing pages (1,000 keys each) and nothing else.
An unsigned version accepted by ``MORA_ACCEPT_UNSIGNED`` is served degraded, saying so.
The service list alone (``services``, one listing of the registry prefix) is reused for
``services_max_age_s``: a service published meanwhile is listed at most that long after.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mora_platform.registry.backend import BlobBackend, BlobInfo, list_blobs
from mora_platform.registry.errors import (
    ArtifactIntegrityError,
    BlobNotFoundError,
    ModelNotFoundError,
    RegistryError,
)
from mora_platform.registry.manifest import Manifest
from mora_platform.registry.model_registry import LATEST_NAME, ModelRegistry
from mora_platform.registry.names import validate_service_name

#: How long a verdict is reused when no fingerprint vouches for it, and a refusal at least.
DEFAULT_VERIFY_MAX_AGE_S = 30.0
#: How long a listing of the registry's services is reused (listing 1,000 services reads every key).
DEFAULT_SERVICES_MAX_AGE_S = 30.0
#: Services resolved at once by ``catalog`` (the first one verifies every service: S3 latency bound).
DEFAULT_WORKERS = 8
_MAX_ENTRIES = 16384
_MAX_POINTER_BYTES = 1024  # a LATEST pointer is one version name; anything longer is not cached
_UNSIGNED = "manifest not signed, accepted because MORA_ACCEPT_UNSIGNED is set"
_MD5 = re.compile(r"[0-9a-fA-F]{32}")

#: (signing key id, accept unsigned): a verdict holds only under the settings it was made with.
_Trust = tuple[str | None, bool]
_Fingerprint = tuple[_Trust, tuple[tuple[str, int, str], ...]]


@dataclass(frozen=True)
class Servable:
    """The version a fresh replica serves for ``service`` (None: none verifies), and why it is
    not simply what LATEST names (``degraded_reason``). ``manifest``: the served version's
    manifest as read when it was verified (None when nothing is served)."""

    service: str
    version: str | None
    degraded_reason: str | None = None
    manifest: Manifest | None = field(default=None, compare=False, repr=False)

    @property
    def degraded(self) -> bool:
        return self.degraded_reason is not None


@dataclass(frozen=True)
class _Verdict:
    """The outcome of verifying one version in full, and what it was made of."""

    fingerprint: _Fingerprint | None  # None: not tied to the stored objects (reused for max_age_s)
    checked_at: float
    refusal: str | None  # None: verifies; starts with _UNSIGNED: served, degraded; else refused
    manifest: Manifest | None  # the manifest read while verifying (None when refused)

    @property
    def served(self) -> bool:
        return self.refusal is None or self.refusal.startswith(_UNSIGNED)


class _Listing:
    """One listing of the keys under ``scope``: key -> ``BlobInfo``, looked up by prefix."""

    def __init__(self, scope: str, infos: list[BlobInfo]) -> None:
        self.scope = scope
        self.infos = {info.key: info for info in infos}
        self.keys = sorted(self.infos)

    def covers(self, key: str) -> bool:
        return key.startswith(self.scope)

    def under(self, prefix: str) -> list[BlobInfo]:
        found = []
        for index in range(bisect.bisect_left(self.keys, prefix), len(self.keys)):
            key = self.keys[index]
            if not key.startswith(prefix):
                break
            found.append(self.infos[key])
        return found

    def fingerprint(self, prefix: str, trust: _Trust) -> _Fingerprint | None:
        """What every object under ``prefix`` is (None when one has no fingerprint)."""
        objects = []
        for info in self.under(prefix):
            if info.etag is None:
                return None
            objects.append((info.key, info.size, info.etag))
        return (trust, tuple(objects)) if objects else None


class _ListedBackend:
    """A read-only ``BlobBackend`` answering from one listing.

    Within the listing's scope ``list_keys`` and ``exists`` cost no request and a key the listing
    does not hold is missing; ``get_bytes`` reads the object, except a LATEST pointer whose ETag
    is the one it had when last read (``pointers``, shared across listings). Keys whose bytes do
    not match their listed MD5 ETag (changed since the listing) are remembered (``changed_under``).
    """

    def __init__(
        self, backend: BlobBackend, listing: _Listing, pointers: dict[str, tuple[str, bytes]]
    ) -> None:
        self.backend = backend
        self.listing = listing
        self.pointers = pointers
        self._unbound: set[str] = set()
        self._lock = threading.Lock()  # catalog resolves services on several threads

    def list_keys(self, prefix: str) -> list[str]:
        if not self.listing.covers(prefix):
            return self.backend.list_keys(prefix)
        return [info.key for info in self.listing.under(prefix)]

    def exists(self, key: str) -> bool:
        if not self.listing.covers(key):
            return self.backend.exists(key)
        return key in self.listing.infos

    def get_bytes(self, key: str) -> bytes:
        if not self.listing.covers(key):
            return self.backend.get_bytes(key)
        info = self.listing.infos.get(key)
        if info is None:
            raise BlobNotFoundError(key)
        pointer = key.endswith(f"/{LATEST_NAME}")
        if pointer and info.etag is not None:
            cached = self.pointers.get(key)
            if cached is not None and cached[0] == info.etag:
                return cached[1]
        data = self.backend.get_bytes(key)
        if info.etag is not None and _changed_since_listed(info.etag, data):
            with self._lock:
                self._unbound.add(key)
        elif pointer and info.etag is not None and len(data) <= _MAX_POINTER_BYTES:
            self.pointers[key] = (info.etag, data)
        return data

    def changed_under(self, prefix: str) -> bool:
        """Whether a key under ``prefix`` was read with bytes other than the listing's."""
        with self._lock:
            return any(key.startswith(prefix) for key in self._unbound)

    def put_bytes(self, key: str, data: bytes) -> None:
        raise RegistryError(f"cannot write {key}: a listing view of the registry is read-only")

    def delete(self, key: str) -> None:
        raise RegistryError(f"cannot delete {key}: a listing view of the registry is read-only")


def _changed_since_listed(etag: str, data: bytes) -> bool:
    """True when ``etag`` is a plain MD5 (a single-part S3 upload) that ``data`` does not match;
    other ETags (multipart, encrypted, local stat fingerprints) cannot be checked: False."""
    plain = etag.strip('"')
    if not _MD5.fullmatch(plain):
        return False
    return hashlib.md5(data, usedforsecurity=False).hexdigest() != plain.lower()


@dataclass(frozen=True)
class _View:
    """The registry as one listing saw it, and the trust settings at that moment."""

    registry: ModelRegistry
    backend: _ListedBackend
    trust: _Trust


class ServableVersions:
    """Per-service servable version from a registry; verdicts reused while the stored objects are
    unchanged (see the module docstring), or for ``max_age_s`` when that cannot be told."""

    def __init__(
        self,
        registry: ModelRegistry,
        max_age_s: float = DEFAULT_VERIFY_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
        services_max_age_s: float = DEFAULT_SERVICES_MAX_AGE_S,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.registry = registry
        self.max_age_s = max_age_s
        self.services_max_age_s = services_max_age_s
        self.workers = max(1, workers)
        self._clock = clock
        self._verdicts: OrderedDict[tuple[str, str], _Verdict] = OrderedDict()
        self._pointers: dict[str, tuple[str, bytes]] = {}
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
        """The newest version at or below LATEST's that verifies (errors reaching S3 propagate).

        Costs one listing of the service's prefix, plus LATEST when it changed and a full
        verification of each version whose objects changed.
        """
        view = self._view(f"{self.registry.prefix}/{validate_service_name(service)}/")
        return self._servable(view, service)

    def catalog(self) -> list[Servable]:
        """Every service of the registry with its servable version and that version's manifest.

        One listing of the registry prefix (on S3, one request per 1,000 keys) answers which
        services and versions exist and whether each verdict still holds; requests beyond it go
        only to what changed since the previous call (LATEST pointers, new or changed versions).
        The first call verifies every service's version, ``workers`` services at a time.
        Errors reaching the storage propagate.
        """
        view = self._view(f"{self.registry.prefix}/")
        services = view.registry.list_services()
        self._services = (self._clock(), services)
        if self.workers > 1 and len(services) > 1:
            with ThreadPoolExecutor(
                max_workers=min(self.workers, len(services)), thread_name_prefix="servable"
            ) as pool:
                found = list(pool.map(lambda service: self._servable(view, service), services))
        else:
            found = [self._servable(view, service) for service in services]
        self._forget_unlisted(view.backend.listing)
        return found

    def _view(self, scope: str) -> _View:
        backend = _ListedBackend(
            self.registry.backend, _Listing(scope, list_blobs(self.registry.backend, scope)), self._pointers
        )
        trust = (self.registry.signing_key_id(), self.registry.accept_unsigned)
        return _View(self.registry.with_backend(backend), backend, trust)

    def _servable(self, view: _View, service: str) -> Servable:
        resolved = view.registry.resolve_latest(service)
        problems = [resolved.problem] if resolved.problem else []
        for version in view.registry.serving_candidates(resolved):
            verdict = self._verdict(view, service, version)
            if verdict.served:
                if verdict.refusal is not None:
                    problems.append(f"version {version}: {verdict.refusal}")
                reason = "; ".join(problems) + f"; serving {version}" if problems else None
                return Servable(service, version, reason, verdict.manifest)
            problems.append(f"version {version} refused: {verdict.refusal}")
        return Servable(service, None, "; ".join(problems) or None)

    def _verdict(self, view: _View, service: str, version: str) -> _Verdict:
        """The cached verdict on ``version`` when it still holds, else a full verification."""
        key = (service, version)
        prefix = f"{view.registry.prefix}/{service}/{version}/"
        fingerprint = view.backend.listing.fingerprint(prefix, view.trust)
        now = self._clock()
        with self._lock:
            cached = self._verdicts.get(key)
            if cached is not None and self._holds(cached, fingerprint, now):
                self._verdicts.move_to_end(key)
                return cached
        manifest: Manifest | None = None
        try:
            manifest = view.registry.verify(service, version)
            refusal = None if manifest.signature is not None else _UNSIGNED
        except (ArtifactIntegrityError, ModelNotFoundError) as exc:
            manifest, refusal = None, str(exc)
        if view.backend.changed_under(prefix):
            fingerprint = None  # the bytes checked are not the ones listed
        verdict = _Verdict(fingerprint, now, refusal, manifest)
        with self._lock:
            self._verdicts[key] = verdict
            self._verdicts.move_to_end(key)
            while len(self._verdicts) > _MAX_ENTRIES:
                self._verdicts.popitem(last=False)
        return verdict

    def _holds(self, cached: _Verdict, fingerprint: _Fingerprint | None, now: float) -> bool:
        """Whether ``cached`` may be reused for a version the listing fingerprints so."""
        if fingerprint is not None and cached.fingerprint == fingerprint:
            return True  # the very objects that were verified
        if now - cached.checked_at >= self.max_age_s:
            return False
        if not cached.served:
            return True  # a refused version is verified again at most once per max_age_s
        return fingerprint is None and cached.fingerprint is None  # nothing to compare: by age

    def _forget_unlisted(self, listing: _Listing) -> None:
        """Drop verdicts and pointers of versions and services the full listing no longer holds."""
        with self._lock:
            for service, version in list(self._verdicts):
                if not listing.under(f"{self.registry.prefix}/{service}/{version}/"):
                    del self._verdicts[(service, version)]
            for key in list(self._pointers):
                if key not in listing.infos:
                    del self._pointers[key]
