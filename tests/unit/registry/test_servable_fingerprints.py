"""``ServableVersions.catalog``: a refresh reads object bytes only for what changed since the last.

A counting backend stands in for S3: every ``get_bytes`` / ``exists`` is a GET / HEAD and every
listing (``list_objects``) a LIST. A verdict holds while the listing shows the same fingerprint for
every object of the version; a changed object is verified in full and refused when it is wrong.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mora_platform.registry import LocalBlobBackend, ModelRegistry, ServableVersions, new_version
from mora_platform.registry.backend import BlobInfo, list_blobs
from mora_platform.registry.manifest import sha256_bytes

METADATA: dict[str, Any] = {"metrics": {"cpu": {"mae": 0.5}}}


class CountingBackend(LocalBlobBackend):
    """A local backend whose fingerprints are trusted at once, counting the calls S3 would answer."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, settle_s=0.0)
        self.calls: Counter[str] = Counter()
        self.read: list[str] = []  # keys whose bytes were read, in order
        self._count_lock = threading.Lock()

    def _count(self, what: str, key: str | None = None) -> None:
        with self._count_lock:
            self.calls[what] += 1
            if key is not None:
                self.read.append(key)

    def reset(self) -> None:
        with self._count_lock:
            self.calls.clear()
            self.read.clear()

    def get_bytes(self, key: str) -> bytes:
        self._count("get", key)
        return super().get_bytes(key)

    def exists(self, key: str) -> bool:
        self._count("exists")
        return super().exists(key)

    def list_objects(self, prefix: str) -> list[BlobInfo]:
        self._count("list_objects")
        return super().list_objects(prefix)

    def list_keys(self, prefix: str) -> list[str]:
        self._count("list_keys")  # list_objects lists keys once itself
        return super().list_keys(prefix)


def versions(n: int) -> list[str]:
    start = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    return [new_version(start + timedelta(seconds=i)) for i in range(n)]


@pytest.fixture()
def backend(tmp_path: Path) -> CountingBackend:
    return CountingBackend(tmp_path / "store")


@pytest.fixture()
def registry(backend: CountingBackend) -> ModelRegistry:
    return ModelRegistry(backend)


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "config.json").write_text('{"seq_len": 30}')
    (directory / "calibration.json").write_text('{"cpu_offset_millicores": 45}')
    (directory / "lstm.keras").write_bytes(bytes(range(256)) * 4)
    return directory


def served(servable: ServableVersions) -> dict[str, tuple[str | None, bool]]:
    return {s.service: (s.version, s.degraded) for s in servable.catalog()}


def test_a_refresh_with_nothing_changed_reads_no_object_bytes(
    registry: ModelRegistry, backend: CountingBackend, bundle: Path
) -> None:
    first, second = versions(2)
    registry.publish("cart", bundle, metadata=METADATA, version=first)
    registry.publish("cart", bundle, metadata=METADATA, version=second)
    web = registry.publish("web", bundle, metadata=METADATA)
    now = [0.0]
    servable = ServableVersions(registry, max_age_s=30.0, clock=lambda: now[0])
    backend.reset()

    catalog = servable.catalog()
    assert [(s.service, s.version, s.degraded) for s in catalog] == [
        ("cart", second, False),
        ("web", web, False),
    ]
    # The manifests read while verifying come with the answer (the listing needs no other read).
    assert all(s.manifest is not None and s.manifest.metrics == METADATA["metrics"] for s in catalog)
    assert catalog[0].manifest is not None and catalog[0].manifest.version == second
    assert backend.calls["list_objects"] == 1 and backend.calls["exists"] == 0
    # LATEST twice, then each served version's manifest and three files; never the older `first`.
    assert backend.calls["get"] == 2 + 2 * 4
    assert not any(f"/{first}/" in key for key in backend.read)

    backend.reset()
    now[0] += 3600.0  # far past max_age_s: the fingerprints, not the age, keep the verdicts
    again = servable.catalog()
    assert again == catalog and [s.manifest for s in again] == [s.manifest for s in catalog]
    assert backend.calls == Counter({"list_objects": 1, "list_keys": 1})  # one listing, no byte read
    assert servable.services() == ["cart", "web"]  # the catalog's listing refreshed this too
    assert backend.calls == Counter({"list_objects": 1, "list_keys": 1})


def test_a_changed_file_is_verified_again_and_refused(
    registry: ModelRegistry, backend: CountingBackend, bundle: Path
) -> None:
    first, second = versions(2)
    registry.publish("cart", bundle, metadata=METADATA, version=first)
    registry.publish("cart", bundle, metadata=METADATA, version=second)
    web = registry.publish("web", bundle, metadata=METADATA)
    servable = ServableVersions(registry, max_age_s=30.0, clock=lambda: 0.0)
    servable.catalog()
    key = f"models/cart/{second}/calibration.json"
    backend.put_bytes(key, b'{"cpu_offset_millicores": 46}')  # same size, other bytes
    backend.reset()

    [cart, web_served] = servable.catalog()  # at once: no age involved
    assert (cart.version, cart.degraded) == (first, True)
    assert second in (cart.degraded_reason or "") and "calibration.json" in (cart.degraded_reason or "")
    assert cart.manifest is not None and cart.manifest.version == first
    assert (web_served.version, web_served.degraded) == (web, False)
    # Only cart's versions were read: the changed one (manifest + files up to the bad one), then `first`.
    assert all(key.startswith("models/cart/") for key in backend.read)
    assert any(f"/{first}/" in key for key in backend.read)

    backend.reset()
    assert served(servable)["cart"] == (first, True)  # the refusal holds without a read
    assert backend.calls["get"] == 0


def test_a_recomputed_manifest_and_latest_naming_a_copy_are_refused(
    registry: ModelRegistry, backend: CountingBackend, bundle: Path
) -> None:
    """Issue 14's drill after the first refresh: the copy is new, so it is verified, and refused."""
    first, copy = versions(2)
    registry.publish("cart", bundle, metadata=METADATA, version=first)
    servable = ServableVersions(registry, clock=lambda: 0.0)
    assert served(servable) == {"cart": (first, False)}
    document = json.loads(backend.get_bytes(f"models/cart/{first}/manifest.json"))
    for name in document["files"]:
        data = backend.get_bytes(f"models/cart/{first}/{name}")
        if name == "calibration.json":
            data = b'{"cpu_offset_millicores": 5012}'
        document["files"][name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        backend.put_bytes(f"models/cart/{copy}/{name}", data)
    document["version"] = copy  # checksums consistent, the publisher's signature kept
    backend.put_bytes(f"models/cart/{copy}/manifest.json", json.dumps(document).encode())
    backend.put_bytes("models/cart/LATEST", f"{copy}\n".encode())

    [cart] = servable.catalog()
    assert (cart.version, cart.degraded) == (first, True)
    assert copy in (cart.degraded_reason or "") and "sign" in (cart.degraded_reason or "")

    # Recomputing the manifest of the served version itself: refused as well.
    backend.put_bytes(
        f"models/cart/{first}/manifest.json", json.dumps({**document, "version": first}).encode()
    )
    [cart] = servable.catalog()
    assert cart.version is None and first in (cart.degraded_reason or "")


def test_a_new_version_and_a_new_service_appear_reading_only_them(
    registry: ModelRegistry, backend: CountingBackend, bundle: Path
) -> None:
    first, second, third = versions(3)
    registry.publish("cart", bundle, metadata=METADATA, version=first)
    registry.publish("web", bundle, metadata=METADATA, version=first)
    servable = ServableVersions(registry, clock=lambda: 0.0)
    assert served(servable) == {"cart": (first, False), "web": (first, False)}
    registry.publish("cart", bundle, metadata=METADATA, version=second)
    registry.publish("shop", bundle, metadata=METADATA, version=third)
    backend.reset()

    assert served(servable) == {"cart": (second, False), "shop": (third, False), "web": (first, False)}
    assert backend.calls["list_objects"] == 1
    read = set(backend.read)
    assert "models/web/LATEST" not in read and not any(key.startswith("models/web/") for key in read)
    assert "models/cart/LATEST" in read and "models/shop/LATEST" in read  # their ETags changed
    assert {key.rsplit("/", 1)[0] for key in read if not key.endswith("/LATEST")} == {
        f"models/cart/{second}",
        f"models/shop/{third}",
    }


def test_a_refusal_holds_for_max_age_then_a_repair_is_seen(
    registry: ModelRegistry, backend: CountingBackend, bundle: Path
) -> None:
    first, second = versions(2)
    registry.publish("cart", bundle, metadata=METADATA, version=first)
    registry.publish("cart", bundle, metadata=METADATA, version=second)
    now = [0.0]
    servable = ServableVersions(registry, max_age_s=30.0, clock=lambda: now[0])
    key = f"models/cart/{second}/config.json"
    original = backend.get_bytes(key)
    backend.put_bytes(key, b'{"seq_len": 31}')
    assert served(servable) == {"cart": (first, True)}
    backend.put_bytes(key, original)  # repaired
    now[0] += 29.0
    assert served(servable) == {"cart": (first, True)}  # a refused version is re-read at most every 30 s
    now[0] += 1.0
    assert served(servable) == {"cart": (second, False)}


def test_the_signing_settings_are_part_of_the_fingerprint(
    registry: ModelRegistry, backend: CountingBackend, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = registry.publish("cart", bundle, metadata=METADATA)
    servable = ServableVersions(registry, clock=lambda: 0.0)
    assert served(servable) == {"cart": (version, False)}
    monkeypatch.setenv("MORA_SIGNING_KEY", "ab" * 32)  # another key: nothing verifies any more
    [cart] = servable.catalog()
    assert cart.version is None and "names key" in (cart.degraded_reason or "")


class KeysOnlyBackend:
    """A backend with the five protocol methods only: no listing with fingerprints."""

    def __init__(self, inner: CountingBackend) -> None:
        self.inner = inner

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list_keys(self, prefix: str) -> list[str]:
        return self.inner.list_keys(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def test_without_fingerprints_verdicts_are_reused_for_max_age_then_verified_again(
    backend: CountingBackend, bundle: Path
) -> None:
    registry = ModelRegistry(KeysOnlyBackend(backend))
    first, second = versions(2)
    registry.publish("cart", bundle, metadata=METADATA, version=first)
    registry.publish("cart", bundle, metadata=METADATA, version=second)
    listed = list_blobs(registry.backend, "models/")  # falls back to list_keys: no fingerprints
    assert listed and all(info.etag is None and info.size == -1 for info in listed)
    now = [0.0]
    servable = ServableVersions(registry, max_age_s=30.0, clock=lambda: now[0])
    assert served(servable) == {"cart": (second, False)}
    backend.put_bytes(f"models/cart/{second}/config.json", b'{"seq_len": 31}')
    backend.reset()
    assert served(servable) == {"cart": (second, False)}  # within max_age: not read again...
    assert backend.read == ["models/cart/LATEST"]  # ...but LATEST has no ETag to compare: read
    now[0] += 30.0
    assert served(servable) == {"cart": (first, True)}


class Md5Backend(CountingBackend):
    """Lists S3-style ETags (the MD5 of the bytes); ``after_listing`` runs between a listing and
    the reads that follow it, to change objects while they are being verified."""

    after_listing: Callable[[], None] | None = None

    def list_objects(self, prefix: str) -> list[BlobInfo]:
        infos = [
            BlobInfo(info.key, info.size, f'"{hashlib.md5(self.get_bytes(info.key)).hexdigest()}"')
            for info in super().list_objects(prefix)
        ]
        hook, self.after_listing = self.after_listing, None
        if hook is not None:
            hook()
        return infos


def test_a_verdict_is_not_tied_to_an_etag_the_bytes_read_do_not_match(tmp_path: Path, bundle: Path) -> None:
    """The listing sees a tampered file, the verification reads it repaired, then it is tampered again:
    without checking the ETag against the bytes, the verdict "verifies" would stick to the tampered
    file's ETag."""
    backend = Md5Backend(tmp_path / "store")
    registry = ModelRegistry(backend)
    first, second = versions(2)
    registry.publish("cart", bundle, metadata=METADATA, version=first)
    registry.publish("cart", bundle, metadata=METADATA, version=second)
    key = f"models/cart/{second}/config.json"
    original = backend.get_bytes(key)
    tampered = b'{"seq_len": 99}'
    backend.put_bytes(key, tampered)
    backend.after_listing = lambda: backend.put_bytes(key, original)
    servable = ServableVersions(registry, max_age_s=30.0, clock=lambda: 0.0)
    assert served(servable) == {"cart": (second, False)}  # what it read verifies
    backend.put_bytes(key, tampered)  # the very bytes (and ETag) the listing had seen
    assert served(servable) == {"cart": (first, True)}
    backend.put_bytes(key, original)
    backend.reset()
    assert served(servable) == {"cart": (first, True)}  # refusal kept (max_age_s)


def test_local_fingerprints_change_with_every_write_and_wait_for_the_file_to_settle(tmp_path: Path) -> None:
    settled = LocalBlobBackend(tmp_path / "a", settle_s=0.0)
    settled.put_bytes("models/x/v/f", b"one")
    [before] = settled.list_objects("models/")
    settled.put_bytes("models/x/v/f", b"two")  # same size
    [after] = settled.list_objects("models/")
    assert (before.size, after.size) == (3, 3) and None not in (before.etag, after.etag)
    assert before.etag != after.etag
    fresh = LocalBlobBackend(tmp_path / "a")  # default: a file written just now has no fingerprint
    [just_written] = fresh.list_objects("models/")
    assert just_written.etag is None and just_written.size == 3


def test_catalog_on_several_threads_matches_one_thread(
    registry: ModelRegistry, backend: CountingBackend, bundle: Path
) -> None:
    for index in range(12):
        registry.publish(f"svc-{index:02d}", bundle, metadata=METADATA)
    backend.put_bytes(f"models/svc-03/{registry.latest_version('svc-03')}/config.json", b"{}")
    parallel = ServableVersions(registry, workers=4).catalog()
    serial = ServableVersions(registry, workers=1).catalog()
    assert parallel == serial and len(serial) == 12
    assert [s.service for s in serial if s.degraded] == ["svc-03"]
