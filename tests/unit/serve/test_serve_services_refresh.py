"""``ServeBackend.list_services``: stale-while-revalidate over ``ServableVersions.catalog``.

Only the very first call waits for the registry; afterwards a caller gets the cached list at once, and
an expired list starts one background refresh (never two at once) that reads only what changed.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mora_platform.registry import LocalBlobBackend, ModelRegistry, Servable, ServableVersions
from mora_platform.registry.backend import BlobInfo
from serve.ingress import ServeBackend


class CountingBackend(LocalBlobBackend):
    """Local blobs with fingerprints trusted at once; counts what S3 would be asked."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, settle_s=0.0)
        self.calls: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._count_lock:
            self.calls[what] += 1

    def get_bytes(self, key: str) -> bytes:
        self._count("get")
        return super().get_bytes(key)

    def exists(self, key: str) -> bool:
        self._count("exists")
        return super().exists(key)

    def list_objects(self, prefix: str) -> list[BlobInfo]:
        self._count("list_objects")
        return super().list_objects(prefix)


def publish(registry: ModelRegistry, service: str, tmp_path: Path, cores: float = 0.1) -> str:
    bundle = tmp_path / f"bundle-{service}-{cores}"
    bundle.mkdir()
    (bundle / "model.json").write_text(json.dumps({"cores": cores}))
    return registry.publish(service, bundle, metadata={"metrics": {"cpu": {"mae": cores}}})


@pytest.fixture()
def backend(tmp_path: Path) -> CountingBackend:
    return CountingBackend(tmp_path / "blobs")


@pytest.fixture()
def registry(backend: CountingBackend, tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(backend)
    publish(registry, "svc-a", tmp_path)
    return registry


class GatedCatalog:
    """Stands in for ``ServableVersions.catalog``: counts calls, blocks while the gate is closed."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls = 0
        self.running = 0
        self.most_running = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self) -> list[Servable]:
        self.calls += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            if self.fail:
                raise ConnectionError("S3 unreachable")
            return self.real()  # type: ignore[no-any-return]
        finally:
            self.running -= 1


def gated(backend: ServeBackend) -> GatedCatalog:
    catalog = GatedCatalog(backend._servable.catalog)
    backend._servable.catalog = catalog  # type: ignore[method-assign]
    return catalog


async def settle(backend: ServeBackend) -> None:
    """Wait for the background refresh in flight, if any."""
    task = backend._services_refresh
    if task is not None:
        await asyncio.wait_for(asyncio.shield(task), 10)


def test_an_expired_list_is_answered_at_once_while_one_refresh_runs(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    serve_backend = ServeBackend(None, registry, services_ttl_s=0.0)  # type: ignore[arg-type]
    catalog = gated(serve_backend)

    async def scenario() -> None:
        assert [i.service for i in await serve_backend.list_services()] == ["svc-a"]  # first: waits
        assert catalog.calls == 1
        publish(registry, "svc-b", tmp_path)
        catalog.gate.clear()  # the next refresh hangs until the gate opens
        stale = await asyncio.wait_for(serve_backend.list_services(), 1.0)  # expired: not waited for
        assert [i.service for i in stale] == ["svc-a"]
        await asyncio.sleep(0.05)
        assert catalog.calls == 2 and catalog.running == 1  # one refresh in the background
        for _ in range(5):  # callers during the refresh: the stale list, no second refresh
            assert [i.service for i in await asyncio.wait_for(serve_backend.list_services(), 1.0)] == [
                "svc-a"
            ]
        assert catalog.calls == 2
        catalog.gate.set()
        await settle(serve_backend)
        assert [i.service for i in await serve_backend.list_services()] == ["svc-a", "svc-b"]
        await settle(serve_backend)
        assert catalog.most_running == 1

    asyncio.run(scenario())


def test_concurrent_first_callers_share_one_read(registry: ModelRegistry) -> None:
    serve_backend = ServeBackend(None, registry)  # type: ignore[arg-type]
    catalog = gated(serve_backend)

    async def scenario() -> list[list[Any]]:
        return list(await asyncio.gather(*(serve_backend.list_services() for _ in range(5))))

    results = asyncio.run(scenario())
    assert catalog.calls == 1 and all([i.service for i in r] == ["svc-a"] for r in results)


def test_a_failed_refresh_keeps_the_previous_list_and_retries_after_the_ttl(registry: ModelRegistry) -> None:
    serve_backend = ServeBackend(None, registry, services_ttl_s=0.0)  # type: ignore[arg-type]
    catalog = gated(serve_backend)

    async def scenario() -> None:
        first = await serve_backend.list_services()
        catalog.fail = True
        assert await serve_backend.list_services() == first  # starts a refresh, which fails
        await settle(serve_backend)
        assert await serve_backend.list_services() == first  # still answered; another try started
        await settle(serve_backend)
        assert catalog.calls == 3
        catalog.fail = False
        assert await serve_backend.list_services() == first
        await settle(serve_backend)

    asyncio.run(scenario())


def test_a_refresh_with_nothing_changed_reads_no_object_bytes(
    registry: ModelRegistry, backend: CountingBackend, tmp_path: Path
) -> None:
    for index in range(5):
        publish(registry, f"svc-{index}", tmp_path)
    serve_backend = ServeBackend(None, registry, services_ttl_s=0.0)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        infos = await serve_backend.list_services()  # first fill: verifies every service
        backend.calls.clear()
        await serve_backend.list_services()  # expired: starts a refresh
        await settle(serve_backend)
        assert backend.calls == Counter({"list_objects": 1})  # the listing, and not one object read
        assert await serve_backend.list_services() == infos  # same answer, manifests included
        await settle(serve_backend)
        return infos

    infos = asyncio.run(scenario())
    assert [i.service for i in infos] == ["svc-0", "svc-1", "svc-2", "svc-3", "svc-4", "svc-a"]
    assert all(i.trained_at is not None and i.metrics == {"cpu": {"mae": 0.1}} for i in infos)


def test_a_tampered_version_is_refused_at_the_next_refresh(
    registry: ModelRegistry, backend: CountingBackend, tmp_path: Path
) -> None:
    first = registry.latest_version("svc-a")
    second = publish(registry, "svc-a", tmp_path, cores=0.2)
    serve_backend = ServeBackend(None, registry, services_ttl_s=0.0)  # type: ignore[arg-type]

    async def scenario() -> None:
        [info] = await serve_backend.list_services()
        assert info.latest_version == second and info.metrics == {"cpu": {"mae": 0.2}}
        backend.put_bytes(f"models/svc-a/{second}/model.json", b'{"cores": 9.0}')
        await serve_backend.list_services()
        await settle(serve_backend)
        [info] = await serve_backend.list_services()
        assert info.latest_version == first and info.metrics == {"cpu": {"mae": 0.1}}
        await settle(serve_backend)

    asyncio.run(scenario())


def _wait_for(predicate: Any, seconds: float = 10.0) -> None:
    event = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        event.wait(0.01)
    raise AssertionError("condition not reached")


def test_prefill_reads_the_list_before_anyone_asks_and_the_first_caller_gets_that_read(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    gate = threading.Event()
    real = ServableVersions.catalog

    def catalog(self: ServableVersions) -> list[Servable]:
        calls.append(1)
        assert gate.wait(10), "the test never opened the gate"
        return real(self)

    monkeypatch.setattr(ServableVersions, "catalog", catalog)
    serve_backend = ServeBackend(None, registry, prefill=True)  # type: ignore[arg-type]
    _wait_for(lambda: len(calls) == 1)  # started at construction, nobody asked yet
    gate.set()
    infos = asyncio.run(serve_backend.list_services())
    assert [info.service for info in infos] == ["svc-a"]
    assert len(calls) == 1  # the first caller waited for the prefill instead of reading again


def test_a_failed_prefill_makes_the_first_caller_read_again(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = ServableVersions.catalog

    def catalog(self: ServableVersions) -> list[Servable]:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("S3 unreachable at start-up")
        return real(self)

    monkeypatch.setattr(ServableVersions, "catalog", catalog)
    serve_backend = ServeBackend(None, registry, prefill=True)  # type: ignore[arg-type]
    _wait_for(lambda: len(calls) == 1)
    infos = asyncio.run(serve_backend.list_services())
    assert [info.service for info in infos] == ["svc-a"] and len(calls) == 2
