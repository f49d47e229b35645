"""Manifest signatures: only the platform's publisher can make a version servable.

The sha256 checksums of a manifest catch accidents (a truncated upload, a flipped byte); whoever can
write to the bucket, or to the storage under it, can also recompute them. So the publisher signs
every manifest with an HMAC-SHA256 keyed by a secret the storage never holds (``MORA_SIGNING_KEY``,
else ``$MORA_HOME/signing_key``: see ``mora_platform.settings``), and every reader (``verify``,
``fetch``, the Serve model slots through them, ``mora recommend``) checks it before trusting a byte.
A copy of a model with a changed file and a recomputed manifest, written straight into storage and
named by ``LATEST``, is refused; the serving fallback then serves the newest version that verifies,
degraded, with the refusal as the reason.

What is signed: ``SIGNATURE_CONTEXT`` followed by the manifest's canonical JSON -- the stored JSON
document without its ``signature`` field, keys sorted, no whitespace, ASCII only. It is computed
from the stored bytes, so a reader with a newer manifest schema still verifies older manifests.

Versions published before signing existed carry no signature. They are refused by default (safe:
an unsigned manifest is exactly what a writer without the key produces); the error says how to
republish. ``MORA_ACCEPT_UNSIGNED=1`` accepts them during a migration, logged and reported as
degraded by ``ServableVersions``. A signature that does not verify is refused whatever the setting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from mora_platform.registry.errors import ArtifactIntegrityError
from mora_platform.registry.manifest import MANIFEST_NAME, Manifest, ManifestSignature

#: Domain separation: a signature over a manifest is never valid for another kind of document.
SIGNATURE_CONTEXT = b"mora-manifest-v1\n"
SIGNATURE_FIELD = "signature"

#: How to make a refused version servable again, for error messages.
REPUBLISH_HINT = (
    "republish it with the platform's publisher holding the signing key (`mora train SERVICE` or "
    "`mora retrain`; the key is MORA_SIGNING_KEY or $MORA_HOME/signing_key on the publishing machine)"
)


class ManifestSignatureError(ArtifactIntegrityError):
    """A manifest whose signature is missing, wrong, or cannot be checked: the version is refused."""

    def __init__(self, service: str, version: str, problem: str) -> None:
        super().__init__(service, version, MANIFEST_NAME, problem)


class UnsignedManifestError(ManifestSignatureError):
    """No signature: published before signing existed, or written straight into storage."""


class SignatureMismatchError(ManifestSignatureError):
    """A signature made with another key, or over other content (a changed manifest)."""


class MissingSigningKeyError(ManifestSignatureError):
    """This reader holds no signing key, so it can trust no version."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing duplicate keys (parsers disagree on which one wins)."""
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise ValueError(f"duplicate key {name!r}")
        document[name] = value
    return document


def key_id(key: str) -> str:
    """A short fingerprint of ``key`` (safe to show and store; it does not reveal the key)."""
    return hashlib.sha256(b"mora-signing-key-id\n" + key.encode("utf-8")).hexdigest()[:12]


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The signed bytes of a manifest document (its ``signature`` field left out)."""
    unsigned = {name: value for name, value in document.items() if name != SIGNATURE_FIELD}
    body = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return SIGNATURE_CONTEXT + body.encode("ascii")


def _mac(document: dict[str, Any], key: str) -> str:
    return hmac.new(key.encode("utf-8"), canonical_bytes(document), hashlib.sha256).hexdigest()


def sign_manifest(manifest: Manifest, key: str) -> Manifest:
    """``manifest`` with the signature of its content under ``key`` (any earlier signature replaced)."""
    document = json.loads(manifest.model_copy(update={SIGNATURE_FIELD: None}).to_json_bytes())
    signature = ManifestSignature(key_id=key_id(key), value=_mac(document, key))
    return manifest.model_copy(update={SIGNATURE_FIELD: signature})


def check_signature(
    raw: bytes,
    manifest: Manifest,
    key: str | None,
    *,
    key_source: str = "the registry",
    accept_unsigned: bool = False,
) -> bool:
    """Check the signature of the stored manifest ``raw`` (already parsed into ``manifest``).

    Returns True when it verifies, False for an unsigned manifest accepted by ``accept_unsigned``;
    raises a ``ManifestSignatureError`` naming the service/version otherwise.
    """
    service, version = manifest.service, manifest.version
    signature = manifest.signature
    if signature is None:
        if accept_unsigned:
            return False
        raise UnsignedManifestError(
            service,
            version,
            "manifest is not signed (published before manifest signing existed, or written straight "
            f"into storage, not by the platform's publisher); refused: {REPUBLISH_HINT}. To serve "
            "versions published before signing meanwhile, set MORA_ACCEPT_UNSIGNED=1",
        )
    if key is None:
        raise MissingSigningKeyError(
            service,
            version,
            "this reader holds no manifest signing key, so it cannot check the publisher's signature "
            f"(key {signature.key_id}); refused: set MORA_SIGNING_KEY or put the publisher's key in "
            "$MORA_HOME/signing_key (mode 0600) on this machine",
        )
    try:
        document = json.loads(raw, object_pairs_hook=_unique_keys)
    except ValueError as exc:
        raise SignatureMismatchError(
            service, version, f"manifest is ambiguous JSON ({exc}); refused"
        ) from None
    if not isinstance(document, dict):  # cannot happen for a parsed Manifest; kept for mypy
        raise SignatureMismatchError(service, version, "manifest is not a JSON object; refused")
    if hmac.compare_digest(_mac(document, key), signature.value):
        # What was signed is what the caller parsed (no parser difference to hide content behind).
        if Manifest.model_validate(document) != manifest:
            raise SignatureMismatchError(service, version, "manifest parses ambiguously; refused")
        return True
    ours = key_id(key)
    if signature.key_id != ours:
        why = f"it names key {signature.key_id}, this reader holds key {ours} (from {key_source})"
    else:
        why = "the manifest was changed after it was signed"
    raise SignatureMismatchError(
        service,
        version,
        f"manifest signature does not verify ({why}): not published by the platform's publisher "
        f"with this key; refused: {REPUBLISH_HINT}",
    )
