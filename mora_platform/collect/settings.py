"""How `mora collect` reaches Prometheus and slices its queries (env prefix ``MORA_PROMETHEUS_``).

Values come from the environment / ``$MORA_HOME/stack.env`` / ``.env``, then from an optional YAML
or JSON settings file, then from command-line flags (each later source wins). Secrets are
``SecretStr``: they never show up in reprs, logs or summaries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mora_platform.collect.queries import DEFAULT_POD_REGEX, QueryTable
from mora_platform.collect.timeparse import parse_duration

# Prometheus refuses range queries with more than 11,000 points per series.
PROMETHEUS_MAX_POINTS = 11_000


class SettingsFileError(ValueError):
    """The settings file is missing, unreadable or holds invalid values."""


class PrometheusSettings(BaseSettings):
    """Connection, auth/TLS, chunking and query settings for collecting from Prometheus."""

    model_config = SettingsConfigDict(
        env_prefix="MORA_PROMETHEUS_",
        env_file=("~/.mora/stack.env", ".env"),  # resolved per instance (MORA_HOME) in __init__
        env_file_encoding="utf-8",
        extra="ignore",
    )

    url: str | None = Field(None, description="Prometheus base URL, e.g. http://prometheus:9090")
    bearer_token: SecretStr | None = Field(None, description="Bearer token sent as Authorization header")
    username: str | None = Field(None, description="Basic-auth user name")
    password: SecretStr | None = Field(None, description="Basic-auth password")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra HTTP headers (JSON object)"
    )
    ca_bundle: Path | None = Field(None, description="CA bundle (PEM) to verify the server's TLS certificate")
    insecure_skip_verify: bool = Field(False, description="Do not verify the server's TLS certificate")

    timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one HTTP request")
    retries: int = Field(
        3, ge=0, le=20, description="Retries of a failed query (connection errors, 5xx, 429)"
    )
    backoff_seconds: float = Field(1.0, ge=0, description="First retry delay; doubles on each retry")
    max_concurrency: int = Field(4, ge=1, le=64, description="Queries in flight at once")

    step: str = Field("30s", description="Query resolution (Prometheus duration)")
    points_per_chunk: int = Field(
        10_000, ge=2, le=PROMETHEUS_MAX_POINTS, description="Points per series per range query"
    )
    context_steps: int = Field(
        10, ge=0, le=1000, description="Extra steps queried before each chunk so derived metrics see history"
    )
    rate_window: str = Field("2m", description="Window of rate() in the queries")
    pod_regex: str = Field(
        DEFAULT_POD_REGEX, description="Pod-name pattern of a service ({service} placeholder)"
    )
    queries: dict[str, str] = Field(
        default_factory=dict, description="PromQL templates overriding the defaults"
    )
    scenario: str = Field("collected", description="Value of the scenario column for collected rows")

    def __init__(self, **values: Any) -> None:
        # Same files as MoraSettings: $MORA_HOME/stack.env (default ~/.mora), then ./.env.
        if "_env_file" not in values:
            from mora_platform.settings import settings_env_files

            values["_env_file"] = settings_env_files()
        super().__init__(**values)

    @field_validator("step", "rate_window")
    @classmethod
    def _valid_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _fits_point_limit(self) -> PrometheusSettings:
        if self.points_per_chunk + self.context_steps > PROMETHEUS_MAX_POINTS:
            raise ValueError(
                f"points_per_chunk ({self.points_per_chunk}) + context_steps ({self.context_steps}) "
                f"exceeds Prometheus' {PROMETHEUS_MAX_POINTS} points per series"
            )
        if self.username and self.bearer_token:
            raise ValueError("set either bearer_token or username/password, not both")
        QueryTable.build(self.queries, pod_regex=self.pod_regex, window=self.rate_window)
        return self

    @property
    def step_seconds(self) -> int:
        """The step in whole seconds (Prometheus aligns range queries on them)."""
        seconds = parse_duration(self.step)
        if seconds != int(seconds) or seconds < 1:
            raise ValueError(f"step: {self.step!r} must be a whole number of seconds >= 1")
        return int(seconds)

    def query_table(self) -> QueryTable:
        """The PromQL table with this settings' overrides."""
        return QueryTable.build(self.queries, pod_regex=self.pod_regex, window=self.rate_window)

    def http_headers(self) -> dict[str, str]:
        """Headers for every request (auth included); never log the result."""
        headers = {name: value.get_secret_value() for name, value in self.headers.items()}
        if self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token.get_secret_value()}"
        return headers

    def basic_auth(self) -> tuple[str, str] | None:
        """The (user, password) pair for basic auth, if configured."""
        if not self.username:
            return None
        password = self.password.get_secret_value() if self.password else ""
        return self.username, password

    def tls_verify(self) -> bool | str:
        """What requests' ``verify`` gets: a CA bundle path, False to skip, True for the system CAs."""
        if self.insecure_skip_verify:
            return False
        if self.ca_bundle is not None:
            if not self.ca_bundle.is_file():
                raise SettingsFileError(f"ca_bundle: file not found: {self.ca_bundle}")
            return str(self.ca_bundle)
        return True

    @classmethod
    def load(cls, settings_file: Path | None = None, **overrides: Any) -> PrometheusSettings:
        """Environment, then ``settings_file`` (YAML/JSON), then non-None ``overrides``."""
        values: dict[str, Any] = read_settings_file(settings_file) if settings_file else {}
        values.update({key: value for key, value in overrides.items() if value is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            where = f" in {settings_file}" if settings_file else ""
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
            )
            raise SettingsFileError(f"invalid Prometheus settings{where}: {problems}") from None


def read_settings_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping of settings (JSON is YAML, but JSON errors read better from json)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsFileError(f"{path}: cannot read settings file: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SettingsFileError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsFileError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data
