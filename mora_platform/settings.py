"""Settings for every entrypoint, read from the environment (prefix ``MORA_``).

The local stack writes ``$MORA_HOME/stack.env`` so that every command finds the S3 endpoint
and credentials it started, from any working directory; a ``.env`` file in the working directory or
real environment variables override it. ``MORA_HOME`` defaults to ``~/.mora`` (per user, not per
checkout). Secrets are ``SecretStr`` so they never appear in reprs or logs.

The manifest signing key (``MORA_SIGNING_KEY``, else the file ``$MORA_HOME/signing_key``, 0600) is
what lets a reader tell a version the platform published from one written straight into storage
(``mora_platform.registry.signing``). It is never written to S3 or ``stack.env`` and never put in a
Ray job's runtime_env: jobs on the local stack's head read the file from their ``MORA_HOME``, as they
read the S3 key pair from ``stack.env``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where local state lives when ``MORA_HOME`` is not set: one per user, whatever the working directory.
DEFAULT_HOME_NAME = ".mora"


def default_home() -> Path:
    """``$MORA_HOME`` when set, else ``~/.mora``, as an absolute path (never relative to the working directory)."""
    configured = os.environ.get("MORA_HOME", "").strip()
    home = Path(configured).expanduser() if configured else Path.home() / DEFAULT_HOME_NAME
    return home.absolute()


#: The manifest signing key's file under MORA_HOME (the key alone, hex, mode 0600).
SIGNING_KEY_FILE_NAME = "signing_key"
#: Environment variables of manifest signing (they win over the file / the default).
SIGNING_KEY_ENV = "MORA_SIGNING_KEY"
ACCEPT_UNSIGNED_ENV = "MORA_ACCEPT_UNSIGNED"
#: Shortest key accepted (characters): a generated key is 64 hex characters (256 bits).
MIN_SIGNING_KEY_LENGTH = 32


class SigningKeyError(ValueError):
    """A signing key that is unusable (too short); the message says where it came from."""


def signing_key_path(home: Path | None = None) -> Path:
    """``{home}/signing_key`` (``home`` defaults to ``$MORA_HOME`` or ``~/.mora``)."""
    return (Path(home) if home is not None else default_home()) / SIGNING_KEY_FILE_NAME


def ensure_signing_key(path: Path) -> Path:
    """Create the key file (256 random bits, hex, mode 0600) unless it holds a key; return ``path``.

    Written to a temporary file and renamed, so a reader never sees half a key; of two processes
    creating it at once, the second to rename wins and both then read that one.
    """
    if read_signing_key(path) is not None:
        os.chmod(path, 0o600)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_hex(32))
    os.chmod(tmp, 0o600)
    if read_signing_key(path) is not None:  # created meanwhile by another process: keep that one
        tmp.unlink(missing_ok=True)
    else:
        tmp.replace(path)
    return path


def read_signing_key(path: Path) -> str | None:
    """The key in ``path`` (None when the file is missing, unreadable or empty)."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def checked_signing_key(key: str, source: str) -> str:
    """``key`` stripped, or ``SigningKeyError`` naming ``source`` when it is too short to be a key."""
    key = key.strip()
    if len(key) < MIN_SIGNING_KEY_LENGTH:
        raise SigningKeyError(
            f"the manifest signing key from {source} is {len(key)} characters long; "
            f"use at least {MIN_SIGNING_KEY_LENGTH} random characters (e.g. `openssl rand -hex 32`)"
        )
    return key


def signing_key_from_environment(home: Path | None = None) -> tuple[str, str] | None:
    """(key, where it came from): ``MORA_SIGNING_KEY``, else ``{home}/signing_key``; None when neither."""
    value = os.environ.get(SIGNING_KEY_ENV, "")
    if value.strip():
        return checked_signing_key(value, SIGNING_KEY_ENV), SIGNING_KEY_ENV
    path = signing_key_path(home)
    stored = read_signing_key(path)
    if stored is not None:
        return checked_signing_key(stored, str(path)), str(path)
    return None


def accept_unsigned_from_environment() -> bool:
    """Whether ``MORA_ACCEPT_UNSIGNED`` asks to accept manifests without a signature (default no)."""
    return os.environ.get(ACCEPT_UNSIGNED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def settings_env_files() -> tuple[Path, Path]:
    """The dotenv files every settings class reads, lowest priority first: the stack's, then ``./.env``."""
    return default_home() / "stack.env", Path(".env")


class MoraSettings(BaseSettings):
    """Where things are: object storage, Ray, Prometheus, local state."""

    model_config = SettingsConfigDict(
        env_prefix="MORA_",
        env_file=(f"~/{DEFAULT_HOME_NAME}/stack.env", ".env"),  # resolved per instance in __init__
        env_file_encoding="utf-8",
        extra="ignore",
    )

    home: Path = Field(
        default_factory=default_home,
        description="Local state directory (stack data, PIDs, logs, stack.env); default ~/.mora",
    )

    s3_endpoint_url: str = Field("http://127.0.0.1:8333", description="S3 endpoint (MinIO, SeaweedFS, AWS)")
    s3_bucket: str = Field("mora", description="Bucket holding datasets/, models/ and runs/")
    s3_access_key: SecretStr | None = Field(None, description="S3 access key id")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret access key")
    s3_region: str = Field("us-east-1", description="S3 region name (ignored by most local servers)")

    ray_address: str | None = Field(None, description="Ray cluster address; None starts/uses a local one")
    ray_dashboard_url: str = Field("http://127.0.0.1:8265", description="Ray dashboard / Jobs API URL")
    train_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each training task and Tune trial asks for besides its CPUs, as "
        "JSON (MORA_TRAIN_RESOURCES='{\"mora_train\": 1}'): the work then runs only on nodes started with "
        "them (`ray start --resources`, a KubeRay worker group's rayStartParams); default {}: any node",
    )

    prometheus_url: str | None = Field(None, description="Prometheus base URL for `mora collect`")

    signing_key: SecretStr | None = Field(
        None,
        description="Key of the model manifests' HMAC signatures; unset: $MORA_HOME/signing_key "
        "(created by `mora stack up` or the first publish)",
    )
    accept_unsigned: bool = Field(
        False,
        description="Serve model versions whose manifest carries no signature (published before "
        "signing existed), degraded; signatures that do not verify are refused regardless",
    )

    serve_host: str = Field("127.0.0.1", description="Ray Serve HTTP host")
    serve_port: int = Field(8000, ge=1, le=65535, description="Ray Serve HTTP port")
    serve_token: SecretStr | None = Field(None, description="Bearer token required by the endpoint, if set")
    serve_history_rows: int = Field(
        2_000, ge=0, description="Recent rows the endpoint and `mora recommend` read per service (0: none)"
    )
    serve_history_max_age_s: float = Field(
        60.0, ge=0, description="How long a service's recent rows are reused before they are read again"
    )
    serve_history_source: Literal["auto", "dataset", "prometheus"] = Field(
        "auto",
        description="Where recent rows come from: live from Prometheus (falling back to the dataset), the "
        "dataset's newest rows only, or auto (Prometheus when MORA_PROMETHEUS_URL is set)",
    )
    serve_history_namespace: str | None = Field(
        None, description="Namespace of live rows (default: the one the model's dataset was collected from)"
    )
    serve_history_timeout_s: float = Field(
        5.0, gt=0, description="Bound of one live Prometheus read; slower reads fall back to the dataset"
    )

    def __init__(self, **values: Any) -> None:
        # The stack file lives under MORA_HOME (default ~/.mora): resolve it per instance.
        if "_env_file" not in values:
            values["_env_file"] = settings_env_files()
        super().__init__(**values)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # A relative MORA_HOME would make every command depend on its working directory.
        return Path(value).expanduser().absolute()

    @field_validator("train_resources")
    @classmethod
    def _custom_resources_only(cls, value: dict[str, float]) -> dict[str, float]:
        # CPUs and memory have their own options (--num-cpus, --memory-mb, --cpus-per-trial).
        builtin = sorted(
            name for name in value if name.upper() in ("CPU", "GPU", "MEMORY", "OBJECT_STORE_MEMORY")
        )
        if builtin:
            raise ValueError(
                f"built-in resources {builtin} are set by the CPU/memory options; name custom ones"
            )
        if any(amount <= 0 for amount in value.values()):
            raise ValueError("every custom resource amount must be > 0")
        return value

    def signing_key_source(self) -> tuple[str, str] | None:
        """(manifest signing key, where it came from): ``signing_key`` when set, else
        ``{home}/signing_key``; None when neither holds one. Never log the key."""
        if self.signing_key is not None and self.signing_key.get_secret_value().strip():
            return checked_signing_key(self.signing_key.get_secret_value(), SIGNING_KEY_ENV), SIGNING_KEY_ENV
        path = signing_key_path(self.home)
        stored = read_signing_key(path)
        return (checked_signing_key(stored, str(path)), str(path)) if stored is not None else None

    def s3_credentials(self) -> tuple[str | None, str | None]:
        """The access key pair as plain strings, for the clients that need them."""
        key = self.s3_access_key.get_secret_value() if self.s3_access_key else None
        secret = self.s3_secret_key.get_secret_value() if self.s3_secret_key else None
        return key, secret
