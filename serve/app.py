"""The Serve application: ``build_app(args)`` for ``serve run`` / ``serve deploy``.

``serve/config.yaml`` names ``serve.app:build_app`` as its import path and passes ``args``
(validated into :class:`ServeAppArgs`). Secrets never appear in the config: S3 credentials and
the bearer token come from the environment or from the env files listed in ``env_files``
(``MoraSettings``), resolved when the application is built. Importing this module starts nothing.

A plain question is answered on the service's recent rows: live from Prometheus when one is configured
(``MORA_PROMETHEUS_URL``; token and TLS from ``MORA_PROMETHEUS_*`` in the same env files, passed to the
replicas as bound arguments like the S3 keys, never as runtime_env variables), falling back to the
dataset's newest rows, else from the dataset alone (``MORA_SERVE_HISTORY_SOURCE``).

Each ingress replica answers a question it answered moments ago from its answer cache
(``answer_cache_ttl_s``, default 2 s, 0: off; capped by ``answer_cache_ttl`` at ``reload_interval_s``
and ``MORA_SERVE_HISTORY_MAX_AGE_S``, see ``serve.answer_cache``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from mora_platform.collect.settings import PrometheusSettings
from mora_platform.registry.recent_history import history_from_settings, prometheus_for_history
from mora_platform.settings import MoraSettings
from serve.answer_cache import DEFAULT_TTL_S as DEFAULT_ANSWER_CACHE_TTL_S
from serve.ingress import RecommendationIngress
from serve.model_deployment import DEFAULT_RELOAD_INTERVAL_S, ServiceModels
from serve.model_slots import ModelFactory

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # @serve.deployment made ServiceModels a Deployment; its class is func_or_class
    _ServiceModelsClass = ServiceModels
else:
    _ServiceModelsClass = ServiceModels.func_or_class


class ServeAppArgs(BaseModel):
    """Typed application arguments (the ``args:`` block of the Serve config)."""

    model_config = ConfigDict(extra="forbid")

    env_files: list[str] = Field(
        default_factory=list,
        description="Env files read for MoraSettings (MORA_* S3 settings, MORA_SERVE_TOKEN); "
        "default: $MORA_HOME/stack.env (~/.mora) and .env in the working directory",
    )
    settings_stamp: str | None = Field(
        default=None,
        description="Opaque; `mora serve up` sets it from the env files' sizes and times so that "
        "changed settings trigger a rebuild on `serve deploy`",
    )
    registry_prefix: str = Field(
        default="models", min_length=1, description="Key prefix of the model registry"
    )
    reload_interval_s: float = Field(
        default=DEFAULT_RELOAD_INTERVAL_S,
        ge=0.1,
        le=86_400,
        description="How often each model replica checks LATEST (initial user_config; "
        "a deployments[].user_config in the Serve config overrides it live)",
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Ingress wait for a model answer"
    )
    answer_cache_ttl_s: float = Field(
        default=DEFAULT_ANSWER_CACHE_TTL_S,
        ge=0,
        le=3600,
        description="How long each ingress replica reuses a plain answer to a question without history "
        "(serve.answer_cache; 0: off). Capped at reload_interval_s and MORA_SERVE_HISTORY_MAX_AGE_S, the "
        "intervals at which an answer can change, so a publish or new recent rows show up at most this "
        "much later",
    )


def resolve_settings(args: ServeAppArgs) -> MoraSettings:
    """MoraSettings from the environment plus the listed env files (missing files are skipped)."""
    if not args.env_files:
        return MoraSettings()  # type: ignore[call-arg]  # fields come from the environment
    existing = tuple(path for path in args.env_files if Path(path).is_file())
    return MoraSettings(_env_file=existing or None)  # type: ignore[call-arg]


def resolve_prometheus(args: ServeAppArgs, settings: MoraSettings) -> PrometheusSettings | None:
    """The Prometheus that recent rows are read from live (None: the dataset's rows), from the same
    environment and env files as ``resolve_settings``."""
    existing = [path for path in args.env_files if Path(path).is_file()] if args.env_files else None
    return prometheus_for_history(settings, existing)


class ServiceModelsLiveHistory(_ServiceModelsClass):
    """``ServiceModels`` whose recent rows are read live from Prometheus (dataset as fallback)."""

    def __init__(
        self,
        settings: MoraSettings,
        registry_prefix: str = "models",
        factory: ModelFactory | None = None,
        prometheus: PrometheusSettings | None = None,
    ) -> None:
        super().__init__(settings, registry_prefix, factory)
        loader = self._loader
        if prometheus is not None and loader.recent is not None:
            loader.recent = history_from_settings(settings, loader.recent.store, prometheus)


def answer_cache_ttl(args: ServeAppArgs, settings: MoraSettings) -> float:
    """The ingress's answer-cache TTL: ``args.answer_cache_ttl_s`` capped at the model replicas' reload
    interval and, when they read recent rows, at how long they reuse them (0 there: no cache)."""
    ttl = min(args.answer_cache_ttl_s, args.reload_interval_s)
    if settings.serve_history_rows > 0:
        ttl = min(ttl, settings.serve_history_max_age_s)
    if ttl < args.answer_cache_ttl_s:
        logger.info(
            "answer cache TTL %g s capped at %g s (reload_interval_s %g s, history max age %g s)",
            args.answer_cache_ttl_s,
            ttl,
            args.reload_interval_s,
            settings.serve_history_max_age_s,
        )
    return ttl


def compose_app(
    args: ServeAppArgs,
    settings: MoraSettings,
    factory: ModelFactory | None = None,
    prometheus: PrometheusSettings | None = None,
    replicas: int | None = None,
) -> Application:
    """Ingress -> multiplexed models, wired with explicit settings (tests call this directly); recent
    rows live from ``prometheus`` when given (see ``resolve_prometheus``), else from the datasets.
    ``replicas`` fixes the replica count of both deployments (default: autoscaling from two,
    ``serve.resilience``)."""
    # @serve.deployment turned the classes into Deployments; mypy still sees the classes.
    models_deployment: Any = ServiceModels
    ingress_deployment: Any = RecommendationIngress
    if replicas:
        models_deployment = models_deployment.options(num_replicas=replicas, autoscaling_config=None)
        ingress_deployment = ingress_deployment.options(num_replicas=replicas, autoscaling_config=None)
    user_config = {"reload_interval_s": args.reload_interval_s}
    if prometheus is not None and settings.serve_history_rows > 0:
        models = models_deployment.options(func_or_class=ServiceModelsLiveHistory, user_config=user_config)
        models = models.bind(settings, args.registry_prefix, factory, prometheus)
    else:
        models = models_deployment.options(user_config=user_config).bind(
            settings, args.registry_prefix, factory
        )
    app: Application = ingress_deployment.bind(
        models, settings, args.registry_prefix, args.request_timeout_s, answer_cache_ttl(args, settings)
    )
    return app


def build_app(args: ServeAppArgs | dict[str, Any]) -> Application:
    """Serve application builder: ``serve run serve.app:build_app`` or via ``serve/config.yaml``."""
    parsed = args if isinstance(args, ServeAppArgs) else ServeAppArgs.model_validate(args or {})
    settings = resolve_settings(parsed)
    return compose_app(parsed, settings, prometheus=resolve_prometheus(parsed, settings))
