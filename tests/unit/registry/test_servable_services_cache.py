"""``ServableVersions.services``: the registry's service list is listed at most once per max age."""

from __future__ import annotations

from pathlib import Path

from mora_platform.registry import LocalBlobBackend, ModelRegistry, ServableVersions


class CountingBackend(LocalBlobBackend):
    """A local backend that counts ``list_keys`` calls (each is a bucket listing on S3)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listings = 0

    def list_keys(self, prefix: str) -> list[str]:
        self.listings += 1
        return super().list_keys(prefix)


def publish(registry: ModelRegistry, service: str, tmp_path: Path) -> None:
    bundle = tmp_path / f"bundle-{service}"
    bundle.mkdir()
    (bundle / "model.json").write_bytes(b'{"service": "%s"}' % service.encode())
    registry.publish(service, bundle, metadata={"metrics": {}})


def test_two_calls_within_the_max_age_list_once(tmp_path: Path) -> None:
    backend = CountingBackend(tmp_path / "store")
    registry = ModelRegistry(backend)
    publish(registry, "cart", tmp_path)
    now = [100.0]
    servable = ServableVersions(registry, clock=lambda: now[0], services_max_age_s=30.0)
    backend.listings = 0

    assert servable.services() == ["cart"]
    now[0] += 29.0
    assert servable.services() == ["cart"]
    assert backend.listings == 1


def test_a_listing_older_than_the_max_age_is_listed_again(tmp_path: Path) -> None:
    backend = CountingBackend(tmp_path / "store")
    registry = ModelRegistry(backend)
    publish(registry, "cart", tmp_path)
    now = [100.0]
    servable = ServableVersions(registry, clock=lambda: now[0], services_max_age_s=30.0)
    assert servable.services() == ["cart"]
    publish(registry, "web", tmp_path)
    backend.listings = 0

    assert servable.services() == ["cart"]  # still within the age: the new service is not seen yet
    now[0] += 30.0
    assert servable.services() == ["cart", "web"]
    assert backend.listings == 1


def test_the_returned_list_is_a_copy(tmp_path: Path) -> None:
    registry = ModelRegistry(CountingBackend(tmp_path / "store"))
    publish(registry, "cart", tmp_path)
    servable = ServableVersions(registry)
    servable.services().append("intruder")
    assert servable.services() == ["cart"]
