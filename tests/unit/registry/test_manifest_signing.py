"""Manifest signatures: a version written straight into storage, however consistent, is refused.

The drill of issue 14: copy a published version, change its calibration file, recompute every
checksum in its manifest, store it as a new version and point LATEST at it. Checksums alone accept
that copy; the publisher's signature does not, and the previous version serves, degraded.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mora_platform.registry import (
    ArtifactIntegrityError,
    LocalBlobBackend,
    Manifest,
    ManifestSignatureError,
    MissingSigningKeyError,
    ModelRegistry,
    ServableVersions,
    SignatureMismatchError,
    UnsignedManifestError,
    new_version,
    sign_manifest,
)
from mora_platform.registry.manifest import sha256_bytes
from mora_platform.registry.signing import canonical_bytes, key_id
from mora_platform.settings import (
    MoraSettings,
    SigningKeyError,
    ensure_signing_key,
    signing_key_from_environment,
    signing_key_path,
)

CALIBRATION = "calibration.json"


def write_bundle(directory: Path, cpu_millicores: int = 45) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"seq_len": 30}')
    (directory / CALIBRATION).write_text(json.dumps({"cpu_offset_millicores": cpu_millicores}))
    (directory / "lstm.keras").write_bytes(bytes(range(256)) * 4)
    return directory


def versions(n: int) -> list[str]:
    start = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    return [new_version(start + timedelta(seconds=i)) for i in range(n)]


def forge_copy(
    registry: ModelRegistry,
    service: str,
    source: str,
    target: str,
    *,
    signature: str = "keep",
    attacker_key: str | None = None,
) -> None:
    """What a writer without the key can do: copy ``source`` to ``target`` with a changed calibration
    file, recompute the manifest's checksums, keep / drop / forge its signature, point LATEST at it."""
    backend = registry.backend
    base = f"{registry.prefix}/{service}"
    document = json.loads(backend.get_bytes(f"{base}/{source}/manifest.json"))
    for name in document["files"]:
        data = backend.get_bytes(f"{base}/{source}/{name}")
        if name == CALIBRATION:
            data = json.dumps({"cpu_offset_millicores": 5_012}).encode()
        document["files"][name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        backend.put_bytes(f"{base}/{target}/{name}", data)
    document["version"] = target
    if signature == "drop":
        document.pop("signature")
    elif signature == "forge":
        assert attacker_key is not None
        document["signature"] = None
        forged = sign_manifest(Manifest.model_validate(document), attacker_key)
        document = json.loads(forged.to_json_bytes())
    backend.put_bytes(f"{base}/{target}/manifest.json", json.dumps(document, indent=1).encode())
    backend.put_bytes(f"{base}/LATEST", f"{target}\n".encode())


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(LocalBlobBackend(tmp_path / "store"))


@pytest.fixture
def published(registry: ModelRegistry, tmp_path: Path) -> tuple[str, str]:
    """(v1 published by the platform, v2 a forged copy of it that LATEST names)."""
    first, second = versions(2)
    registry.publish("frontend", write_bundle(tmp_path / "bundle"), metadata={"metrics": {}}, version=first)
    return first, second


def test_publish_signs_the_manifest_and_readers_verify_it(
    registry: ModelRegistry, published: tuple[str, str], signing_key: str, tmp_path: Path
) -> None:
    first, _ = published
    stored = registry.backend.get_bytes(f"models/frontend/{first}/manifest.json")
    manifest = registry.verify("frontend", first)
    assert manifest.signature is not None
    assert manifest.signature.key_id == key_id(signing_key) == registry.signing_key_id()
    assert signing_key.encode() not in stored  # the key itself is never stored
    fetched = registry.fetch("frontend", None, tmp_path / "cache")
    assert fetched.version == first and fetched.manifest == manifest
    # Canonical JSON: reformatting the stored document (order, whitespace) keeps it valid.
    document = json.loads(stored)
    reordered = json.dumps(dict(reversed(list(document.items()))), indent=4).encode()
    registry.backend.put_bytes(f"models/frontend/{first}/manifest.json", reordered)
    assert registry.verify("frontend", first) == manifest
    assert canonical_bytes(document) == canonical_bytes(json.loads(reordered))


@pytest.mark.parametrize("signature", ["keep", "drop", "forge"])
def test_drill_a_consistent_copy_written_to_storage_is_refused_and_v1_serves(
    registry: ModelRegistry, published: tuple[str, str], tmp_path: Path, signature: str
) -> None:
    first, second = published
    forge_copy(registry, "frontend", first, second, signature=signature, attacker_key=secrets.token_hex(32))
    # The copy is consistent: every checksum matches, LATEST names it, its manifest is complete.
    resolved = registry.resolve_latest("frontend")
    assert (resolved.version, resolved.degraded) == (second, False)
    manifest = registry.read_manifest("frontend", second, check_signature=False)
    assert manifest.files[CALIBRATION].sha256 == sha256_bytes(
        registry.backend.get_bytes(f"models/frontend/{second}/{CALIBRATION}")
    )
    expected = {
        "keep": SignatureMismatchError,
        "drop": UnsignedManifestError,
        "forge": SignatureMismatchError,
    }
    for read in (
        lambda: registry.verify("frontend", second),
        lambda: registry.fetch("frontend", second, tmp_path / "out"),
        lambda: registry.fetch("frontend", None, tmp_path / "latest"),  # what `mora recommend` does
    ):
        with pytest.raises(expected[signature]) as refused:
            read()
        message = str(refused.value)
        assert f"frontend/{second}" in message and "manifest.json" in message and "republish" in message
        assert isinstance(refused.value, ArtifactIntegrityError)
    assert not (tmp_path / "out").exists() and not (tmp_path / "latest").exists()
    if signature == "forge":
        assert "names key" in str(refused.value)  # the attacker's key is not ours
    # The serving fallback serves v1, degraded, saying why.
    served = ServableVersions(registry).servable("frontend")
    assert (served.version, served.degraded) == (first, True)
    assert second in (served.degraded_reason or "") and "sign" in (served.degraded_reason or "")


def test_serve_model_slot_refuses_the_copy_and_serves_v1_degraded(
    registry: ModelRegistry, published: tuple[str, str], tmp_path: Path
) -> None:
    from serve.model_slots import ModelLoader

    first, second = published

    def factory(directory: Path) -> dict[str, int]:
        return json.loads((directory / CALIBRATION).read_text())  # type: ignore[no-any-return]

    loader = ModelLoader(registry, tmp_path / "slots", factory=factory)
    slot = loader.load("frontend")
    assert (slot.version, slot.degraded_reason) == (first, None)
    forge_copy(registry, "frontend", first, second)
    assert loader.refresh(slot) is False  # the copy is refused: v1 keeps serving
    assert slot.version == first and slot.loaded.model == {"cpu_offset_millicores": 45}
    assert slot.degraded_reason is not None and "signature does not verify" in slot.degraded_reason
    fresh = ModelLoader(registry, tmp_path / "fresh", factory=factory).load("frontend")
    assert fresh.version == first and fresh.loaded.model == {"cpu_offset_millicores": 45}
    assert fresh.degraded_reason is not None and second in fresh.degraded_reason


def test_unsigned_versions_are_refused_unless_accepted_explicitly(
    registry: ModelRegistry, published: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version published before signing existed: refused by default, with how to republish;
    MORA_ACCEPT_UNSIGNED=1 serves it, degraded. A wrong signature is refused whatever the setting."""
    first, second = published
    key = f"models/frontend/{first}/manifest.json"
    legacy = json.loads(registry.backend.get_bytes(key))
    legacy.pop("signature")
    registry.backend.put_bytes(key, json.dumps(legacy, indent=2).encode())
    with pytest.raises(UnsignedManifestError, match="MORA_ACCEPT_UNSIGNED=1") as refused:
        registry.verify("frontend", first)
    assert "not signed" in str(refused.value) and "mora train" in str(refused.value)
    assert ServableVersions(registry).servable("frontend").version is None

    monkeypatch.setenv("MORA_ACCEPT_UNSIGNED", "1")
    assert registry.verify("frontend", first).signature is None
    served = ServableVersions(registry).servable("frontend")
    assert (served.version, served.degraded) == (first, True)
    assert "not signed" in (served.degraded_reason or "")
    # A signed copy under another key is still refused, and the unsigned v1 serves.
    forge_copy(registry, "frontend", first, second, signature="forge", attacker_key=secrets.token_hex(32))
    with pytest.raises(SignatureMismatchError):
        registry.verify("frontend", second)
    assert ServableVersions(registry).servable("frontend").version == first
    explicit = ModelRegistry(registry.backend, accept_unsigned=False)
    with pytest.raises(UnsignedManifestError):
        explicit.verify("frontend", first)


def test_a_reader_without_the_key_trusts_nothing(
    registry: ModelRegistry, published: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = published
    monkeypatch.delenv("MORA_SIGNING_KEY")
    reader = ModelRegistry(registry.backend, home=tmp_path / "empty-home")
    with pytest.raises(MissingSigningKeyError, match="MORA_SIGNING_KEY") as refused:
        reader.verify("frontend", first)
    assert f"frontend/{first}" in str(refused.value)
    other = ModelRegistry(registry.backend, signing_key=secrets.token_hex(32))
    with pytest.raises(SignatureMismatchError, match="names key"):
        other.verify("frontend", first)
    served = ServableVersions(other).servable("frontend")
    assert served.version is None and "names key" in (served.degraded_reason or "")


def test_signature_covers_every_field_and_refuses_ambiguous_json(
    registry: ModelRegistry, published: tuple[str, str]
) -> None:
    first, _ = published
    key = f"models/frontend/{first}/manifest.json"
    original = registry.backend.get_bytes(key)
    document = json.loads(original)
    for change in (
        lambda d: d["metrics"].update({"cpu": {"test_mae": 0.0}}),
        lambda d: d["extra"].update({"dataset": "other"}),
        lambda d: d.update({"created_at": "2030-01-01T00:00:00Z"}),
    ):
        changed = json.loads(original)
        change(changed)
        registry.backend.put_bytes(key, json.dumps(changed).encode())
        with pytest.raises(SignatureMismatchError, match="changed after it was signed"):
            registry.verify("frontend", first)
    # A duplicate key could show the signature one value and the parser another.
    body = json.dumps(document)[:-1] + ', "extra": {"dataset": "x"}}'
    registry.backend.put_bytes(key, body.encode())
    with pytest.raises(ManifestSignatureError):
        registry.verify("frontend", first)
    registry.backend.put_bytes(key, original)
    assert registry.verify("frontend", first).signature is not None


def test_publisher_without_a_key_creates_one_owner_only_and_never_logs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MORA_SIGNING_KEY")
    home = tmp_path / "home"
    monkeypatch.setenv("MORA_HOME", str(home))
    registry = ModelRegistry(LocalBlobBackend(tmp_path / "store"))
    with caplog.at_level(logging.INFO):
        version = registry.publish("frontend", write_bundle(tmp_path / "bundle"), metadata={})
    path = signing_key_path(home)
    key = path.read_text().strip()
    assert len(key) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key not in caplog.text and str(path) in caplog.text
    assert registry.verify("frontend", version).signature is not None
    # Another process on this machine (same MORA_HOME) verifies with the same file.
    assert ModelRegistry(LocalBlobBackend(tmp_path / "store")).verify("frontend", version)
    assert ensure_signing_key(path).read_text().strip() == key  # created once, then kept


def test_settings_find_the_key_env_first_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MORA_SIGNING_KEY")
    home = tmp_path / "home"
    assert signing_key_from_environment(home) is None
    ensure_signing_key(signing_key_path(home))
    from_file = signing_key_from_environment(home)
    assert from_file is not None and from_file[1] == str(signing_key_path(home))
    settings = MoraSettings(_env_file=None, home=home)  # type: ignore[call-arg]
    assert settings.signing_key_source() == from_file
    assert from_file[0] not in repr(settings)
    monkeypatch.setenv("MORA_SIGNING_KEY", "k" * 40)
    assert signing_key_from_environment(home) == ("k" * 40, "MORA_SIGNING_KEY")
    settings = MoraSettings(_env_file=None, home=home)  # type: ignore[call-arg]
    assert settings.signing_key_source() == ("k" * 40, "MORA_SIGNING_KEY")
    assert "k" * 40 not in repr(settings)
    assert ModelRegistry.from_settings(settings).signing_key_id() == key_id("k" * 40)
    monkeypatch.setenv("MORA_SIGNING_KEY", "short")
    with pytest.raises(SigningKeyError, match="MORA_SIGNING_KEY"):
        signing_key_from_environment(home)
    assert os.environ["MORA_SIGNING_KEY"] == "short"


def test_stack_up_creates_the_key_once_owner_only_outside_stack_env(tmp_path: Path) -> None:
    from infra.local.config import StackSettings
    from infra.local.stack import LocalStack

    home = tmp_path / "home"
    stack = LocalStack(home, StackSettings(), bucket="mora")
    assert stack.up(components=[]) == []  # nothing to start; the key is made before any component
    path = signing_key_path(home)
    key = path.read_text().strip()
    assert len(key) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    stack.up(components=[])
    assert path.read_text().strip() == key
    assert not stack.env_file.exists() or key not in stack.env_file.read_text()
