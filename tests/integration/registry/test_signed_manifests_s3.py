"""The drill of issue 14 against the real S3 server: a model written straight into storage is refused.

v1 is published by the platform (signed). A writer holding S3 credentials but not the signing key
copies it to a new version with a changed calibration file, recomputes every checksum of the
manifest, writes it straight into the bucket and points LATEST at it. The registry, the listing of
servable versions and a Serve model slot refuse that version and serve v1, degraded, saying why.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from mora_platform.registry import (
    ModelRegistry,
    ServableVersions,
    SignatureMismatchError,
    UnsignedManifestError,
    new_version,
)
from mora_platform.registry.manifest import sha256_bytes
from mora_platform.settings import MoraSettings

pytestmark = pytest.mark.integration

CALIBRATION = "calibration.json"


def _bundle(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / CALIBRATION).write_text(json.dumps({"cpu_offset_millicores": 45}))
    (directory / "config.json").write_text('{"seq_len": 30}')
    (directory / "lstm").mkdir()
    (directory / "lstm" / "model.keras").write_bytes(bytes((i * 13) % 256 for i in range(50_000)))
    return directory


def _write_forged_copy(store: Any, prefix: str, service: str, source: str, *, keep_signature: bool) -> str:
    """Copy ``source`` to a new version through plain S3 calls, calibration changed, checksums
    recomputed, signature kept (now wrong) or dropped; LATEST names the copy. Returns its version."""
    target = new_version()
    base = f"{prefix}/{service}"
    document = json.loads(store.get_bytes(f"{base}/{source}/manifest.json"))
    for name in document["files"]:
        data = store.get_bytes(f"{base}/{source}/{name}")
        if name == CALIBRATION:
            data = json.dumps({"cpu_offset_millicores": 5_012}).encode()
        document["files"][name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        store.put_bytes(f"{base}/{target}/{name}", data)
    document["version"] = target
    if not keep_signature:
        document.pop("signature")
    store.put_bytes(f"{base}/{target}/manifest.json", json.dumps(document, indent=2).encode())
    store.put_bytes(f"{base}/LATEST", f"{target}\n".encode())
    return target


@pytest.mark.parametrize("keep_signature", [True, False], ids=["copied-signature", "unsigned"])
def test_a_model_written_straight_into_s3_is_refused_and_v1_serves_degraded(
    object_store: Any, s3_settings: MoraSettings, tmp_path: Path, keep_signature: bool
) -> None:
    from serve.model_slots import ModelLoader

    prefix = f"signed-{secrets.token_hex(4)}"
    publisher = ModelRegistry(object_store, prefix=prefix)
    first = publisher.publish("frontend", _bundle(tmp_path / "bundle"), metadata={"metrics": {}})

    def factory(directory: Path) -> dict[str, int]:
        return json.loads((directory / CALIBRATION).read_text())  # type: ignore[no-any-return]

    # A reader as the endpoint builds it (settings: S3 endpoint, key pair, the signing key).
    reader = ModelRegistry.from_settings(s3_settings, prefix=prefix)
    loader = ModelLoader(reader, tmp_path / "slots", factory=factory)
    slot = loader.load("frontend")
    assert (slot.version, slot.degraded_reason) == (first, None)

    second = _write_forged_copy(object_store, prefix, "frontend", first, keep_signature=keep_signature)
    assert reader.resolve_latest("frontend").version == second  # LATEST names the copy
    expected = SignatureMismatchError if keep_signature else UnsignedManifestError
    with pytest.raises(expected, match=rf"frontend/{second}.*manifest\.json.*republish"):
        reader.verify("frontend", second)
    with pytest.raises(expected):
        reader.fetch("frontend", None, tmp_path / "recommend-cache")  # what `mora recommend` does
    assert not (tmp_path / "recommend-cache").exists()

    served = ServableVersions(reader).servable("frontend")  # GET /v1/services
    assert (served.version, served.degraded) == (first, True)
    assert second in (served.degraded_reason or "")

    assert loader.refresh(slot) is False  # the running replica keeps v1
    assert slot.version == first and slot.loaded.model == {"cpu_offset_millicores": 45}
    assert slot.degraded_reason is not None and second in slot.degraded_reason
    fresh = ModelLoader(reader, tmp_path / "fresh", factory=factory).load("frontend")  # a new replica
    assert fresh.version == first and fresh.loaded.model == {"cpu_offset_millicores": 45}
    assert fresh.degraded_reason is not None and "sign" in fresh.degraded_reason

    # The platform's next publish is signed and serves again, not degraded.
    third = publisher.publish("frontend", tmp_path / "bundle", metadata={"metrics": {}})
    assert loader.refresh(slot) is True
    assert (slot.version, slot.degraded_reason) == (third, None)
    assert ServableVersions(reader).servable("frontend").version == third
