"""Settings for every entrypoint, read from the environment (prefix ``MORA_``).

The local stack writes ``$MORA_HOME/stack.env`` so that every command finds the S3 endpoint
and credentials it started, from any working directory; a ``.env`` file in the working directory or
real environment variables override it. ``MORA_HOME`` defaults to ``~/.mora`` (per user, not per
checkout). Secrets are ``SecretStr`` so they never appear in reprs or logs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where local state lives when ``MORA_HOME`` is not set: one per user, whatever the working directory.
DEFAULT_HOME_NAME = ".mora"


def default_home() -> Path:
    """``$MORA_HOME`` when set, else ``~/.mora``, as an absolute path (never relative to the working directory)."""
    configured = os.environ.get("MORA_HOME", "").strip()
    home = Path(configured).expanduser() if configured else Path.home() / DEFAULT_HOME_NAME
    return home.absolute()


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

    prometheus_url: str | None = Field(None, description="Prometheus base URL for `mora collect`")

    serve_host: str = Field("127.0.0.1", description="Ray Serve HTTP host")
    serve_port: int = Field(8000, ge=1, le=65535, description="Ray Serve HTTP port")
    serve_token: SecretStr | None = Field(None, description="Bearer token required by the endpoint, if set")
    serve_history_rows: int = Field(
        2_000, ge=0, description="Recent rows the endpoint and `mora recommend` read per service (0: none)"
    )
    serve_history_max_age_s: float = Field(
        60.0, ge=0, description="How long a service's recent rows are reused before they are read again"
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

    def s3_credentials(self) -> tuple[str | None, str | None]:
        """The access key pair as plain strings, for the clients that need them."""
        key = self.s3_access_key.get_secret_value() if self.s3_access_key else None
        secret = self.s3_secret_key.get_secret_value() if self.s3_secret_key else None
        return key, secret
