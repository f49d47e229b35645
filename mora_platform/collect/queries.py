"""The PromQL table: one query template per metric, overridable because clusters label things differently.

A template names its inputs with placeholders that are substituted literally (PromQL's own
braces make ``str.format`` unusable): ``{namespace}``, ``{service}``, ``{pod_regex}``
(the service's pod-name pattern, already rendered) and ``{window}`` (the rate window).
Each metric query must return one series for the service (sum/avg/max inside the template).

The workload queries (keys ``workload_*``) describe what is set on the Deployment now (containers,
requests, limits, OOM kills, HPA; see ``collect.workload``). They may also use ``{range}``: the
whole collected window as a duration, for aggregations over it (``rate(...[{range}])``). They are
grouped by the labels named in ``WORKLOAD_LABELS`` instead of aggregating to one series.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

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

# The busiest pod's usage at each step (its containers summed): the optional per-pod columns.
POD_QUERIES: dict[str, str] = {
    schema.CPU_BUSIEST_POD: (
        "max(sum by (pod) (rate(container_cpu_usage_seconds_total{" + _CONTAINER + "}[{window}])))"
    ),
    schema.MEM_BUSIEST_POD: "max(sum by (pod) (container_memory_working_set_bytes{" + _CONTAINER + "}))",
}

_DEPLOYMENT = 'namespace="{namespace}",deployment="{service}"'
_HPA = (
    'kube_horizontalpodautoscaler_info{namespace="{namespace}",'
    'scaletargetref_kind="Deployment",scaletargetref_name="{service}"}'
)
_OF_HPA = " and on (namespace, horizontalpodautoscaler) " + _HPA

# What is set on the Deployment, evaluated at the end of the collected window (instant queries).
WORKLOAD_INSTANT_QUERIES: dict[str, str] = {
    "workload_containers": (
        "count by (container) (container_memory_working_set_bytes{" + _CONTAINER + "})"
        " or count by (container) (kube_pod_container_info{" + _CONTAINER + "})"
    ),
    "workload_pods": (
        "count(count by (pod) (container_memory_working_set_bytes{" + _CONTAINER + "})"
        " or count by (pod) (kube_pod_status_phase{" + _POD + ',phase="Running"} == 1))'
    ),
    "workload_replicas": "max(kube_deployment_spec_replicas{" + _DEPLOYMENT + "})",
    "workload_cpu_requests": (
        "max by (container) (kube_pod_container_resource_requests{" + _CONTAINER + ',resource="cpu"})'
    ),
    "workload_memory_requests": (
        "max by (container) (kube_pod_container_resource_requests{" + _CONTAINER + ',resource="memory"})'
    ),
    "workload_cpu_limits": (
        "max by (container) (kube_pod_container_resource_limits{" + _CONTAINER + ',resource="cpu"})'
    ),
    "workload_memory_limits": (
        "max by (container) (kube_pod_container_resource_limits{" + _CONTAINER + ',resource="memory"})'
    ),
    # usage per container over the whole window, for each container's share of the pod's usage
    "workload_cpu_usage": (
        "sum by (container) (rate(container_cpu_usage_seconds_total{" + _CONTAINER + "}[{range}]))"
    ),
    "workload_memory_usage": (
        "sum by (container) (avg_over_time(container_memory_working_set_bytes{" + _CONTAINER + "}[{range}]))"
    ),
    "workload_hpa": _HPA,
    "workload_hpa_min_replicas": (
        'kube_horizontalpodautoscaler_spec_min_replicas{namespace="{namespace}"}' + _OF_HPA
    ),
    "workload_hpa_max_replicas": (
        'kube_horizontalpodautoscaler_spec_max_replicas{namespace="{namespace}"}' + _OF_HPA
    ),
    # in percent, as kube-state-metrics exports it
    "workload_hpa_target_cpu": (
        'kube_horizontalpodautoscaler_spec_target_metric{namespace="{namespace}",'
        'metric_name="cpu",metric_target_type="utilization"}' + _OF_HPA
    ),
    "workload_hpa_target_memory": (
        'kube_horizontalpodautoscaler_spec_target_metric{namespace="{namespace}",'
        'metric_name="memory",metric_target_type="utilization"}' + _OF_HPA
    ),
}

# Per pod and container over the collected window (range queries), to find OOM kills.
WORKLOAD_RANGE_QUERIES: dict[str, str] = {
    "workload_restarts": (
        "max by (pod, container) (kube_pod_container_status_restarts_total{" + _CONTAINER + "})"
    ),
    "workload_oom_killed": (
        "max by (pod, container) (kube_pod_container_status_last_terminated_reason{"
        + _CONTAINER
        + ',reason="OOMKilled"})'
    ),
    # only asked for when a container was OOM-killed and has no memory limit
    "workload_memory_by_pod": (
        "max by (pod, container) (container_memory_working_set_bytes{" + _CONTAINER + "})"
    ),
}

WORKLOAD_QUERIES: dict[str, str] = {**WORKLOAD_INSTANT_QUERIES, **WORKLOAD_RANGE_QUERIES}

# The labels each workload query's series must carry (the rest are single-series queries).
WORKLOAD_LABELS: dict[str, tuple[str, ...]] = {
    "workload_containers": ("container",),
    "workload_pods": (),
    "workload_replicas": (),
    "workload_cpu_requests": ("container",),
    "workload_memory_requests": ("container",),
    "workload_cpu_limits": ("container",),
    "workload_memory_limits": ("container",),
    "workload_cpu_usage": ("container",),
    "workload_memory_usage": ("container",),
    "workload_hpa": ("horizontalpodautoscaler",),
    "workload_hpa_min_replicas": ("horizontalpodautoscaler",),
    "workload_hpa_max_replicas": ("horizontalpodautoscaler",),
    "workload_hpa_target_cpu": ("horizontalpodautoscaler",),
    "workload_hpa_target_memory": ("horizontalpodautoscaler",),
    "workload_restarts": ("pod", "container"),
    "workload_oom_killed": ("pod", "container"),
    "workload_memory_by_pod": ("pod", "container"),
}
WORKLOAD_PLACEHOLDERS: tuple[str, ...] = (*PLACEHOLDERS, "range")

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
    """The templates in use: column -> PromQL template for the rows (metrics, busiest pod, optional
    load), and the workload queries (``workload_*``)."""

    queries: dict[str, str]
    pod_regex: str = DEFAULT_POD_REGEX
    window: str = "2m"
    workload: dict[str, str] = field(default_factory=lambda: dict(WORKLOAD_QUERIES))

    @classmethod
    def build(
        cls,
        overrides: Mapping[str, str] | None = None,
        *,
        pod_regex: str = DEFAULT_POD_REGEX,
        window: str = "2m",
    ) -> QueryTable:
        """The default table with ``overrides`` applied; unknown keys or placeholders raise."""
        queries = {**DEFAULT_QUERIES, **POD_QUERIES}
        workload = dict(WORKLOAD_QUERIES)
        allowed = (*QUERIED_METRICS, *POD_QUERIES, LOAD_USERS_KEY, *WORKLOAD_QUERIES)
        for key, template in (overrides or {}).items():
            if key not in allowed:
                raise QueryTemplateError(
                    f"queries: unknown metric {key!r}; expected one of {', '.join(allowed)}"
                )
            if not isinstance(template, str) or not template.strip():
                raise QueryTemplateError(f"queries.{key}: the template must be a non-empty string")
            (workload if key in WORKLOAD_QUERIES else queries)[key] = template
        for key, template in queries.items():
            _check_placeholders(f"queries.{key}", template)
        for key, template in workload.items():
            _check_placeholders(f"queries.{key}", template, allowed=WORKLOAD_PLACEHOLDERS)
        _check_placeholders("pod_regex", pod_regex, allowed=("service", "namespace"))
        return cls(queries=queries, pod_regex=pod_regex, window=window, workload=workload)

    def render_pod_regex(self, namespace: str, service: str) -> str:
        """The pod-name pattern for one service (the service name is regex-escaped)."""
        return _substitute(self.pod_regex, {"namespace": namespace, "service": re.escape(service)})

    def _values(self, namespace: str, service: str) -> dict[str, str]:
        return {
            "namespace": _escape_label_value(namespace),
            "service": _escape_label_value(service),
            "pod_regex": _escape_label_value(self.render_pod_regex(namespace, service)),
            "window": self.window,
        }

    def render(self, metric: str, namespace: str, service: str) -> str:
        """The PromQL for one metric (or busiest-pod column) of one service."""
        return _substitute(self.queries[metric], self._values(namespace, service))

    def render_all(self, namespace: str, service: str) -> dict[str, str]:
        """Every row query of the table for one service, keyed by column (and ``load_users`` if set)."""
        return {metric: self.render(metric, namespace, service) for metric in self.queries}

    def render_workload(self, namespace: str, service: str, range_seconds: int) -> dict[str, str]:
        """Every workload query for one service; ``{range}`` is the collected window (at least 1 s)."""
        values = {**self._values(namespace, service), "range": f"{max(1, int(range_seconds))}s"}
        return {key: _substitute(template, values) for key, template in self.workload.items()}


def checkpoint_queries(rendered: Mapping[str, str]) -> dict[str, str]:
    """The rendered row queries a collection checkpoint is bound to.

    The busiest-pod queries are left out: datasets collected before those columns existed can be
    continued (their older parts simply lack the columns).
    """
    return {key: query for key, query in rendered.items() if key not in POD_QUERIES}


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
