"""Versioned model bundles in object storage, published atomically and verified on fetch.

Layout under ``prefix`` (default ``models``)::

    models/{service}/{version}/<bundle files>
    models/{service}/{version}/manifest.json   written after every file
    models/{service}/LATEST                    written last: the published version
    models/{service}/tuned_config.json         best config found by tuning, if any

A version without a manifest is incomplete and never returned; one with a manifest becomes
*the* version only when ``LATEST`` names it. Readers verify every byte against the manifest, and
the manifest against the publisher's signature (``registry.signing``): a version written straight
into storage, however consistent, is refused (``ManifestSignatureError``), so the serving fallback
(``resolve_latest`` / ``serving_candidates``) goes on to the previous version that verifies.

``LATEST`` only moves forward under concurrent publishes: S3 offers no compare-and-swap here, so a
publish leaves a newer pointer alone and, after writing, re-reads it and the complete versions and
repairs it to the newest complete version when a concurrent publish was overwritten (see
``_advance_latest``). A reader that finds ``LATEST`` missing, garbled or naming a deleted version
falls back to a complete version and says why (``resolve_latest``).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mora_platform.registry.backend import BlobBackend, not_found_errors
from mora_platform.registry.errors import (
    ArtifactIntegrityError,
    ModelNotFoundError,
    RegistryError,
)
from mora_platform.registry.local_bundle import (
    FetchedBundle,
    matches_manifest,
    swap_into_place,
)
from mora_platform.registry.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    code_version,
    library_versions,
    sha256_bytes,
    split_metadata,
)
from mora_platform.registry.names import (
    MAX_SERVICE_NAME_LENGTH,
    SERVICE_NAME_PATTERN,
    VERSION_PATTERN,
    check_relative_name,
    new_version,
    validate_service_name,
    validate_version,
)
from mora_platform.registry.signing import check_signature as check_signature_of
from mora_platform.registry.signing import key_id, sign_manifest
from mora_platform.settings import (
    accept_unsigned_from_environment,
    checked_signing_key,
    ensure_signing_key,
    signing_key_from_environment,
    signing_key_path,
)

if TYPE_CHECKING:
    from mora_platform.settings import MoraSettings

log = logging.getLogger(__name__)

LATEST_NAME = "LATEST"
#: Rounds of "re-read LATEST, repair it" a publish makes after writing it (one is enough unless
#: several publishes of the service keep overwriting each other).
LATEST_REPAIR_ROUNDS = 5
#: Files of one version fetched at once (S3 round trips overlap; boto3's clients are thread-safe).
FETCH_THREADS = 8
TUNED_CONFIG_NAME = "tuned_config.json"


def _json_default(value: Any) -> Any:
    """Coerce numpy scalars, datetimes and paths that training reports may contain."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"value {value!r} of type {type(value).__name__} is not JSON-serialisable")


@dataclass(frozen=True)
class LatestResolution:
    """What ``LATEST`` of a service leads to.

    ``version`` is what LATEST names when that is a complete version; otherwise (LATEST missing,
    not a version, or naming a version without a manifest) a complete fallback, and ``problem``
    says why. ``version`` is None when no complete version exists at all.
    """

    service: str
    version: str | None
    pointer: str | None  # LATEST's content (stripped, shortened), None when there is no LATEST
    problem: str | None = None

    @property
    def degraded(self) -> bool:
        return self.problem is not None


class ModelRegistry:
    """Publish, list, fetch and prune model versions on any :class:`BlobBackend`."""

    def __init__(
        self,
        backend: BlobBackend,
        prefix: str = "models",
        *,
        signing_key: str | None = None,
        accept_unsigned: bool | None = None,
        home: Path | None = None,
    ) -> None:
        """``signing_key``: the manifest signing key; None reads ``MORA_SIGNING_KEY``, else
        ``{home}/signing_key`` (``home``: ``$MORA_HOME`` or ``~/.mora``) at each use, and a publish
        without any creates that file. ``accept_unsigned``: None reads ``MORA_ACCEPT_UNSIGNED``."""
        prefix = prefix.strip("/")
        if not prefix:
            raise ValueError("registry prefix must not be empty")
        self.backend = backend
        self.prefix = prefix
        self._signing_key = (
            checked_signing_key(signing_key, "the registry's signing_key") if signing_key else None
        )
        self._accept_unsigned = accept_unsigned
        self._home = Path(home) if home is not None else None

    @classmethod
    def from_settings(cls, settings: MoraSettings, prefix: str = "models") -> ModelRegistry:
        """A registry on the S3 bucket the settings name, with their signing key (or home's file)."""
        from mora_platform.storage.object_store import ObjectStore

        key = settings.signing_key.get_secret_value() if settings.signing_key is not None else None
        return cls(
            ObjectStore.from_settings(settings),
            prefix=prefix,
            signing_key=key or None,
            accept_unsigned=settings.accept_unsigned or None,
            home=settings.home,
        )

    def with_backend(self, backend: BlobBackend) -> ModelRegistry:
        """This registry (prefix, signing key, settings) over another backend, e.g. a read-only
        view answering from one listing (``ServableVersions``), so its checks are reused as is."""
        view = copy.copy(self)
        view.backend = backend
        return view

    # ---- signing --------------------------------------------------------------------------

    def _reader_key(self) -> tuple[str, str] | None:
        """(signing key, where it came from), or None when this process holds none."""
        if self._signing_key is not None:
            return self._signing_key, "the registry's configuration"
        return signing_key_from_environment(self._home)

    def _publisher_key(self) -> str:
        """The signing key, created in ``{home}/signing_key`` (0600) when none is configured."""
        found = self._reader_key()
        if found is not None:
            return found[0]
        path = ensure_signing_key(signing_key_path(self._home))
        log.warning(
            "created the manifest signing key %s (0600, key %s): every reader of this registry "
            "needs the same key (MORA_SIGNING_KEY or $MORA_HOME/signing_key)",
            path,
            self.signing_key_id(),
        )
        found = self._reader_key()
        if found is None:  # MORA_SIGNING_KEY set empty, or the file unreadable right after writing
            raise RegistryError(f"cannot read the manifest signing key just created at {path}")
        return found[0]

    @property
    def accept_unsigned(self) -> bool:
        """Whether manifests without a signature are accepted (``MORA_ACCEPT_UNSIGNED``)."""
        if self._accept_unsigned is not None:
            return self._accept_unsigned
        return accept_unsigned_from_environment()

    def signing_key_id(self) -> str | None:
        """The fingerprint of the key this registry signs and verifies with (None: no key)."""
        found = self._reader_key()
        return key_id(found[0]) if found is not None else None

    # ---- keys -----------------------------------------------------------------------------

    def _service_prefix(self, service: str) -> str:
        return f"{self.prefix}/{validate_service_name(service)}/"

    def _key(self, service: str, *parts: str) -> str:
        return self._service_prefix(service) + "/".join(parts)

    def _get_optional(self, key: str) -> bytes | None:
        try:
            return self.backend.get_bytes(key)
        except not_found_errors():
            return None

    def _stored_versions(self, service: str) -> dict[str, set[str]]:
        """version -> names of the files stored under it (manifest.json included)."""
        base = self._service_prefix(service)
        versions: dict[str, set[str]] = {}
        for key in self.backend.list_keys(base):
            version, _, name = key[len(base) :].partition("/")
            if name and VERSION_PATTERN.match(version):
                versions.setdefault(version, set()).add(name)
        return versions

    # ---- publishing -----------------------------------------------------------------------

    def publish(
        self,
        service: str,
        bundle_dir: Path,
        *,
        metadata: dict[str, Any],
        version: str | None = None,
    ) -> str:
        """Upload every file of ``bundle_dir``, then ``manifest.json``, then ``LATEST``; return the version."""
        validate_service_name(service)
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise FileNotFoundError(f"bundle directory {bundle_dir} does not exist")
        paths = sorted(path for path in bundle_dir.rglob("*") if path.is_file() or path.is_symlink())
        if not paths:
            raise ValueError(f"bundle directory {bundle_dir} holds no files")
        for path in paths:
            if path.is_symlink():
                raise ValueError(f"bundle file {path} is a symlink; publish regular files only")
        names = [path.relative_to(bundle_dir).as_posix() for path in paths]
        if MANIFEST_NAME in names:
            raise ValueError(
                f"bundle directory {bundle_dir} already holds a {MANIFEST_NAME}; the registry writes it"
            )

        try:
            clean_metadata = json.loads(json.dumps(metadata, default=_json_default))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"publish metadata for {service!r}: {exc}") from None
        if not isinstance(clean_metadata, dict):
            raise ValueError(
                f"publish metadata for {service!r} must be a dict, got {type(metadata).__name__}"
            )
        known, extra = split_metadata(clean_metadata)

        now = datetime.now(UTC)
        version = validate_version(version) if version is not None else new_version(now)
        if self.backend.exists(self._key(service, version, MANIFEST_NAME)):
            raise RegistryError(f"{service}/{version} is already published")
        try:  # validate metadata before the first upload
            Manifest(
                service=service,
                version=version,
                created_at=now,
                files={},
                code=code_version(),
                libraries=library_versions(),
                extra=extra,
                **known,
            )
        except ValidationError as exc:
            raise ValueError(f"publish metadata for {service!r} is invalid: {exc}") from None

        files: dict[str, dict[str, Any]] = {}
        for path, name in zip(paths, names, strict=True):
            data = path.read_bytes()
            files[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
            self.backend.put_bytes(self._key(service, version, name), data)
        manifest = Manifest.model_validate(
            {
                "service": service,
                "version": version,
                "created_at": now,
                "files": files,
                "code": code_version(),
                "libraries": library_versions(),
                "extra": extra,
                **known,
            }
        )
        manifest = sign_manifest(manifest, self._publisher_key())
        self.backend.put_bytes(self._key(service, version, MANIFEST_NAME), manifest.to_json_bytes())
        pointed = self._advance_latest(service, version)
        log.info("published %s/%s (%d files, %d bytes)", service, version, len(files), manifest.total_bytes)
        if pointed != version:
            log.info("%s: LATEST names %s, newer than the version just published", service, pointed)
        return version

    def _read_pointer(self, service: str) -> str | None:
        """The version LATEST names, None when it is missing or not a version."""
        raw = self._get_optional(self._key(service, LATEST_NAME))
        if raw is None:
            return None
        pointer = raw.decode("utf-8", errors="replace").strip()
        return pointer if VERSION_PATTERN.match(pointer) else None

    def _advance_latest(self, service: str, version: str) -> str | None:
        """Point LATEST at the complete ``version`` unless it names a newer complete one; return
        what it names afterwards.

        Plain S3 writes are last-writer-wins, so two publishes racing (both read the old pointer,
        the newer writes first, the older overwrites it) would move LATEST back. The ordering rule
        closes that: after every write, the writer re-reads LATEST and the complete versions and,
        when a newer complete version exists than LATEST names, writes that one. The last writer
        always re-checks after its own write and sees every manifest written before it (a publish
        writes its manifest before LATEST), so LATEST ends at the newest published version.
        (A publish never moves LATEST back; to roll back, write LATEST by hand.)
        """
        key = self._key(service, LATEST_NAME)
        current = self._read_pointer(service)
        if (
            current is None
            or current <= version
            or not self.backend.exists(self._key(service, current, MANIFEST_NAME))
        ):
            self.backend.put_bytes(key, f"{version}\n".encode())
        for _ in range(LATEST_REPAIR_ROUNDS):
            complete = self.list_versions(service)
            current = self._read_pointer(service)
            newest = complete[-1] if complete else None
            if newest is None or (current is not None and current >= newest):
                return current
            log.warning(
                "%s: LATEST names %s while %s is complete and newer (concurrent publish); repairing",
                service,
                current,
                newest,
            )
            self.backend.put_bytes(key, f"{newest}\n".encode())
        return self._read_pointer(service)

    # ---- reading --------------------------------------------------------------------------

    def list_services(self) -> list[str]:
        """Services with a LATEST pointer or at least one stored version."""
        services: set[str] = set()
        base = f"{self.prefix}/"
        for key in self.backend.list_keys(base):
            parts = key[len(base) :].split("/")
            if (
                len(parts) < 2
                or not SERVICE_NAME_PATTERN.match(parts[0])
                or len(parts[0]) > MAX_SERVICE_NAME_LENGTH
            ):
                continue
            if parts[1] == LATEST_NAME or (len(parts) > 2 and VERSION_PATTERN.match(parts[1])):
                services.add(parts[0])
        return sorted(services)

    def list_versions(self, service: str, *, include_incomplete: bool = False) -> list[str]:
        """Versions of ``service``, oldest first; only complete ones (with a manifest) unless asked."""
        versions = self._stored_versions(service)
        return sorted(v for v, names in versions.items() if include_incomplete or MANIFEST_NAME in names)

    def latest_version(self, service: str) -> str | None:
        """The version LATEST names if its manifest exists; else the newest complete version not after it."""
        raw = self._get_optional(self._key(service, LATEST_NAME))
        if raw is None:
            return None
        pointer = raw.decode("utf-8", errors="replace").strip()
        if not VERSION_PATTERN.match(pointer):
            log.warning(
                "%s/%s holds %r, not a version; treating as unpublished", service, LATEST_NAME, pointer
            )
            return None
        if self.backend.exists(self._key(service, pointer, MANIFEST_NAME)):
            return pointer
        earlier = [v for v in self.list_versions(service) if v <= pointer]
        log.warning(
            "%s: LATEST names %s whose manifest is missing; using %s",
            service,
            pointer,
            earlier[-1] if earlier else None,
        )
        return earlier[-1] if earlier else None

    def resolve_latest(self, service: str) -> LatestResolution:
        """What to serve for ``service``: the version LATEST names, or a fallback and why.

        LATEST missing or not a version (tampered): the newest complete version. LATEST naming a
        version without a manifest: the newest complete version not after it, else the newest.
        Serving layers verify the result and walk down ``serving_candidates`` when it is refused.
        """
        raw = self._get_optional(self._key(service, LATEST_NAME))
        if raw is None:
            complete = self.list_versions(service)
            if not complete:
                return LatestResolution(service, None, None)
            return LatestResolution(
                service,
                complete[-1],
                None,
                f"{service}: no {LATEST_NAME} pointer; newest complete version is {complete[-1]}",
            )
        pointer = raw.decode("utf-8", errors="replace").strip()
        shown = pointer if len(pointer) <= 80 else pointer[:77] + "..."
        if VERSION_PATTERN.match(pointer):
            if self.backend.exists(self._key(service, pointer, MANIFEST_NAME)):
                return LatestResolution(service, pointer, pointer)
            complete = self.list_versions(service)
            earlier = [v for v in complete if v <= pointer]
            fallback = earlier[-1] if earlier else (complete[-1] if complete else None)
            problem = f"{service}: {LATEST_NAME} names {pointer}, which has no {MANIFEST_NAME}"
        else:
            complete = self.list_versions(service)
            fallback = complete[-1] if complete else None
            problem = f"{service}: {LATEST_NAME} holds {shown!r}, not a version (tampered?)"
        log.warning("%s; falling back to %s", problem, fallback)
        return LatestResolution(service, fallback, shown, problem)

    def serving_candidates(self, resolved: LatestResolution) -> Iterator[str]:
        """``resolved.version``, then every older complete version, newest first (lists lazily)."""
        if resolved.version is None:
            return
        yield resolved.version
        for version in reversed(self.list_versions(resolved.service)):
            if version < resolved.version:
                yield version

    def verify(self, service: str, version: str) -> Manifest:
        """Check every stored byte of one version against its manifest without keeping a copy.

        ``ArtifactIntegrityError`` or ``ModelNotFoundError`` when it would be refused by ``fetch``.
        """
        manifest = self.read_manifest(service, version)
        self._check_stored_names(service, version, manifest)
        for _ in self._verified_files(service, version, manifest):
            pass
        return manifest

    def _verified_files(self, service: str, version: str, manifest: Manifest) -> Iterator[tuple[str, bytes]]:
        """Every file of ``version`` as (name, verified bytes), in name order, fetched
        ``FETCH_THREADS`` at a time: a cold load waits for the slowest GET, not for their sum. The
        first refused file (in name order) raises."""
        entries = sorted(manifest.files.items())
        if len(entries) <= 1:
            for name, entry in entries:
                yield name, self._verified_bytes(service, version, name, entry)
            return
        with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(entries))) as pool:
            fetched = pool.map(lambda item: self._verified_bytes(service, version, *item), entries)
            for (name, _), data in zip(entries, fetched, strict=True):
                yield name, data

    def _check_stored_names(self, service: str, version: str, manifest: Manifest) -> None:
        """The stored file names of ``version`` are exactly the manifest's."""
        stored = self._stored_versions(service).get(version, set()) - {MANIFEST_NAME}
        unexpected = sorted(stored - set(manifest.files))
        if unexpected:
            raise ArtifactIntegrityError(
                service, version, unexpected[0], "stored but not listed in the manifest"
            )
        missing = sorted(set(manifest.files) - stored)
        if missing:
            raise ArtifactIntegrityError(
                service,
                version,
                missing[0],
                "listed in the manifest but not stored",
                expected=manifest.files[missing[0]].sha256,
            )

    def _verified_bytes(self, service: str, version: str, name: str, entry: FileEntry) -> bytes:
        """One stored file's bytes, refused unless they match the manifest entry."""
        try:
            data = self.backend.get_bytes(self._key(service, version, name))
        except not_found_errors():
            raise ArtifactIntegrityError(
                service, version, name, "listed in the manifest but not stored", expected=entry.sha256
            ) from None
        actual = sha256_bytes(data)
        if actual != entry.sha256 or len(data) != entry.bytes:
            problem = "checksum mismatch"
            if len(data) != entry.bytes:
                problem += f", {len(data)} bytes stored vs {entry.bytes} in the manifest"
            raise ArtifactIntegrityError(
                service, version, name, problem, expected=entry.sha256, actual=actual
            )
        return data

    def read_manifest(self, service: str, version: str, *, check_signature: bool = True) -> Manifest:
        """The stored manifest of one version, refused (``ArtifactIntegrityError``) when it is
        unreadable, names another version, or (``check_signature``) is not signed by the publisher."""
        validate_version(version)
        raw = self._get_optional(self._key(service, version, MANIFEST_NAME))
        if raw is None:
            raise ModelNotFoundError(
                service, version, f"no {MANIFEST_NAME} (never published, incomplete or pruned)"
            )
        try:
            manifest = Manifest.from_json_bytes(raw)
        except ValidationError as exc:
            raise ArtifactIntegrityError(
                service, version, MANIFEST_NAME, f"unreadable manifest: {exc}"
            ) from None
        if manifest.service != service or manifest.version != version:
            raise ArtifactIntegrityError(
                service,
                version,
                MANIFEST_NAME,
                f"manifest describes {manifest.service}/{manifest.version}, not {service}/{version}",
            )
        for name in manifest.files:
            if not check_relative_name(name) or name == MANIFEST_NAME:
                raise ArtifactIntegrityError(service, version, name, "unsafe file name in the manifest")
        if check_signature:
            found = self._reader_key()
            signed = check_signature_of(
                raw,
                manifest,
                found[0] if found else None,
                key_source=found[1] if found else "-",
                accept_unsigned=self.accept_unsigned,
            )
            if not signed:
                log.warning("%s/%s: manifest not signed, accepted (MORA_ACCEPT_UNSIGNED)", service, version)
        return manifest

    def fetch(self, service: str, version: str | None, dest: Path) -> FetchedBundle:
        """Download and verify one version into ``dest`` (latest if ``version`` is None).

        The bundle is assembled in a temp directory beside ``dest`` and renamed into place only
        when every file matches the manifest, so ``dest`` never holds a partial bundle. An
        existing ``dest`` that already matches the manifest is reused.
        """
        validate_service_name(service)
        if version is None:
            version = self.latest_version(service)
            if version is None:
                raise ModelNotFoundError(service)
        manifest = self.read_manifest(service, version)
        self._check_stored_names(service, version, manifest)

        dest = Path(dest)
        if dest.is_dir() and matches_manifest(dest, manifest):
            return FetchedBundle(service, version, dest, manifest, cached=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            for name, data in self._verified_files(service, version, manifest):
                target = staging.joinpath(*name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            (staging / MANIFEST_NAME).write_bytes(manifest.to_json_bytes())
            if dest.is_dir() and matches_manifest(dest, manifest):
                # A concurrent fetch finished first: keep its copy.
                shutil.rmtree(staging, ignore_errors=True)
                return FetchedBundle(service, version, dest, manifest, cached=True)
            try:
                swap_into_place(staging, dest)
            except OSError:
                # Another process sharing the cache may have put the same bundle in place first.
                if not (dest.is_dir() and matches_manifest(dest, manifest)):
                    raise
                shutil.rmtree(staging, ignore_errors=True)
                return FetchedBundle(service, version, dest, manifest, cached=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return FetchedBundle(service, version, dest, manifest)

    # ---- retention ------------------------------------------------------------------------

    def prune(self, service: str, keep: int) -> list[str]:
        """Delete old versions, keeping the newest ``keep`` complete ones and always LATEST.

        Versions newer than LATEST (possibly being published right now) are left alone.
        Returns the deleted versions, oldest first.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        latest = self.latest_version(service)
        kept = set(self.list_versions(service)[-keep:])
        if latest is not None:
            kept.add(latest)
        deleted = []
        for version, names in sorted(self._stored_versions(service).items()):
            if version in kept or (latest is not None and version > latest):
                continue
            # Manifest first: the version turns incomplete before its files go.
            ordered = sorted(names, key=lambda name: name != MANIFEST_NAME)
            for name in ordered:
                self.backend.delete(self._key(service, version, name))
            deleted.append(version)
        if deleted:
            log.info("pruned %s: %s", service, ", ".join(deleted))
        return deleted

    # ---- tuned configurations -------------------------------------------------------------

    def save_tuned_config(self, service: str, config: dict[str, Any]) -> None:
        """Store the best training config found for ``service`` (used by ``mora train`` when present)."""
        try:
            body = json.dumps(
                {"schema_version": 1, "saved_at": datetime.now(UTC).isoformat(), "config": config},
                default=_json_default,
                indent=2,
                sort_keys=True,
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tuned config for {service!r}: {exc}") from None
        self.backend.put_bytes(self._key(service, TUNED_CONFIG_NAME), body.encode("utf-8"))

    def load_tuned_config(self, service: str) -> dict[str, Any] | None:
        raw = self._get_optional(self._key(service, TUNED_CONFIG_NAME))
        if raw is None:
            return None
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise RegistryError(f"{self._key(service, TUNED_CONFIG_NAME)} is not valid JSON: {exc}") from None
        if (
            isinstance(document, dict)
            and "schema_version" in document
            and isinstance(document.get("config"), dict)
        ):
            return dict(document["config"])
        if isinstance(document, dict):
            return document
        raise RegistryError(f"{self._key(service, TUNED_CONFIG_NAME)} must hold a JSON object")
