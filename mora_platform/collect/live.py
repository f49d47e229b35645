"""A service's newest rows read live from Prometheus, as the same unified rows ``mora collect`` writes.

The Serve deployment and ``mora recommend`` answer a plain question on a service's recent rows
(``registry.recent_history``). When a Prometheus is configured they read them here instead of from
the dataset: the collector's queries (``PrometheusSettings.query_table``) over the newest ``rows``
grid points at the dataset's step, ending at the last whole step before now, turned into rows by
``collect.frame.build_chunk_frame`` (with the same context steps before the window, so rates and
derived metrics match a collected chunk). Nothing is written anywhere.

The request path cannot wait like a batch collection: the client is built without retries and with a
short timeout, so a slow or down Prometheus costs one bounded wait per service per cache interval,
after which the caller falls back to the dataset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from mora_platform.collect.client import PrometheusClient, PrometheusError, PrometheusQueryError, redact_url
from mora_platform.collect.frame import Derive, build_chunk_frame, default_derive
from mora_platform.collect.settings import PROMETHEUS_MAX_POINTS, PrometheusSettings

#: Default bound of one live query (seconds); the caller answers from the dataset after it.
DEFAULT_LIVE_TIMEOUT_S = 5.0


class LiveHistory:
    """Newest unified rows of one service in one namespace, queried from Prometheus on each ``read``."""

    def __init__(
        self,
        settings: PrometheusSettings,
        *,
        timeout_s: float = DEFAULT_LIVE_TIMEOUT_S,
        client: PrometheusClient | None = None,
        derive: Derive = default_derive,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        # One try, bounded: a request waits at most this long before the dataset answers instead.
        self.settings = settings.model_copy(
            update={"retries": 0, "timeout_seconds": min(settings.timeout_seconds, timeout_s)}
        )
        self.client = client if client is not None else PrometheusClient(self.settings)
        self._table = self.settings.query_table()
        self._derive = derive
        self._clock = clock

    @property
    def display_url(self) -> str:
        """The server's URL without credentials (for messages)."""
        return redact_url(self.client.url)

    def read(self, service: str, namespace: str, *, rows: int, step_seconds: int) -> pd.DataFrame:
        """The newest ``rows`` grid points (``step_seconds`` apart, the last whole step before now) that
        hold data; empty when Prometheus has none. ``PrometheusError`` when a query fails."""
        if rows < 1 or step_seconds < 1:
            raise ValueError(f"rows and step_seconds must be >= 1, got {rows} and {step_seconds}")
        context = self.settings.context_steps
        rows = min(rows, PROMETHEUS_MAX_POINTS - context)  # one range query per metric
        last = int(self._clock()) // step_seconds * step_seconds
        first = last - (rows - 1) * step_seconds
        queries = self._table.render_all(namespace, service)
        samples = self._query(queries, first - context * step_seconds, last, step_seconds)
        chunk = build_chunk_frame(
            samples,
            service=service,
            namespace=namespace,
            scenario=self.settings.scenario,
            first=first,
            last=last,
            step=step_seconds,
            derive=self._derive,
        )
        return chunk.frame

    def _query(
        self, queries: dict[str, str], start: int, end: int, step: int
    ) -> dict[str, list[tuple[float, float]]]:
        def run(item: tuple[str, str]) -> tuple[str, list[tuple[float, float]]]:
            metric, query = item
            series = self.client.query_range(query, start, end, step, what=f"live query {metric}")
            if len(series) > 1:
                raise PrometheusQueryError(
                    f"live query {metric} returned {len(series)} series; its template must aggregate "
                    "to one series per service"
                )
            return metric, series[0].samples if series else []

        workers = max(1, min(self.settings.max_concurrency, len(queries)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promql-live") as pool:
            results = list(pool.map(run, queries.items()))  # the first failure is raised here
        return dict(results)


__all__ = ["DEFAULT_LIVE_TIMEOUT_S", "LiveHistory", "PrometheusError"]
