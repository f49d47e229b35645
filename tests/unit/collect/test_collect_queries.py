"""The PromQL table: defaults, overrides, placeholder checks, escaping."""

from __future__ import annotations

import re

import pytest

from mora_platform.collect.queries import (
    COMPUTED_METRICS,
    QUERIED_METRICS,
    QueryTable,
    QueryTemplateError,
    discovery_selector,
)
from mora_platform.data import schema


def test_table_covers_the_twelve_metrics_between_queries_and_derivation() -> None:
    assert set(QUERIED_METRICS) | set(COMPUTED_METRICS) == set(schema.METRIC_COLUMNS)
    assert not set(QUERIED_METRICS) & set(COMPUTED_METRICS)
    assert set(schema.RAW_METRICS) <= set(QUERIED_METRICS)
    assert {"node_cpu_util_value", "node_mem_util_value"} <= set(QUERIED_METRICS)


def test_default_cpu_query_excludes_pause_containers_and_uses_window() -> None:
    table = QueryTable.build(window="90s")
    cpu = table.render("cpu_cores_value", "shop", "frontend")
    assert cpu.startswith("sum(rate(container_cpu_usage_seconds_total{")
    assert 'namespace="shop"' in cpu
    assert 'container!="POD"' in cpu and 'container!=""' in cpu
    assert cpu.endswith("[90s]))")
    assert "{" + "service}" not in cpu and "{pod_regex}" not in cpu
    replicas = table.render("replica_count_value", "shop", "frontend")
    assert 'deployment="frontend"' in replicas


def test_default_pod_regex_matches_deployment_pods_only() -> None:
    pattern = QueryTable.build().render_pod_regex("shop", "checkout")
    assert re.fullmatch(pattern, "checkout-7d4b9c8f6-x2kq9")
    assert not re.fullmatch(pattern, "checkout-v2-7d4b9c8f6-x2kq9")
    assert not re.fullmatch(pattern, "checkoutservice-7d4b9c8f6-x2kq9")


def test_service_names_are_escaped_in_regex_and_strings() -> None:
    table = QueryTable.build(pod_regex="{service}-.*")
    query = table.render("pod_restarts_value", 'we"ird', "a.b")
    # the dot is a literal in the pod regex, the quote cannot end the label string
    assert 'pod=~"a\\\\.b-.*"' in query
    assert 'namespace="we\\"ird"' in query


def test_override_replaces_one_template_and_keeps_the_rest() -> None:
    table = QueryTable.build({"mem_bytes_value": 'sum(container_memory_rss{namespace="{namespace}"})'})
    assert table.render("mem_bytes_value", "ns", "svc") == 'sum(container_memory_rss{namespace="ns"})'
    assert table.render("cpu_cores_value", "ns", "svc").startswith("sum(rate(container_cpu_usage")


def test_load_users_query_is_optional() -> None:
    assert "load_users" not in QueryTable.build().render_all("ns", "svc")
    table = QueryTable.build(
        {"load_users": 'sum(rate(http_requests_total{namespace="{namespace}"}[{window}]))'}
    )
    assert "load_users" in table.render_all("ns", "svc")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cpu": "x"}, "unknown metric 'cpu'"),
        ({"cpu_cores_value": 'sum(x{ns="{nmspace}"})'}, "unknown placeholder {nmspace}"),
        ({"cpu_cores_value": "  "}, "non-empty"),
    ],
)
def test_bad_overrides_are_named(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(QueryTemplateError, match=re.escape(message)):
        QueryTable.build(overrides)


def test_discovery_selector_names_the_namespace() -> None:
    assert discovery_selector("shop") == 'kube_deployment_status_replicas{namespace="shop"}'
