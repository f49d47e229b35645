"""ModelRegistry against the real S3 server (SeaweedFS `weed`, auth on): same guarantees as locally."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from mora_platform.registry import ArtifactIntegrityError, ModelNotFoundError, ModelRegistry, new_version
from mora_platform.registry.manifest import sha256_bytes

pytestmark = pytest.mark.integration


def _bundle(directory: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"seq_len": 30}',
        "lstm/model.keras": bytes((i * 13) % 256 for i in range(50_000)),
        "prophet/cpu.json": b'{"target": "cpu"}',
    }
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return files


@pytest.fixture
def registry(object_store: Any) -> ModelRegistry:
    """A registry under a fresh prefix, so tests sharing the server never see each other's models."""
    return ModelRegistry(object_store, prefix=f"test-models-{secrets.token_hex(4)}")


def test_publish_fetch_round_trip_s3(registry: ModelRegistry, object_store: Any, tmp_path: Path) -> None:
    files = _bundle(tmp_path / "bundle")
    version = registry.publish("frontend", tmp_path / "bundle", metadata={"metrics": {"cpu": {"mae": 0.1}}})
    keys = object_store.list_keys(f"{registry.prefix}/frontend/")
    assert f"{registry.prefix}/frontend/LATEST" in keys
    assert f"{registry.prefix}/frontend/{version}/manifest.json" in keys
    assert registry.latest_version("frontend") == version
    assert registry.list_services() == ["frontend"]
    fetched = registry.fetch("frontend", None, tmp_path / "out")
    for name, data in files.items():
        assert (fetched.path / name).read_bytes() == data
    assert fetched.manifest.metrics == {"cpu": {"mae": 0.1}}


def test_tampered_artifact_refused_s3(registry: ModelRegistry, object_store: Any, tmp_path: Path) -> None:
    files = _bundle(tmp_path / "bundle")
    version = registry.publish("cartservice", tmp_path / "bundle", metadata={})
    key = f"{registry.prefix}/cartservice/{version}/lstm/model.keras"
    data = bytearray(object_store.get_bytes(key))
    data[12_345] ^= 0x01
    object_store.put_bytes(key, bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"lstm/model\.keras.*checksum mismatch") as caught:
        registry.fetch("cartservice", version, tmp_path / "out")
    assert caught.value.expected == sha256_bytes(files["lstm/model.keras"])
    assert caught.value.actual == sha256_bytes(bytes(data))
    assert not (tmp_path / "out").exists()


def test_extra_and_missing_files_refused_s3(
    registry: ModelRegistry, object_store: Any, tmp_path: Path
) -> None:
    _bundle(tmp_path / "bundle")
    version = registry.publish("adservice", tmp_path / "bundle", metadata={})
    base = f"{registry.prefix}/adservice/{version}"
    object_store.put_bytes(f"{base}/extra.bin", b"\x00")
    with pytest.raises(ArtifactIntegrityError, match=r"extra\.bin.*not listed"):
        registry.fetch("adservice", version, tmp_path / "a")
    object_store.delete(f"{base}/extra.bin")
    object_store.delete(f"{base}/config.json")
    with pytest.raises(ArtifactIntegrityError, match=r"config\.json.*not stored"):
        registry.fetch("adservice", version, tmp_path / "b")


def test_half_published_never_latest_s3(registry: ModelRegistry, object_store: Any, tmp_path: Path) -> None:
    _bundle(tmp_path / "bundle")
    first = registry.publish("frontend", tmp_path / "bundle", metadata={})
    # files of a newer version without its manifest, and LATEST already (wrongly) pointing at it
    half = new_version()
    object_store.put_bytes(f"{registry.prefix}/frontend/{half}/config.json", b"{}")
    object_store.put_bytes(f"{registry.prefix}/frontend/LATEST", f"{half}\n".encode())
    assert registry.latest_version("frontend") == first
    with pytest.raises(ModelNotFoundError):
        registry.fetch("frontend", half, tmp_path / "x")
    # a complete newer version whose LATEST update never happened
    second = registry.publish("frontend", tmp_path / "bundle", metadata={})
    object_store.put_bytes(f"{registry.prefix}/frontend/LATEST", f"{first}\n".encode())
    assert registry.latest_version("frontend") == first
    assert registry.list_versions("frontend") == [first, second]


def test_prune_and_tuned_config_s3(registry: ModelRegistry, tmp_path: Path) -> None:
    _bundle(tmp_path / "bundle")
    versions = [registry.publish("svc-00", tmp_path / "bundle", metadata={}) for _ in range(3)]
    assert versions == sorted(versions)
    assert registry.prune("svc-00", keep=1) == versions[:2]
    assert registry.list_versions("svc-00", include_incomplete=True) == [versions[2]]
    assert registry.latest_version("svc-00") == versions[2]
    registry.save_tuned_config("svc-00", {"seq_len": 12})
    assert registry.load_tuned_config("svc-00") == {"seq_len": 12}


def test_concurrent_publishes_leave_latest_on_the_newest_s3(registry: ModelRegistry, tmp_path: Path) -> None:
    """Publishes of one service at the same moment (threads): LATEST ends on the newest, every round."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    _bundle(tmp_path / "bundle")
    publishers = 4
    for round_ in range(12):
        service = f"race-{round_:02d}"
        barrier = threading.Barrier(publishers)

        def publish(_: int, service: str = service, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return registry.publish(service, tmp_path / "bundle", metadata={})

        with ThreadPoolExecutor(max_workers=publishers) as pool:
            versions = list(pool.map(publish, range(publishers)))
        assert registry.latest_version(service) == max(versions), f"round {round_}: {sorted(versions)}"


def test_tampered_latest_and_file_resolve_to_a_valid_version_s3(
    registry: ModelRegistry, object_store: Any, tmp_path: Path
) -> None:
    from mora_platform.registry import ServableVersions

    _bundle(tmp_path / "bundle")
    first = registry.publish("frontend", tmp_path / "bundle", metadata={})
    second = registry.publish("frontend", tmp_path / "bundle", metadata={})
    servable = ServableVersions(registry, max_age_s=0.0)
    key = f"{registry.prefix}/frontend/{second}/config.json"
    original = object_store.get_bytes(key)
    object_store.put_bytes(key, b'{"seq_len": 31}')
    served = servable.servable("frontend")
    assert (served.version, served.degraded) == (first, True)
    object_store.put_bytes(key, original)
    assert (servable.servable("frontend").version, servable.servable("frontend").degraded) == (second, False)
    object_store.put_bytes(f"{registry.prefix}/frontend/LATEST", b"../../x")
    resolved = registry.resolve_latest("frontend")
    assert (resolved.version, resolved.degraded) == (second, True)
    assert (servable.servable("frontend").version, servable.servable("frontend").degraded) == (second, True)
    object_store.delete(f"{registry.prefix}/frontend/LATEST")
    assert registry.resolve_latest("frontend").version == second
