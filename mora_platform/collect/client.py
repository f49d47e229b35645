"""A Prometheus HTTP API client for collection: auth/TLS from settings, retries, clear errors.

It wraps prometheus-api-client's ``PrometheusConnect`` (one per thread, since a requests
session is not meant to be shared between threads) and turns every failure into a
``PrometheusError`` whose message names the server (without credentials) and the cause.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mora_platform.collect.settings import PrometheusSettings

_STATUS_RE = re.compile(r"HTTP Status Code (\d{3})")
_RETRY_STATUS = {429, 500, 502, 503, 504}


class PrometheusError(RuntimeError):
    """Base class: a Prometheus request failed (message is safe to show: no secrets)."""


class PrometheusUnavailableError(PrometheusError):
    """The server cannot be reached (refused, DNS, TLS) or keeps answering 5xx."""


class PrometheusAuthError(PrometheusError):
    """The server (or a proxy in front of it) refused the credentials: 401 / 403."""


class PrometheusTimeoutError(PrometheusError):
    """A request did not complete within the timeout."""


class PrometheusQueryError(PrometheusError):
    """The server rejected a query (bad PromQL, too many points) or its result is unusable."""


@dataclass(frozen=True)
class Series:
    """One result series: its labels and (unix seconds, value) samples."""

    labels: dict[str, str]
    samples: list[tuple[float, float]]


def redact_url(url: str) -> str:
    """``url`` without user:password, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class PrometheusClient:
    """Range queries, label values and a reachability check against one Prometheus."""

    def __init__(
        self,
        settings: PrometheusSettings,
        url: str | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        base = url or settings.url
        if not base:
            raise PrometheusError("no Prometheus URL: pass --prometheus or set MORA_PROMETHEUS_URL")
        if not base.startswith(("http://", "https://")):
            raise PrometheusError(
                f"Prometheus URL must start with http:// or https://, got {redact_url(base)!r}"
            )
        self.url = base.rstrip("/")
        self.display_url = redact_url(self.url)
        self._settings = settings
        self._verify = settings.tls_verify()
        self._sleep = sleep
        self._local = threading.local()

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            from prometheus_api_client import PrometheusConnect
            from requests import Session
            from urllib3.util.retry import Retry

            session = Session()
            session.verify = self._verify
            connection = PrometheusConnect(
                url=self.url,
                headers=self._settings.http_headers() or None,
                auth=self._settings.basic_auth(),
                session=session,
                retry=Retry(
                    total=0, raise_on_status=False
                ),  # retries are ours, with backoff and clear errors
                timeout=math.ceil(self._settings.timeout_seconds),
            )
            self._local.connection = connection
        return connection

    def check(self) -> None:
        """Raise a clear ``PrometheusError`` unless the server answers an instant query."""
        self._call("reachability check", lambda c: c.custom_query("vector(1)", params=self._timeout_param()))

    def query_range(
        self, query: str, start: int, end: int, step_seconds: int, *, what: str = "query"
    ) -> list[Series]:
        """``query`` evaluated at ``start``, ``start + step``, ... ``end`` (unix seconds)."""
        raw = self._call(
            what,
            lambda c: c.custom_query_range(
                query,
                start_time=_utc(start),
                end_time=_utc(end),
                step=f"{step_seconds}s",
                params=self._timeout_param(),
                timeout=self._settings.timeout_seconds,
            ),
        )
        series: list[Series] = []
        for item in raw or []:
            samples = [(float(ts), _to_float(value)) for ts, value in item.get("values", [])]
            series.append(Series(labels=dict(item.get("metric", {})), samples=samples))
        return series

    def query_instant(self, query: str, at: int, *, what: str = "query") -> list[Series]:
        """``query`` evaluated at ``at`` (unix seconds): one sample per series; a scalar is one unlabelled series."""
        params = {**self._timeout_param(), "time": str(at)}
        raw = self._call(
            what, lambda c: c.custom_query(query, params=params, timeout=self._settings.timeout_seconds)
        )
        if isinstance(raw, list) and len(raw) == 2 and not isinstance(raw[0], dict):  # scalar: [t, "v"]
            raw = [{"metric": {}, "value": raw}]
        series: list[Series] = []
        for item in raw or []:
            value = item.get("value") if isinstance(item, dict) else None
            if not isinstance(value, list | tuple) or len(value) != 2:
                continue
            sample = (float(value[0]), _to_float(value[1]))
            series.append(Series(labels=dict(item.get("metric", {})), samples=[sample]))
        return series

    def label_values(self, label: str, selector: str, start: int, end: int) -> list[str]:
        """Values of ``label`` on the series matching ``selector`` within ``[start, end]``."""
        params = {"match[]": selector, "start": str(start), "end": str(end)}
        values = self._call(f"label values of {label!r}", lambda c: c.get_label_values(label, params=params))
        return sorted(str(v) for v in values or [])

    def _timeout_param(self) -> dict[str, str]:
        # Ask the server to give up too, so an abandoned query stops costing it CPU.
        return {"timeout": f"{self._settings.timeout_seconds:g}s"}

    def _call(self, what: str, request: Callable[[Any], Any]) -> Any:
        attempts = self._settings.retries + 1
        delay = self._settings.backoff_seconds
        last_error: PrometheusError | None = None
        for attempt in range(attempts):
            try:
                return request(self._connection())
            except Exception as exc:  # classified below; anything unknown is re-raised
                error, retryable = self._classify(what, exc)
                if error is None:
                    raise
                last_error = error
                if not retryable or attempt == attempts - 1:
                    break
                self._sleep(delay)
                delay *= 2
        assert last_error is not None
        if attempts > 1 and not isinstance(last_error, PrometheusAuthError | PrometheusQueryError):
            last_error = type(last_error)(f"{last_error} (after {attempts} attempts)")
        raise last_error

    def _classify(self, what: str, exc: Exception) -> tuple[PrometheusError | None, bool]:
        """(clear error, retry?) for a failure; (None, False) for errors that are bugs."""
        import requests
        from prometheus_api_client import PrometheusApiClientException

        where = f"Prometheus at {self.display_url}"
        if isinstance(exc, requests.Timeout) or _is_timeout(exc):
            return PrometheusTimeoutError(
                f"{what}: {where} did not answer within {self._settings.timeout_seconds:g}s"
            ), True
        if isinstance(exc, requests.exceptions.SSLError):
            return PrometheusUnavailableError(
                f"{where}: TLS verification failed ({_reason(exc)}); set MORA_PROMETHEUS_CA_BUNDLE "
                "or MORA_PROMETHEUS_INSECURE_SKIP_VERIFY"
            ), False
        if isinstance(exc, requests.ConnectionError):
            return PrometheusUnavailableError(f"{where} is unreachable: {_reason(exc)}"), True
        if isinstance(exc, PrometheusApiClientException):
            match = _STATUS_RE.search(str(exc))
            status = int(match.group(1)) if match else 0
            detail = _server_message(str(exc))
            if status in (401, 403):
                return PrometheusAuthError(
                    f"{what}: {where} refused the request (HTTP {status}"
                    f"{' Unauthorized' if status == 401 else ' Forbidden'}); check MORA_PROMETHEUS_BEARER_TOKEN, "
                    "MORA_PROMETHEUS_USERNAME/PASSWORD or MORA_PROMETHEUS_HEADERS"
                ), False
            if status in _RETRY_STATUS:
                return PrometheusUnavailableError(f"{what}: {where} answered HTTP {status}: {detail}"), True
            if status == 422 and "timeout" in detail.lower():
                return PrometheusTimeoutError(
                    f"{what}: {where} timed out evaluating the query: {detail}"
                ), False
            return PrometheusQueryError(
                f"{what}: {where} rejected the query (HTTP {status}): {detail}"
            ), False
        if isinstance(exc, ValueError | KeyError):  # JSON of an unexpected shape
            return PrometheusQueryError(f"{what}: {where} sent an unexpected answer: {exc}"), False
        return None, False


def _utc(seconds: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, tz=UTC)


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _is_timeout(exc: Exception) -> bool:
    """A timeout that urllib3 wrapped into a connection error (its retry layer does that)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    inner = exc.args[0] if exc.args else None
    if not isinstance(inner, MaxRetryError):
        return False
    # NewConnectionError (refused, DNS) subclasses urllib3's ConnectTimeoutError: not a timeout
    return isinstance(inner.reason, Urllib3Timeout) and not isinstance(inner.reason, NewConnectionError)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "No route to host",
        "certificate verify failed",
        "Connection reset",
        "Remote end closed connection",
    ):
        if marker in text:
            return marker.lower()
    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", None)  # urllib3's MaxRetryError: the cause without the request URL
    return str(reason or text)[:200]


def _server_message(text: str) -> str:
    """The ``error`` field of Prometheus' JSON answer when present, else the raw body (shortened)."""
    match = re.search(r'"error"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    if match:
        return match.group(1)
    body = text.split("(", 1)[-1].rstrip(")")
    return body[:300]
