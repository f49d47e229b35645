"""Busiest-pod columns and the workload state: query templates, parsing of answers, storage keys.

Prometheus is replaced by fakes; tests/integration/collect/test_collect_workloads.py runs the
default PromQL against a real server.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import pytest

from mora_platform.cli.collect import workload_lines
from mora_platform.collect.checkpoint import CheckpointStore
from mora_platform.collect.client import (
    PrometheusClient,
    PrometheusQueryError,
    PrometheusUnavailableError,
    Series,
)
from mora_platform.collect.collector import Collector
from mora_platform.collect.frame import build_chunk_frame
from mora_platform.collect.queries import (
    DEFAULT_QUERIES,
    WORKLOAD_QUERIES,
    QueryTable,
    QueryTemplateError,
    checkpoint_queries,
)
from mora_platform.collect.settings import PrometheusSettings
from mora_platform.collect.workload import (
    Answer,
    build_workload_state,
    collect_workload,
    oom_kills,
    range_step,
    short_missing,
)
from mora_platform.data import schema
from mora_platform.recommend.workload import ContainerState, WorkloadState
from mora_platform.storage.errors import ObjectNotFoundError
from mora_platform.storage.workloads import (
    WorkloadFormatError,
    list_workloads,
    read_workload,
    workload_key,
    write_workload,
)

START = 1_767_571_200  # 2026-01-05T00:00:00Z
END = START + 3600
STEP = 60
GIB = 2.0**30


# -- the query table ----------------------------------------------------------------------------


def test_busiest_pod_queries_take_the_max_over_pods_of_their_containers_summed() -> None:
    table = QueryTable.build(window="90s")
    cpu = table.render(schema.CPU_BUSIEST_POD, "shop", "cart")
    assert cpu.startswith("max(sum by (pod) (rate(container_cpu_usage_seconds_total{")
    assert cpu.endswith("[90s])))") and 'container!="POD"' in cpu and 'namespace="shop"' in cpu
    mem = table.render(schema.MEM_BUSIEST_POD, "shop", "cart")
    assert mem.startswith("max(sum by (pod) (container_memory_working_set_bytes{")
    assert set(schema.POD_COLUMNS) <= set(table.render_all("shop", "cart"))
    # the checkpoint stays bound to the metric queries only: older datasets can be continued
    bound = checkpoint_queries(table.render_all("shop", "cart"))
    assert bound == {key: table.render(key, "shop", "cart") for key in DEFAULT_QUERIES}


def test_workload_queries_render_namespace_service_and_range() -> None:
    queries = QueryTable.build().render_workload("shop", "cart", 7200)
    assert set(queries) == set(WORKLOAD_QUERIES)
    assert all("{" + "range}" not in q and "{namespace}" not in q for q in queries.values())
    assert queries["workload_cpu_usage"].endswith("[7200s]))")
    assert 'resource="cpu"' in queries["workload_cpu_requests"]
    assert "kube_pod_container_resource_limits{" in queries["workload_memory_limits"]
    assert 'reason="OOMKilled"' in queries["workload_oom_killed"]
    assert 'scaletargetref_kind="Deployment",scaletargetref_name="cart"' in queries["workload_hpa"]
    assert 'metric_name="cpu",metric_target_type="utilization"' in queries["workload_hpa_target_cpu"]
    assert "and on (namespace, horizontalpodautoscaler)" in queries["workload_hpa_max_replicas"]
    assert 'deployment="cart"' in queries["workload_replicas"]


def test_workload_and_busiest_pod_templates_are_overridable() -> None:
    table = QueryTable.build(
        {
            "workload_cpu_requests": 'max by (container) (kube_pod_container_resource_requests_cpu_cores{namespace="{namespace}"})',
            "workload_memory_usage": 'sum by (container) (max_over_time(x{pod=~"{pod_regex}"}[{range}]))',
            schema.CPU_BUSIEST_POD: 'max(sum by (pod) (rate(cpu{namespace="{namespace}"}[{window}])))',
        }
    )
    queries = table.render_workload("ns", "svc", 60)
    assert queries["workload_cpu_requests"].endswith('cores{namespace="ns"})')
    assert "[60s]" in queries["workload_memory_usage"]
    assert (
        table.render(schema.CPU_BUSIEST_POD, "ns", "svc")
        == 'max(sum by (pod) (rate(cpu{namespace="ns"}[2m])))'
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cpu_cores_value": "sum(rate(x[{range}]))"}, "unknown placeholder {range}"),
        ({"workload_cpus": "x"}, "unknown metric 'workload_cpus'"),
        ({"workload_pods": 'count(x{a="{pods}"})'}, "queries.workload_pods: unknown placeholder {pods}"),
        ({"workload_hpa": ""}, "non-empty"),
    ],
)
def test_bad_workload_overrides_are_named(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(QueryTemplateError, match=re.escape(message)):
        QueryTable.build(overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        PrometheusSettings.load(queries=overrides)


def test_range_step_stays_under_the_point_limit() -> None:
    assert range_step(START, END, 30) == 30
    week = 7 * 86400
    step = range_step(START, START + week, 30)
    assert step > 30 and week / step + 1 <= 11_000


# -- the busiest-pod columns in the rows ------------------------------------------------------------


def test_rows_carry_the_busiest_pod_columns_when_queried() -> None:
    times = [float(START + i * STEP) for i in range(5)]
    samples = {
        "cpu_cores_value": [(t, 1.0) for t in times],
        "mem_bytes_value": [(t, 3e8) for t in times],
        "replica_count_value": [(t, 3.0) for t in times],
        schema.CPU_BUSIEST_POD: [(t, 0.6) for t in times[:4]],
        schema.MEM_BUSIEST_POD: [],
    }
    chunk = build_chunk_frame(
        samples, service="cart", namespace="shop", scenario="c", first=START, last=START + 4 * STEP, step=STEP
    )
    frame = chunk.frame
    assert list(frame.columns) == [*schema.UNIFIED_COLUMNS, *schema.POD_COLUMNS]
    assert frame[schema.CPU_BUSIEST_POD].tolist()[:4] == [0.6] * 4
    assert math.isnan(frame[schema.CPU_BUSIEST_POD].iloc[4])
    assert frame[schema.MEM_BUSIEST_POD].isna().all() and frame[schema.MEM_BUSIEST_POD].dtype == np.float64
    assert chunk.empty_metrics == [schema.MEM_BUSIEST_POD]  # reported like any empty metric


# -- parsing the answers ----------------------------------------------------------------------------


def _instant(label: str, values: dict[str, float], **extra: str) -> list[Series]:
    return [Series({label: name, **extra}, [(float(END), value)]) for name, value in values.items()]


def _range(pod: str, container: str, values: Sequence[float | None], step: int = STEP) -> Series:
    samples = [(float(START + i * step), v) for i, v in enumerate(values) if v is not None]
    return Series({"pod": pod, "container": container}, samples)


def _complete_answers() -> dict[str, Answer]:
    pods = ["shop-6b7c8d9f5-aaaaa", "shop-6b7c8d9f5-bbbbb", "shop-6b7c8d9f5-ccccc"]
    restarts = [_range(p, c, [0.0] * 10) for p in pods for c in ("app", "proxy")]
    restarts[2] = _range(pods[1], "app", [0.0] * 4 + [1.0] * 6)  # one restart at step 4 ...
    return {
        "workload_containers": _instant("container", {"app": 3, "proxy": 3}),
        "workload_pods": [Series({}, [(float(END), 3.0)])],
        "workload_replicas": [Series({}, [(float(END), 3.0)])],
        "workload_cpu_requests": _instant("container", {"app": 0.5, "proxy": 0.1}),
        "workload_memory_requests": _instant("container", {"app": 256e6, "proxy": 64e6}),
        "workload_cpu_limits": _instant("container", {"app": 1.0}),
        "workload_memory_limits": _instant("container", {"proxy": 128e6}),
        "workload_cpu_usage": _instant("container", {"app": 0.9, "proxy": 0.1}),
        "workload_memory_usage": _instant("container", {"app": 3e8, "proxy": 1e8}),
        "workload_restarts": restarts,
        # ... while the last termination was an OOM kill
        "workload_oom_killed": [_range(pods[1], "app", [None] * 4 + [1.0] * 6)],
        "workload_memory_by_pod": [_range(pods[1], "app", [1e8, 2e8, 3e8, 4.5e8, 5e7] + [6e7] * 5)],
        "workload_hpa": _instant("horizontalpodautoscaler", {"shop": 1}),
        "workload_hpa_min_replicas": _instant("horizontalpodautoscaler", {"shop": 2}),
        "workload_hpa_max_replicas": _instant("horizontalpodautoscaler", {"shop": 10}),
        "workload_hpa_target_cpu": _instant("horizontalpodautoscaler", {"shop": 70}),
        "workload_hpa_target_memory": [],
    }


def _state(answers: dict[str, Answer]) -> WorkloadState:
    queries = QueryTable.build().render_workload("ns", "shop", END - START)
    return build_workload_state(answers, service="shop", namespace="ns", start=START, at=END, queries=queries)


def test_a_complete_answer_gives_every_fact() -> None:
    state = _state(_complete_answers())
    assert state.collected_at == "2026-01-05T01:00:00Z" and state.pods == 3 and state.replicas == 3
    assert [c.name for c in state.containers] == ["app", "proxy"]
    app, proxy = state.containers
    assert (app.cpu_request_cores, app.memory_request_bytes, app.cpu_limit_cores) == (0.5, 256e6, 1.0)
    assert app.memory_limit_bytes is None and proxy.memory_limit_bytes == 128e6
    assert app.cpu_share == pytest.approx(0.9) and proxy.memory_share == pytest.approx(0.25)
    # no memory limit: the level is the last working set before the kill (step 4 -> the sample at step 3)
    assert app.oom_kills == 1 and app.oom_memory_bytes == 4.5e8
    assert proxy.oom_kills == 0 and proxy.oom_memory_bytes is None
    assert state.hpa is not None and state.hpa.name == "shop"
    assert (state.hpa.min_replicas, state.hpa.max_replicas, state.hpa.target_cpu_utilization) == (2, 10, 0.7)
    assert state.hpa.target_memory_utilization is None
    # the unset limits are named, nothing else is missing
    assert state.missing == [
        "memory limit of app: not set (no series)",
        "cpu limit of proxy: not set (no series)",
    ]
    assert short_missing(state.missing) == ["memory limit of app", "cpu limit of proxy"]


def test_the_oom_level_is_the_memory_limit_when_there_is_one() -> None:
    answers = _complete_answers()
    answers["workload_memory_limits"] = _instant("container", {"app": 512e6, "proxy": 128e6})
    del answers["workload_memory_by_pod"]
    app = _state(answers).containers[0]
    assert app.oom_kills == 1 and app.oom_memory_bytes == 512e6


def test_restarts_for_other_reasons_and_kills_before_the_window_do_not_count() -> None:
    pod = "p-1"
    restarts = [_range(pod, "app", [2.0, 2.0, 3.0, 3.0, 5.0])]
    # OOMKilled was the last reason from before the window until step 3, then another reason
    reasons = [_range(pod, "app", [1.0, 1.0, 1.0, 0.0, 0.0])]
    kills = oom_kills(restarts, reasons, START)
    assert kills["app"].count == 1 and kills["app"].last_time == START + 2 * STEP
    # without a restart counter, the reason turning on counts once; being on at the start does not
    assert oom_kills([], [_range(pod, "app", [1.0, 1.0, 0.0, 1.0, 1.0])], START)["app"].count == 1
    assert oom_kills([], [_range(pod, "app", [None, None, 1.0, 1.0])], START)["app"].count == 1
    assert oom_kills([], [_range(pod, "app", [1.0, 1.0, 1.0])], START) == {}
    # two pods: counts add up, the last kill is the later one
    both = oom_kills(
        [_range("p-1", "app", [0.0, 1.0, 1.0]), _range("p-2", "app", [0.0, 0.0, 2.0])],
        [_range("p-1", "app", [None, 1.0, 1.0]), _range("p-2", "app", [None, None, 1.0])],
        START,
    )
    assert both["app"].count == 3 and both["app"].last_pod == "p-2"


def test_a_service_without_kube_state_metrics_lists_what_is_missing() -> None:
    answers: dict[str, Answer] = {key: [] for key in WORKLOAD_QUERIES if key != "workload_memory_by_pod"}
    answers["workload_containers"] = _instant("container", {"server": 2})
    answers["workload_pods"] = [Series({}, [(float(END), 2.0)])]
    answers["workload_cpu_usage"] = _instant("container", {"server": 0.3})
    answers["workload_memory_usage"] = _instant("container", {"server": 2e8})
    state = _state(answers)
    assert [c.name for c in state.containers] == ["server"] and state.pods == 2 and state.replicas is None
    server = state.containers[0]
    assert server.cpu_share == 1.0 and server.memory_share == 1.0 and server.cpu_request_cores is None
    short = short_missing(state.missing)
    assert sorted(short) == sorted(
        ["cpu requests", "memory requests", "cpu limits", "memory limits", "replicas", "oom kills", "hpa"]
    ), state.missing
    assert "cpu requests: no series (kube_pod_container_resource_requests)" in state.missing
    assert "hpa: unknown (no kube-state-metrics series for this service)" in state.missing
    assert state.hpa is None


def test_failed_mislabelled_and_odd_answers_become_missing_entries() -> None:
    answers = _complete_answers()
    answers["workload_cpu_requests"] = PrometheusQueryError('query workload_cpu_requests: bad "PromQL"')
    answers["workload_memory_usage"] = [Series({}, [(float(END), 4e8)])]  # not grouped by container
    answers["workload_containers"] = _instant("container", {"app": 3, "proxy": 3, "Bad_Name": 1, "POD": 3})
    answers["workload_replicas"] = [
        Series({"a": "1"}, [(float(END), 3.0)]),
        Series({"a": "2"}, [(float(END), 1.0)]),
    ]
    answers["workload_hpa"] = _instant("horizontalpodautoscaler", {"shop": 1, "shop-2": 1})
    state = _state(answers)
    assert [c.name for c in state.containers] == ["app", "proxy"]
    assert state.containers[0].cpu_request_cores is None and state.containers[0].memory_share is None
    assert state.replicas is None and state.hpa is not None and state.hpa.name == "shop"
    text = "\n".join(state.missing)
    assert "cpu requests: query failed: query workload_cpu_requests: bad" in text
    assert "memory shares: the query's series lack the label(s) container (group it by (container))" in text
    assert "containers: skipped 'Bad_Name'" in text
    assert "replicas: the query returned 2 series, expected one" in text
    assert "hpa: 2 HPAs target this Deployment (shop, shop-2); using shop" in text


def test_restarts_without_a_reason_series_are_reported() -> None:
    answers = _complete_answers()
    answers["workload_oom_killed"] = []
    state = _state(answers)
    assert all(c.oom_kills == 0 for c in state.containers)
    assert any(m.startswith("oom kills: containers restarted but there is no") for m in state.missing)


# -- running the queries ----------------------------------------------------------------------------


class FakeWorkloadPrometheus:
    """Answers each workload query from a table keyed by the query's key (found by rendering)."""

    def __init__(self, answers: dict[str, Answer], queries: dict[str, str]) -> None:
        self._by_query = {queries[key]: (key, answer) for key, answer in answers.items()}
        self.asked: list[tuple[str, int, int]] = []

    def _answer(self, query: str, start: int, end: int) -> list[Series]:
        key, answer = self._by_query.get(query, ("?", []))
        self.asked.append((key, start, end))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def query_instant(self, query: str, at: int, *, what: str = "query") -> list[Series]:
        return self._answer(query, at, at)

    def query_range(
        self, query: str, start: int, end: int, step_seconds: int, *, what: str = ""
    ) -> list[Series]:
        assert step_seconds == STEP
        return self._answer(query, start, end)


def test_collect_workload_asks_for_working_sets_only_up_to_an_unlimited_kill() -> None:
    table = QueryTable.build()
    fake = FakeWorkloadPrometheus(_complete_answers(), table.render_workload("ns", "shop", END - START))
    state = collect_workload(fake, table, "ns", "shop", START, END, STEP)
    assert state.containers[0].oom_memory_bytes == 4.5e8
    asked = {key: (start, end) for key, start, end in fake.asked}
    assert asked["workload_memory_by_pod"] == (START, START + 4 * STEP)
    assert asked["workload_cpu_requests"] == (END, END) and asked["workload_restarts"] == (START, END)

    answers = _complete_answers()
    answers["workload_memory_limits"] = _instant("container", {"app": 512e6})
    fake = FakeWorkloadPrometheus(answers, table.render_workload("ns", "shop", END - START))
    collect_workload(fake, table, "ns", "shop", START, END, STEP)
    assert "workload_memory_by_pod" not in {key for key, _, _ in fake.asked}


def test_an_unreachable_server_stops_the_workload_queries_but_is_not_fatal() -> None:
    table = QueryTable.build()
    answers = {
        key: PrometheusUnavailableError("Prometheus at http://p is unreachable") for key in WORKLOAD_QUERIES
    }
    fake = FakeWorkloadPrometheus(cast(dict[str, Answer], answers), table.render_workload("ns", "s", 60))
    state = collect_workload(fake, table, "ns", "s", START, END, STEP)
    assert len(fake.asked) == 1  # one query ran one after the other: the rest were not asked
    assert state.containers == [] and state.missing
    assert any("unreachable" in m for m in state.missing)
    assert any("not asked: an earlier workload query failed" in m for m in state.missing)


class CollectorFake(FakeWorkloadPrometheus):
    """Rows for every range query of the metrics, the workload table for the rest."""

    def query_range(
        self, query: str, start: int, end: int, step_seconds: int, *, what: str = ""
    ) -> list[Series]:
        if query in self._by_query:
            return self._answer(query, start, end)
        if "ghost" in query:
            return []
        return [Series({}, [(float(t), 1.0) for t in range(start, end + 1, step_seconds)])]

    def label_values(self, label: str, selector: str, start: int, end: int) -> list[str]:
        return []


class Blobs:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_bytes(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def get_bytes(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectNotFoundError(key)
        return self.objects[key]

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


class Rows:
    def write(self, name: str, frame: Any, *, part: str = "part-00000") -> object:
        assert set(schema.POD_COLUMNS) <= set(frame.columns)
        return None


def test_the_collector_hands_each_collected_service_s_workload_to_the_sink() -> None:
    settings = PrometheusSettings.load(step=f"{STEP}s", context_steps=2)
    start, end = datetime.fromtimestamp(START, UTC), datetime.fromtimestamp(END, UTC)
    queries = settings.query_table().render_workload("ns", "shop", END - START)
    fake = CollectorFake(_complete_answers(), queries)
    blobs = Blobs()
    stored: list[tuple[str, WorkloadState]] = []
    collector = Collector(
        cast(PrometheusClient, fake), Rows(), CheckpointStore(blobs), settings,
        workloads=lambda name, state: stored.append((name, state)),
    )  # fmt: skip
    report = collector.collect("ds", "ns", ["shop"], start, end)
    result = report.services[0]
    assert result.status == "ok" and [name for name, _ in stored] == ["ds"]
    assert result.containers == ["app", "proxy"] and result.workload is stored[0][1]
    assert result.workload_missing_short == ["memory limit of app", "cpu limit of proxy"]
    lines = workload_lines(result)
    assert (
        lines[0]
        == "shop: workload: containers app, proxy; pods 3, replicas 3; 1 OOM kill(s); HPA shop 2..10, cpu target 70%"
    )
    assert lines[1] == "shop: workload missing: memory limit of app, cpu limit of proxy"

    # a service without rows gets no workload (and no query for one)
    fake.asked.clear()
    none = collector.collect("ds", "ns", ["ghost"], start, start + timedelta(minutes=1))
    assert none.services[0].status == "no data" and none.services[0].workload is None
    assert workload_lines(none.services[0]) == [] and not fake.asked


# -- storage of the state -----------------------------------------------------------------------------


def test_workloads_are_stored_as_json_beside_the_dataset() -> None:
    blobs = Blobs()
    state = WorkloadState(
        service="cart", namespace="shop", containers=[ContainerState(name="app", oom_kills=2)]
    )
    key = write_workload(blobs, "ds1", state)
    assert key == workload_key("ds1", "cart") == "datasets/ds1/_workloads/cart.json"
    assert json.loads(blobs.objects[key])["containers"][0]["oom_kills"] == 2
    assert read_workload(blobs, "ds1", "cart") == state
    assert read_workload(blobs, "ds1", "ads") is None
    assert list_workloads(blobs, "ds1") == ["cart"]

    blobs.objects["datasets/ds1/_workloads/bad.json"] = b'{"service": "bad", "pods": -1}'
    with pytest.raises(WorkloadFormatError, match=re.escape("datasets/ds1/_workloads/bad.json: not a valid")):
        read_workload(blobs, "ds1", "bad")
    blobs.objects["datasets/ds1/_workloads/bad.json"] = b"\x80not json"
    with pytest.raises(WorkloadFormatError, match="not JSON"):
        read_workload(blobs, "ds1", "bad")
    blobs.objects["datasets/ds1/_workloads/new.json"] = b'{"format": 99, "service": "new"}'
    with pytest.raises(WorkloadFormatError, match="newer"):
        read_workload(blobs, "ds1", "new")
    with pytest.raises(ValueError, match="invalid service name"):
        workload_key("ds1", "a/b")
    with pytest.raises(ValueError, match="invalid dataset name"):
        workload_key("../x", "a")
