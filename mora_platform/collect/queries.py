"""The PromQL table: one query template per metric, overridable because clusters label things differently.

A template names its inputs with placeholders that are substituted literally (PromQL's own
braces make ``str.format`` unusable): ``{namespace}``, ``{service}``, ``{pod_regex}``
(the service's pod-name pattern, already rendered) and ``{window}`` (the rate window).
Each query must return one series for the service (sum/avg inside the template).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from mora_platform.data import schema

PLACEHOLDERS: tuple[str, ...] = ("namespace", "service", "pod_regex", "window")

# Pod names of a Deployment: {deployment}-{pod-template-hash}-{5 random chars}.
DEFAULT_POD_REGEX = "{service}-[a-z0-9]{5,10}-[a-z0-9]{5}"

_POD = 'namespace="{namespace}",pod=~"{pod_regex}"'
_CONTAINER = _POD + ',container!="",container!="POD"'

DEFAULT_QUERIES: dict[str, str] = {
    "cpu_cores_value": "sum(rate(container_cpu_usage_seconds_total{" + _CONTAINER + "}[{window}]))",
    "mem_bytes_value": "sum(container_memory_working_set_bytes{" + _CONTAINER + "})",
    "net_rx_bytes_value": "sum(rate(container_network_receive_bytes_total{" + _POD + "}[{window}]))",
    "net_tx_bytes_value": "sum(rate(container_network_transmit_bytes_total{" + _POD + "}[{window}]))",
    "pod_restarts_value": "sum(kube_pod_container_status_restarts_total{" + _POD + "})",
    "replica_count_value": 'sum(kube_deployment_status_replicas{namespace="{namespace}",deployment="{service}"})',
    # Cluster-wide node utilisation in percent, as in the seed data (one node under Minikube).
    "node_cpu_util_value": '100 * (1 - avg(rate(node_cpu_seconds_total{mode="idle"}[{window}])))',
    "node_mem_util_value": (
        "100 * (1 - sum(node_memory_MemAvailable_bytes) / sum(node_memory_MemTotal_bytes))"
    ),
}

# Optional context query: concurrent load, if the cluster has a metric for it (none by default).
LOAD_USERS_KEY = "load_users"

# Which deployments exist in a namespace (for `--all`): the label values of this series selector.
DISCOVERY_SELECTOR = 'kube_deployment_status_replicas{namespace="{namespace}"}'
DISCOVERY_LABEL = "deployment"

QUERIED_METRICS: tuple[str, ...] = tuple(DEFAULT_QUERIES)
# Derived metrics left to the data layer's add_derived_metrics.
COMPUTED_METRICS: tuple[str, ...] = tuple(m for m in schema.METRIC_COLUMNS if m not in DEFAULT_QUERIES)

_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class QueryTemplateError(ValueError):
    """A query template names an unknown metric or placeholder."""


@dataclass(frozen=True)
class QueryTable:
    """The templates in use: metric column -> PromQL template (plus the optional load query)."""

    queries: dict[str, str]
    pod_regex: str = DEFAULT_POD_REGEX
    window: str = "2m"

    @classmethod
    def build(
        cls,
        overrides: Mapping[str, str] | None = None,
        *,
        pod_regex: str = DEFAULT_POD_REGEX,
        window: str = "2m",
    ) -> QueryTable:
        """The default table with ``overrides`` applied; unknown keys or placeholders raise."""
        queries = dict(DEFAULT_QUERIES)
        allowed = (*QUERIED_METRICS, LOAD_USERS_KEY)
        for key, template in (overrides or {}).items():
            if key not in allowed:
                raise QueryTemplateError(
                    f"queries: unknown metric {key!r}; expected one of {', '.join(allowed)}"
                )
            if not isinstance(template, str) or not template.strip():
                raise QueryTemplateError(f"queries.{key}: the template must be a non-empty string")
            queries[key] = template
        for key, template in queries.items():
            _check_placeholders(f"queries.{key}", template)
        _check_placeholders("pod_regex", pod_regex, allowed=("service", "namespace"))
        return cls(queries=queries, pod_regex=pod_regex, window=window)

    def render_pod_regex(self, namespace: str, service: str) -> str:
        """The pod-name pattern for one service (the service name is regex-escaped)."""
        return _substitute(self.pod_regex, {"namespace": namespace, "service": re.escape(service)})

    def render(self, metric: str, namespace: str, service: str) -> str:
        """The PromQL for one metric of one service."""
        values = {
            "namespace": _escape_label_value(namespace),
            "service": _escape_label_value(service),
            "pod_regex": _escape_label_value(self.render_pod_regex(namespace, service)),
            "window": self.window,
        }
        return _substitute(self.queries[metric], values)

    def render_all(self, namespace: str, service: str) -> dict[str, str]:
        """Every query of the table for one service, keyed by metric (and ``load_users`` if set)."""
        return {metric: self.render(metric, namespace, service) for metric in self.queries}


def discovery_selector(namespace: str) -> str:
    """The series selector whose ``deployment`` label values name the services of a namespace."""
    return _substitute(DISCOVERY_SELECTOR, {"namespace": _escape_label_value(namespace)})


def _check_placeholders(where: str, template: str, allowed: tuple[str, ...] = PLACEHOLDERS) -> None:
    for name in _PLACEHOLDER_RE.findall(template):
        if name not in allowed:
            raise QueryTemplateError(
                f"{where}: unknown placeholder {{{name}}}; allowed: {', '.join('{' + a + '}' for a in allowed)}"
            )


def _substitute(template: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _escape_label_value(value: str) -> str:
    """Escape a value for a double-quoted PromQL string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
