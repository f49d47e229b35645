"""Model registry: versioned, checksummed model bundles in object storage (S3 or a local directory)."""

from __future__ import annotations

from mora_platform.registry.backend import BlobBackend, LocalBlobBackend
from mora_platform.registry.errors import (
    ArtifactIntegrityError,
    BlobNotFoundError,
    InvalidServiceNameError,
    InvalidVersionError,
    ModelNotFoundError,
    RegistryError,
)
from mora_platform.registry.local_bundle import FetchedBundle, verify_local_bundle
from mora_platform.registry.manifest import (
    MANIFEST_SCHEMA_VERSION,
    CodeVersion,
    FileEntry,
    Manifest,
    ManifestSignature,
)
from mora_platform.registry.model_registry import LatestResolution, ModelRegistry
from mora_platform.registry.names import new_version, validate_service_name, validate_version
from mora_platform.registry.servable import Servable, ServableVersions
from mora_platform.registry.signing import (
    ManifestSignatureError,
    MissingSigningKeyError,
    SignatureMismatchError,
    UnsignedManifestError,
    sign_manifest,
)

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "ArtifactIntegrityError",
    "BlobBackend",
    "BlobNotFoundError",
    "CodeVersion",
    "FetchedBundle",
    "FileEntry",
    "InvalidServiceNameError",
    "InvalidVersionError",
    "LatestResolution",
    "LocalBlobBackend",
    "Manifest",
    "ManifestSignature",
    "ManifestSignatureError",
    "MissingSigningKeyError",
    "ModelNotFoundError",
    "ModelRegistry",
    "RegistryError",
    "Servable",
    "ServableVersions",
    "SignatureMismatchError",
    "UnsignedManifestError",
    "new_version",
    "sign_manifest",
    "validate_service_name",
    "validate_version",
    "verify_local_bundle",
]
