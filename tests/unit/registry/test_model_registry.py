"""ModelRegistry on a local directory: atomic publish, verified fetch, retention, tuned configs."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mora_platform.registry import (
    ArtifactIntegrityError,
    InvalidServiceNameError,
    LocalBlobBackend,
    Manifest,
    ModelNotFoundError,
    ModelRegistry,
    Servable,
    ServableVersions,
    new_version,
    verify_local_bundle,
)
from mora_platform.registry.manifest import sha256_bytes

Bundle = tuple[Path, dict[str, bytes]]


def write_bundle(directory: Path, seed: int = 0) -> dict[str, bytes]:
    """A bundle shaped like a trained one: JSON, binary and a nested file."""
    files = {
        "config.json": b'{"seq_len": 30, "seed": %d}' % seed,
        "prophet/cpu.json": b'{"model": "prophet", "target": "cpu"}',
        "lstm.keras": bytes((seed + i * 7) % 256 for i in range(4096)),
        "scalers.json": b'{"min": [0.0], "max": [1.0]}',
    }
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


METADATA = {
    "metrics": {"cpu": {"test_mae": 0.012, "test_coverage": 0.95}, "memory": {"test_mae": 1.5e6}},
    "data_window": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-02T00:00:00+00:00", "rows": 120},
    "fallbacks": ["prophet:no-weekly-seasonality"],
    "config": {"seq_len": 30, "lstm": {"epochs": 2}},
    "seconds": 3.25,
}


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    directory = tmp_path / "bundle"
    return directory, write_bundle(directory)


@pytest.fixture
def backend(tmp_path: Path) -> LocalBlobBackend:
    return LocalBlobBackend(tmp_path / "store")


@pytest.fixture
def registry(backend: LocalBlobBackend) -> ModelRegistry:
    return ModelRegistry(backend)


def _versions(n: int) -> list[str]:
    start = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    return [new_version(start + timedelta(seconds=i)) for i in range(n)]


def test_publish_fetch_round_trip(registry: ModelRegistry, bundle: Bundle, tmp_path: Path) -> None:
    directory, files = bundle
    version = registry.publish("frontend", directory, metadata=METADATA)
    assert registry.latest_version("frontend") == version
    assert registry.list_versions("frontend") == [version]
    assert registry.list_services() == ["frontend"]

    fetched = registry.fetch("frontend", None, tmp_path / "out")
    assert fetched.version == version and not fetched.cached
    for name, data in files.items():
        assert (fetched.path / name).read_bytes() == data
    assert sorted(fetched.manifest.files) == sorted(files)
    assert fetched.manifest.files["lstm.keras"].sha256 == sha256_bytes(files["lstm.keras"])
    assert fetched.manifest.files["lstm.keras"].bytes == 4096
    assert fetched.manifest.metrics == METADATA["metrics"]
    assert fetched.manifest.fallbacks == METADATA["fallbacks"]
    assert fetched.manifest.extra == {"seconds": 3.25}
    assert fetched.manifest.libraries["numpy"] is not None and fetched.manifest.libraries["python"]
    # the local copy carries its manifest and verifies on its own
    assert verify_local_bundle(fetched.path) == fetched.manifest
    # no staging directories left behind
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["bundle", "out", "store"]


def test_fetch_reuses_a_verified_local_copy(registry: ModelRegistry, bundle: Bundle, tmp_path: Path) -> None:
    version = registry.publish("frontend", bundle[0], metadata=METADATA)
    registry.fetch("frontend", version, tmp_path / "cache")
    again = registry.fetch("frontend", version, tmp_path / "cache")
    assert again.cached
    (tmp_path / "cache" / "config.json").write_bytes(b"{}")  # local corruption -> fresh download
    third = registry.fetch("frontend", version, tmp_path / "cache")
    assert not third.cached
    assert (tmp_path / "cache" / "config.json").read_bytes() == bundle[1]["config.json"]


def test_version_strings_sort_by_time() -> None:
    base = datetime(2026, 11, 28, 1, 2, 3, tzinfo=UTC)
    stamps = [
        base,
        base + timedelta(microseconds=1),
        base + timedelta(microseconds=999_999),
        base + timedelta(seconds=1),
    ]
    versions = [new_version(stamp) for stamp in stamps]
    assert versions == sorted(versions)
    assert versions[0].startswith("20261128T010203Z-")


def test_tampered_artifact_is_refused(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle, tmp_path: Path
) -> None:
    version = registry.publish("cartservice", bundle[0], metadata=METADATA)
    key = f"models/cartservice/{version}/lstm.keras"
    data = bytearray(backend.get_bytes(key))
    data[100] ^= 0x01
    backend.put_bytes(key, bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(ArtifactIntegrityError, match=r"lstm\.keras") as caught:
        registry.fetch("cartservice", version, dest)
    error = caught.value
    assert error.file == "lstm.keras"
    assert error.expected == sha256_bytes(bundle[1]["lstm.keras"])
    assert error.actual == sha256_bytes(bytes(data))
    assert error.expected in str(error) and error.actual in str(error)
    assert not dest.exists()  # nothing half-downloaded is visible
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_truncated_artifact_is_refused(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle
) -> None:
    version = registry.publish("cartservice", bundle[0], metadata=METADATA)
    key = f"models/cartservice/{version}/scalers.json"
    backend.put_bytes(key, backend.get_bytes(key)[:-1])
    with pytest.raises(ArtifactIntegrityError, match=r"scalers.json.*checksum mismatch"):
        registry.fetch("cartservice", version, bundle[0].parent / "out")


def test_extra_and_missing_files_are_refused(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle, tmp_path: Path
) -> None:
    version = registry.publish("adservice", bundle[0], metadata=METADATA)
    backend.put_bytes(f"models/adservice/{version}/injected.py", b"import os")
    with pytest.raises(ArtifactIntegrityError, match=r"injected.py.*not listed"):
        registry.fetch("adservice", version, tmp_path / "a")
    backend.delete(f"models/adservice/{version}/injected.py")
    backend.delete(f"models/adservice/{version}/prophet/cpu.json")
    with pytest.raises(ArtifactIntegrityError, match=r"prophet/cpu.json.*not stored"):
        registry.fetch("adservice", version, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_local_bundle_with_extra_file_is_refused(
    registry: ModelRegistry, bundle: Bundle, tmp_path: Path
) -> None:
    registry.publish("adservice", bundle[0], metadata=METADATA)
    fetched = registry.fetch("adservice", None, tmp_path / "out")
    (fetched.path / "extra.txt").write_text("x")
    with pytest.raises(ArtifactIntegrityError, match=r"extra\.txt"):
        verify_local_bundle(fetched.path)


def test_files_without_manifest_never_become_latest(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle, tmp_path: Path
) -> None:
    first = registry.publish("frontend", bundle[0], metadata=METADATA)
    # a crashed publish: files uploaded, no manifest, and a LATEST pointing at it
    half = new_version()
    backend.put_bytes(f"models/frontend/{half}/config.json", b"{}")
    assert registry.latest_version("frontend") == first
    backend.put_bytes("models/frontend/LATEST", f"{half}\n".encode())
    assert half > first
    assert registry.latest_version("frontend") == first
    assert registry.list_versions("frontend") == [first]
    assert registry.list_versions("frontend", include_incomplete=True) == [first, half]
    with pytest.raises(ModelNotFoundError, match="manifest"):
        registry.fetch("frontend", half, tmp_path / "x")


def test_manifest_without_latest_update_is_not_latest(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle, tmp_path: Path
) -> None:
    first, second = _versions(2)
    registry.publish("frontend", bundle[0], metadata=METADATA, version=first)
    # publish the second version, then "crash" before LATEST: restore the old pointer
    write_bundle(tmp_path / "b2", seed=1)
    registry.publish("frontend", tmp_path / "b2", metadata=METADATA, version=second)
    backend.put_bytes("models/frontend/LATEST", f"{first}\n".encode())
    assert registry.latest_version("frontend") == first
    assert registry.list_versions("frontend") == [first, second]


def test_no_latest_pointer_means_unpublished(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle
) -> None:
    registry.publish("frontend", bundle[0], metadata=METADATA)
    backend.delete("models/frontend/LATEST")
    assert registry.latest_version("frontend") is None
    with pytest.raises(ModelNotFoundError, match="no published model for service 'frontend'"):
        registry.fetch("frontend", None, bundle[0].parent / "out")
    assert registry.latest_version("unknown") is None


def test_prune_keeps_latest_and_newest(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle, tmp_path: Path
) -> None:
    versions = _versions(5)
    for version in versions:
        registry.publish("checkout", bundle[0], metadata=METADATA, version=version)
    # LATEST rolled back to an old version (e.g. a manual rollback)
    backend.put_bytes("models/checkout/LATEST", f"{versions[1]}\n".encode())
    deleted = registry.prune("checkout", keep=2)
    assert deleted == [versions[0]]  # newer than LATEST are left; LATEST itself kept
    assert registry.latest_version("checkout") == versions[1]
    backend.put_bytes("models/checkout/LATEST", f"{versions[4]}\n".encode())
    assert registry.prune("checkout", keep=1) == [versions[1], versions[2], versions[3]]
    assert registry.list_versions("checkout", include_incomplete=True) == [versions[4]]
    assert registry.fetch("checkout", None, tmp_path / "out").version == versions[4]
    with pytest.raises(ValueError, match="keep"):
        registry.prune("checkout", keep=0)


@pytest.mark.parametrize(
    "name",
    ["", "Frontend", "front_end", "-frontend", "frontend-", "front.end", "a" * 64, "../etc", "svc/x"],
)
def test_invalid_service_names_rejected(registry: ModelRegistry, bundle: Bundle, name: str) -> None:
    with pytest.raises(InvalidServiceNameError, match="invalid service name"):
        registry.publish(name, bundle[0], metadata=METADATA)
    with pytest.raises(InvalidServiceNameError):
        registry.latest_version(name)


def test_valid_service_names_accepted(registry: ModelRegistry, bundle: Bundle) -> None:
    for name in ("a", "svc-00", "a" * 63, "9lives"):
        registry.publish(name, bundle[0], metadata={})
    assert registry.list_services() == sorted(["a", "svc-00", "a" * 63, "9lives"])


def test_publish_refuses_bad_bundles(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        registry.publish("svc", tmp_path / "missing", metadata={})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        registry.publish("svc", tmp_path / "empty", metadata={})
    write_bundle(tmp_path / "with-manifest")
    (tmp_path / "with-manifest" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=r"manifest\.json"):
        registry.publish("svc", tmp_path / "with-manifest", metadata={})
    write_bundle(tmp_path / "ok")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        registry.publish("svc", tmp_path / "ok", metadata={"config": {"x": object()}})
    with pytest.raises(ValueError, match="fallbacks"):
        registry.publish("svc", tmp_path / "ok", metadata={"fallbacks": "not-a-list"})
    assert registry.list_services() == []  # nothing uploaded by the refused publishes


def test_publish_coerces_numpy_values(registry: ModelRegistry, bundle: Bundle) -> None:
    import numpy as np

    version = registry.publish("svc", bundle[0], metadata={"metrics": {"cpu": {"mae": np.float32(0.5)}}})
    assert registry.read_manifest("svc", version).metrics == {"cpu": {"mae": 0.5}}


def test_manifest_for_another_version_is_refused(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle, tmp_path: Path
) -> None:
    first, second = _versions(2)
    registry.publish("svc", bundle[0], metadata={}, version=first)
    manifest = backend.get_bytes(f"models/svc/{first}/manifest.json")
    for name in bundle[1]:
        backend.put_bytes(f"models/svc/{second}/{name}", bundle[1][name])
    backend.put_bytes(f"models/svc/{second}/manifest.json", manifest)
    with pytest.raises(ArtifactIntegrityError, match="manifest describes"):
        registry.fetch("svc", second, tmp_path / "out")


def test_manifest_with_path_traversal_is_refused(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle, tmp_path: Path
) -> None:
    version = registry.publish("svc", bundle[0], metadata={})
    key = f"models/svc/{version}/manifest.json"
    document = json.loads(backend.get_bytes(key))
    document["files"]["../../escape.txt"] = document["files"].pop("config.json")
    backend.put_bytes(key, json.dumps(document).encode())
    with pytest.raises(ArtifactIntegrityError, match="unsafe file name"):
        registry.fetch("svc", version, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_manifest_json_round_trip(registry: ModelRegistry, bundle: Bundle) -> None:
    version = registry.publish("svc", bundle[0], metadata=METADATA)
    manifest = registry.read_manifest("svc", version)
    assert manifest.schema_version == 1
    assert Manifest.from_json_bytes(manifest.to_json_bytes()) == manifest
    document = json.loads(manifest.to_json_bytes())
    assert set(document) >= {
        "schema_version", "service", "version", "created_at", "files", "code",
        "libraries", "metrics", "data_window", "fallbacks", "config",
    }  # fmt: skip
    assert document["code"]["mora_platform"] == "0.1.0"
    assert set(document["libraries"]) == {"tensorflow", "keras", "prophet", "pandas", "numpy", "python"}
    assert datetime.fromisoformat(document["created_at"]).tzinfo is not None
    with pytest.raises(ValueError):
        Manifest.model_validate({**document, "unexpected": 1})


def test_golden_v1_manifest_still_parses() -> None:
    """A manifest written by schema version 1 must stay readable by later code."""
    golden = Path(__file__).parent / "golden" / "manifest_v1.json"
    manifest = Manifest.from_json_bytes(golden.read_bytes())
    assert (manifest.schema_version, manifest.service, manifest.version) == (
        1,
        "frontend",
        "20261128T010203Z-0a1b2c",
    )
    assert manifest.files["lstm.keras"].bytes == 120345
    assert manifest.total_bytes == 120857
    assert manifest.extra == {"dataset": "boutique"}
    assert "schema_version" in Manifest.model_json_schema()["properties"]


def test_tuned_config_round_trip(registry: ModelRegistry, backend: LocalBlobBackend) -> None:
    assert registry.load_tuned_config("svc") is None
    registry.save_tuned_config("svc", {"seq_len": 20, "lstm": {"units": [32, 16]}})
    assert registry.load_tuned_config("svc") == {"seq_len": 20, "lstm": {"units": [32, 16]}}
    assert backend.exists("models/svc/tuned_config.json")
    assert registry.list_services() == []  # a tuned config alone is not a published model
    assert registry.latest_version("svc") is None


def test_concurrent_fetch_into_the_same_cache_dir(
    registry: ModelRegistry, bundle: Bundle, tmp_path: Path
) -> None:
    """Threads racing to fill one cache directory all end with the verified bundle."""
    from concurrent.futures import ThreadPoolExecutor

    version = registry.publish("frontend", bundle[0], metadata=METADATA)
    # The race is timing-dependent: many rounds, each into a fresh cache directory.
    for round_ in range(25):
        dest = tmp_path / f"cache-{round_}" / version
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda d: registry.fetch("frontend", version, d), [dest] * 16))
        assert all(result.version == version for result in results)
        assert verify_local_bundle(dest).version == version
        assert sorted(p.name for p in dest.parent.iterdir()) == [version]  # no staging leftovers


# ---- LATEST: fallback when it is tampered or missing, and only forward under concurrent publishes


@pytest.mark.parametrize("pointer", [b"../../x\n", b"", b"\x00\xff garbage", b"20260101T000000Z-zzzzzz"])
def test_garbled_latest_resolves_to_the_newest_complete_version(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle, pointer: bytes
) -> None:
    first, second = _versions(2)
    registry.publish("frontend", bundle[0], metadata=METADATA, version=first)
    registry.publish("frontend", bundle[0], metadata=METADATA, version=second)
    assert registry.resolve_latest("frontend").problem is None
    backend.put_bytes("models/frontend/LATEST", pointer)
    resolved = registry.resolve_latest("frontend")
    assert (resolved.version, resolved.degraded) == (second, True)
    assert "LATEST holds" in (resolved.problem or "")
    assert list(registry.serving_candidates(resolved)) == [second, first]
    assert registry.latest_version("frontend") is None  # the strict reading is unchanged


def test_missing_latest_or_missing_version_resolves_to_a_complete_one(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle
) -> None:
    first, second, third = _versions(3)
    for version in (first, second, third):
        registry.publish("frontend", bundle[0], metadata=METADATA, version=version)
    backend.delete("models/frontend/LATEST")
    resolved = registry.resolve_latest("frontend")
    assert (resolved.version, resolved.pointer) == (third, None)
    assert "no LATEST" in (resolved.problem or "")
    # LATEST names a version whose manifest is gone: the newest complete one not after it
    backend.put_bytes("models/frontend/LATEST", f"{second}\n".encode())
    backend.delete(f"models/frontend/{second}/manifest.json")
    resolved = registry.resolve_latest("frontend")
    assert (resolved.version, resolved.degraded) == (first, True)
    assert "no manifest.json" in (resolved.problem or "")
    assert registry.resolve_latest("never-published").version is None


def test_verify_checks_every_byte_without_a_copy(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle
) -> None:
    version = registry.publish("frontend", bundle[0], metadata=METADATA)
    assert registry.verify("frontend", version).version == version
    key = f"models/frontend/{version}/lstm.keras"
    original = backend.get_bytes(key)
    backend.put_bytes(key, original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ArtifactIntegrityError, match="checksum mismatch"):
        registry.verify("frontend", version)
    backend.put_bytes(key, original)
    assert registry.verify("frontend", version).version == version


def test_a_publish_never_moves_latest_back(registry: ModelRegistry, bundle: Bundle) -> None:
    older, newer = _versions(2)
    registry.publish("frontend", bundle[0], metadata=METADATA, version=newer)
    assert registry.publish("frontend", bundle[0], metadata=METADATA, version=older) == older
    assert registry.latest_version("frontend") == newer
    assert registry.list_versions("frontend") == [older, newer]


class RacingBackend(LocalBlobBackend):
    """Runs ``on_latest_write`` just before the first write of LATEST: a publish that read the old
    pointer, then lost the race to another publish, then writes its (older) version."""

    on_latest_write: Callable[[], None] | None = None

    def put_bytes(self, key: str, data: bytes) -> None:
        hook = self.on_latest_write if key.endswith("/LATEST") else None
        if hook is not None:
            self.on_latest_write = None
            hook()
        super().put_bytes(key, data)


def test_racing_publishes_leave_latest_on_the_newest(bundle: Bundle, tmp_path: Path) -> None:
    backend = RacingBackend(tmp_path / "racing")
    registry = ModelRegistry(backend)
    base, older, newer = _versions(3)
    registry.publish("frontend", bundle[0], metadata=METADATA, version=base)

    def newer_publish_wins_the_race() -> None:
        registry.publish("frontend", bundle[0], metadata=METADATA, version=newer)
        assert registry.latest_version("frontend") == newer

    backend.on_latest_write = newer_publish_wins_the_race
    registry.publish("frontend", bundle[0], metadata=METADATA, version=older)
    assert registry.latest_version("frontend") == newer


def test_concurrent_publishes_end_on_the_newest_version(registry: ModelRegistry, bundle: Bundle) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for round_ in range(10):
        service = f"svc-{round_}"
        barrier = threading.Barrier(4)

        def publish(_: int, service: str = service, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return registry.publish(service, bundle[0], metadata=METADATA)

        with ThreadPoolExecutor(max_workers=4) as pool:
            versions = list(pool.map(publish, range(4)))
        assert registry.latest_version(service) == max(versions), round_


def test_servable_version_skips_a_refused_latest_until_it_is_restored(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle
) -> None:
    now = [0.0]
    servable = ServableVersions(registry, max_age_s=10.0, clock=lambda: now[0])
    first, second = _versions(2)
    registry.publish("frontend", bundle[0], metadata=METADATA, version=first)
    registry.publish("frontend", bundle[0], metadata=METADATA, version=second)
    assert servable.servable("frontend") == Servable("frontend", second)
    key = f"models/frontend/{second}/config.json"
    original = backend.get_bytes(key)
    backend.put_bytes(key, b'{"seq_len": 31, "seed": 0}')
    now[0] += 11  # the cached verdict on `second` expired
    served = servable.servable("frontend")
    assert (served.version, served.degraded) == (first, True)
    assert second in (served.degraded_reason or "") and "config.json" in (served.degraded_reason or "")
    backend.put_bytes(key, original)
    assert servable.servable("frontend").version == first  # the refusal is cached for max_age_s
    now[0] += 11
    assert servable.servable("frontend") == Servable("frontend", second)
    backend.put_bytes("models/frontend/LATEST", b"../../x")
    served = servable.servable("frontend")
    assert (served.version, served.degraded) == (second, True)
    assert servable.servable("nothing-here") == Servable("nothing-here", None)


def test_cli_answers_from_the_newest_version_that_verifies_and_says_why(
    registry: ModelRegistry, backend: LocalBlobBackend, bundle: Bundle, tmp_path: Path
) -> None:
    """`mora recommend` without --version serves as the endpoint does: a refused LATEST falls back."""
    from mora_platform.cli.models import _servable

    published = [registry.publish("cartservice", bundle[0], metadata=METADATA) for _ in range(2)]
    first, second = sorted(published)  # versions order by id (the same second: by their suffix)
    version, fetched, notes = _servable(registry, "cartservice", tmp_path / "home")
    assert (version, notes) == (second, [])
    key = f"models/cartservice/{second}/lstm.keras"
    data = bytearray(backend.get_bytes(key))
    data[100] ^= 0x01
    backend.put_bytes(key, bytes(data))  # written straight into storage
    version, fetched, notes = _servable(registry, "cartservice", tmp_path / "fresh-home")
    assert version == first and fetched.version == first
    assert any(second in n and "refused" in n for n in notes) and notes[-1] == f"answered by {first}"
    backend.put_bytes(f"models/cartservice/{first}/lstm.keras", bytes(data))
    with pytest.raises(ArtifactIntegrityError):
        _servable(registry, "cartservice", tmp_path / "home2")
