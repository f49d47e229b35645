"""What is set on a service's Deployment at the end of a collected window: a ``WorkloadState``.

``collect_workload`` runs the table's ``workload_*`` queries (instant ones at the window's end,
the OOM ones over the window) and ``build_workload_state`` turns their answers into the state;
the latter is pure, so the parsing is tested without a server. Nothing here is fatal: a query
that fails or finds no series becomes a readable entry of ``WorkloadState.missing``
("<fact>: <why>"; the part before the colon is the short form ``mora collect`` prints).

OOM kills: per pod and container, a restart counter that goes up at a step where
kube-state-metrics says the last termination was ``OOMKilled`` counts as that many kills; without
a restart counter, the reason turning on counts as one. The memory at the last kill is the
container's memory limit, else its last working set before the kill (one more query, only then).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Protocol

from pydantic import ValidationError

from mora_platform.collect.client import (
    PrometheusAuthError,
    PrometheusError,
    PrometheusTimeoutError,
    PrometheusUnavailableError,
    Series,
)
from mora_platform.collect.queries import (
    WORKLOAD_INSTANT_QUERIES,
    WORKLOAD_LABELS,
    WORKLOAD_RANGE_QUERIES,
    QueryTable,
)
from mora_platform.recommend.workload import ContainerState, HpaState, WorkloadState

#: Prometheus refuses more points per series; the OOM range queries coarsen their step to stay under.
_MAX_POINTS = 10_000
_IGNORED_CONTAINERS = frozenset({"", "POD"})
_METRIC_NAME = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
_RESOURCES = (
    "workload_cpu_requests",
    "workload_memory_requests",
    "workload_cpu_limits",
    "workload_memory_limits",
)

#: The readable name of the fact each query gives.
FACTS: dict[str, str] = {
    "workload_containers": "containers",
    "workload_pods": "pods",
    "workload_replicas": "replicas",
    "workload_cpu_requests": "cpu requests",
    "workload_memory_requests": "memory requests",
    "workload_cpu_limits": "cpu limits",
    "workload_memory_limits": "memory limits",
    "workload_cpu_usage": "cpu shares",
    "workload_memory_usage": "memory shares",
    "workload_hpa": "hpa",
    "workload_hpa_min_replicas": "hpa min replicas",
    "workload_hpa_max_replicas": "hpa max replicas",
    "workload_hpa_target_cpu": "hpa cpu target",
    "workload_hpa_target_memory": "hpa memory target",
    "workload_restarts": "restarts",
    "workload_oom_killed": "oom kills",
    "workload_memory_by_pod": "oom memory",
}

#: A query's answer: its series, or why there are none.
Answer = list[Series] | PrometheusError


class WorkloadClient(Protocol):
    """The Prometheus calls the workload needs (``PrometheusClient`` satisfies it)."""

    def query_instant(self, query: str, at: int, *, what: str = "query") -> list[Series]: ...

    def query_range(
        self, query: str, start: int, end: int, step_seconds: int, *, what: str = "query"
    ) -> list[Series]: ...


@dataclass(frozen=True)
class OomKills:
    """OOM kills of one container (over all pods) within the window."""

    count: int
    last_time: int | None = None
    last_pod: str | None = None


def short_missing(missing: list[str]) -> list[str]:
    """The facts of ``missing`` without their reasons (what ``mora collect`` prints)."""
    return [entry.split(": ", 1)[0] for entry in missing]


def range_step(start: int, end: int, step: int) -> int:
    """The step of the OOM range queries: the collection's, coarser if the window needs more points."""
    return max(1, step, math.ceil(max(0, end - start) / (_MAX_POINTS - 1)))


def collect_workload(
    client: WorkloadClient,
    table: QueryTable,
    namespace: str,
    service: str,
    start: int,
    end: int,
    step: int,
    *,
    submit: Executor | None = None,
) -> WorkloadState:
    """The service's ``WorkloadState`` at ``end`` (unix s); the window ``start``..``end`` for usage shares and
    OOM kills. Never raises ``PrometheusError``: failures end up in ``missing``. ``submit`` runs the
    queries concurrently (the collector's pool); without it they run one after the other."""
    queries = table.render_workload(namespace, service, end - start)
    step_w = range_step(start, end, step)
    failed = threading.Event()
    until: dict[str, int] = {}  # a range query that need not reach the end of the window

    def run(key: str) -> Answer:
        if failed.is_set():
            return PrometheusError("not asked: an earlier workload query failed")
        what = f"query {key}"
        try:
            if key in WORKLOAD_RANGE_QUERIES:
                return client.query_range(queries[key], start, until.get(key, end), step_w, what=what)
            return client.query_instant(queries[key], end, what=what)
        except PrometheusError as exc:
            if isinstance(exc, PrometheusUnavailableError | PrometheusAuthError | PrometheusTimeoutError):
                failed.set()  # the server is unusable: do not wait on every other query too
            return exc

    first = [
        key for key in (*WORKLOAD_INSTANT_QUERIES, *WORKLOAD_RANGE_QUERIES) if key != "workload_memory_by_pod"
    ]
    answers = _run_all(first, run, submit)
    last_kill = memory_by_pod_needed(answers, start)
    if last_kill is not None:  # only the samples up to the last kill matter
        until["workload_memory_by_pod"] = max(start, last_kill)
        answers["workload_memory_by_pod"] = run("workload_memory_by_pod")
    return build_workload_state(
        answers, service=service, namespace=namespace, start=start, at=end, queries=queries
    )


def _run_all(keys: list[str], run: Callable[[str], Answer], submit: Executor | None) -> dict[str, Answer]:
    if submit is None:
        return {key: run(key) for key in keys}
    futures = {key: submit.submit(run, key) for key in keys}
    wait(futures.values())
    return {key: future.result() for key, future in futures.items()}


def memory_by_pod_needed(answers: Mapping[str, Answer], start: int) -> int | None:
    """The time of the last OOM kill of a container without a memory limit (None: no query needed)."""
    kills = oom_kills(
        _series(answers.get("workload_restarts")), _series(answers.get("workload_oom_killed")), start
    )
    limits = _by_label(_series(answers.get("workload_memory_limits")), "container")
    times = [k.last_time for c, k in kills.items() if k.count and k.last_time is not None and c not in limits]
    return max(times) if times else None


def build_workload_state(
    answers: Mapping[str, Answer],
    *,
    service: str,
    namespace: str | None,
    start: int,
    at: int,
    queries: Mapping[str, str] | None = None,
) -> WorkloadState:
    """The state from the queries' answers (keys of ``WORKLOAD_QUERIES``; absent keys count as not asked)."""
    missing: list[str] = []
    notes = _Notes(missing, queries or {})

    def labelled(key: str) -> dict[str, float]:
        series = notes.series(key, answers.get(key))
        return _by_label(series, "container") if series is not None else {}

    resources = {key: labelled(key) for key in _RESOURCES}
    # containers now: those of any container-labelled series at the end of the window
    names = set(labelled("workload_containers")).union(*resources.values())
    usage_cpu, usage_mem = labelled("workload_cpu_usage"), labelled("workload_memory_usage")
    if not names and (usage_cpu or usage_mem):
        names = set(usage_cpu) | set(usage_mem)
        missing.append("containers: none at the end of the window; taken from the usage over it")
    valid: list[str] = []
    for name in sorted(names - _IGNORED_CONTAINERS):
        try:
            ContainerState(name=name)
        except ValidationError:
            missing.append(f"containers: skipped {name!r} (not a valid Kubernetes container name)")
            continue
        valid.append(name)
    if not valid and not any(entry.startswith("containers: ") for entry in missing):
        missing.append("containers: none found (no container-labelled series of the service's pods)")
    cpu_share = notes.shares("workload_cpu_usage", usage_cpu, valid)
    mem_share = notes.shares("workload_memory_usage", usage_mem, valid)
    # an empty reason series is normal (no container terminated), an empty restart counter less so
    restarts = notes.series("workload_restarts", answers.get("workload_restarts"), quiet=True)
    reasons = notes.series("workload_oom_killed", answers.get("workload_oom_killed"), quiet=True)
    kills = oom_kills(restarts or [], reasons or [], start)
    asked = [answers.get(key) for key in ("workload_restarts", "workload_oom_killed")]
    if all(isinstance(answer, list) and not answer for answer in asked):
        missing.append(
            f"oom kills: no series ({notes.metric('workload_restarts')}, {notes.metric('workload_oom_killed')})"
        )
    elif restarts and isinstance(asked[1], list) and not asked[1] and _restarted(restarts, start):
        missing.append(
            f"oom kills: containers restarted but there is no {notes.metric('workload_oom_killed')} series"
        )
    working_sets = notes.series("workload_memory_by_pod", answers.get("workload_memory_by_pod"), quiet=True)

    containers: list[ContainerState] = []
    for name in valid:
        values = {key: resources[key].get(name) for key in resources}
        for key, value in values.items():
            if value is None and resources[key]:  # others have one: this container has none set
                missing.append(f"{FACTS[key][:-1]} of {name}: not set (no series)")
        killed = kills.get(name, OomKills(0))
        level = None
        if killed.count:
            level = values["workload_memory_limits"]
            if level is None and killed.last_time is not None:
                level = _last_before(working_sets or [], killed.last_pod, name, killed.last_time)
                if level is None:
                    missing.append(
                        f"oom memory of {name}: no memory limit and no working set before the kill at "
                        f"{_iso(killed.last_time)}"
                    )
        containers.append(
            ContainerState(
                name=name,
                cpu_request_cores=_non_negative(values["workload_cpu_requests"]),
                memory_request_bytes=_non_negative(values["workload_memory_requests"]),
                cpu_limit_cores=_non_negative(values["workload_cpu_limits"]),
                memory_limit_bytes=_non_negative(values["workload_memory_limits"]),
                cpu_share=cpu_share.get(name),
                memory_share=mem_share.get(name),
                oom_kills=killed.count,
                oom_memory_bytes=_non_negative(level),
            )
        )

    pods = notes.scalar("workload_pods", answers.get("workload_pods"))
    replicas = notes.scalar("workload_replicas", answers.get("workload_replicas"))
    hpa = _hpa(
        answers, notes, kube_state_seen=bool(replicas is not None or any(resources.values()) or restarts)
    )
    return WorkloadState(
        service=service,
        namespace=namespace,
        collected_at=_iso(at),
        source="prometheus",
        pods=_count(pods),
        replicas=_count(replicas),
        containers=containers,
        hpa=hpa,
        missing=list(dict.fromkeys(missing)),
    )


def _hpa(answers: Mapping[str, Answer], notes: _Notes, *, kube_state_seen: bool) -> HpaState | None:
    info = answers.get("workload_hpa")
    if info is None:
        return None
    if isinstance(info, PrometheusError):
        notes.series("workload_hpa", info)
        return None
    names = sorted(_by_label(info, "horizontalpodautoscaler"))
    if not names:
        if not kube_state_seen:  # no HPA, or no kube-state-metrics at all: cannot tell
            notes.missing.append("hpa: unknown (no kube-state-metrics series for this service)")
        return None
    name = names[0]
    if len(names) > 1:
        notes.missing.append(
            f"hpa: {len(names)} HPAs target this Deployment ({', '.join(names)}); using {name}"
        )

    def value(key: str, *, report: bool = True) -> float | None:
        series = notes.series(key, answers.get(key), quiet=not report)
        found = _by_label(series or [], "horizontalpodautoscaler").get(name)
        if found is None and series and report:
            notes.missing.append(f"{FACTS[key]}: no series for HPA {name}")
        return found

    low, high = value("workload_hpa_min_replicas"), value("workload_hpa_max_replicas")
    cpu, memory = value("workload_hpa_target_cpu"), value("workload_hpa_target_memory", report=False)
    return HpaState(
        name=name,
        min_replicas=_count(low),
        max_replicas=_count(high) if high is not None and high >= 1 else None,
        target_cpu_utilization=cpu / 100.0 if cpu is not None and cpu > 0 else None,
        target_memory_utilization=memory / 100.0 if memory is not None and memory > 0 else None,
    )


class _Notes:
    """Turns empty, failed or mislabelled answers into ``missing`` entries (each once)."""

    def __init__(self, missing: list[str], queries: Mapping[str, str]) -> None:
        self.missing = missing
        self._queries = queries
        self._seen: set[str] = set()

    def metric(self, key: str) -> str:
        """The first metric the query reads (its key if that cannot be told)."""
        match = _METRIC_NAME.search(self._queries.get(key, ""))
        return match.group(1) if match else key

    def series(self, key: str, answer: Answer | None, *, quiet: bool = False) -> list[Series] | None:
        """The answer's series; None (and a note unless ``quiet`` or not asked) when there are none."""
        if answer is None:
            return None
        note: str | None = None
        if isinstance(answer, PrometheusError):
            note = f"{FACTS[key]}: query failed: {_shorten(str(answer))}"
        elif not answer:
            note = f"{FACTS[key]}: no series ({self.metric(key)})"
        else:
            wanted = WORKLOAD_LABELS.get(key, ())
            lacking = [label for label in wanted if not all(label in s.labels for s in answer)]
            if lacking:
                note = (
                    f"{FACTS[key]}: the query's series lack the label(s) {', '.join(lacking)} "
                    f"(group it by ({', '.join(wanted)}))"
                )
        if note is None:
            return list(answer) if not isinstance(answer, PrometheusError) else None
        if (isinstance(answer, PrometheusError) or not quiet) and key not in self._seen:
            self._seen.add(key)
            self.missing.append(note)
        return None

    def scalar(self, key: str, answer: Answer | None) -> float | None:
        series = self.series(key, answer)
        if series is None:
            return None
        if len(series) > 1:
            self.missing.append(f"{FACTS[key]}: the query returned {len(series)} series, expected one")
            return None
        return _last_value(series[0])

    def shares(self, key: str, usage: dict[str, float], containers: list[str]) -> dict[str, float]:
        """Each container's share of the usage over the window (nothing if there is no usage)."""
        if not usage:
            return {}
        total = sum(value for name, value in usage.items() if name in containers)
        if total <= 0:
            self.missing.append(f"{FACTS[key]}: no usage over the window")
            return {}
        shares: dict[str, float] = {}
        for name in containers:
            if name in usage:
                shares[name] = min(1.0, max(0.0, usage[name] / total))
            else:
                self.missing.append(f"{FACTS[key][:-1]} of {name}: no usage series")
        return shares


def oom_kills(restarts: list[Series], reasons: list[Series], start: int) -> dict[str, OomKills]:
    """OOM kills per container after ``start`` (see the module doc), from per-pod-and-container series."""
    restart_by = {_pod_container(s): _points(s) for s in restarts if _pod_container(s) is not None}
    reason_by = {_pod_container(s): _points(s) for s in reasons if _pod_container(s) is not None}
    found: dict[str, OomKills] = {}
    for key, oom in reason_by.items():
        assert key is not None
        pod, container = key
        events: list[tuple[int, int]] = []  # (time, kills)
        counter = restart_by.get(key)
        if counter:
            times = sorted(counter)
            for before, now in pairwise(times):
                increase = counter[now] - counter[before]
                if now > start and increase > 0 and oom.get(now, 0.0) >= 0.5:
                    events.append((now, round(increase)))
        else:  # no restart counter: the reason turning on (or appearing) after the start is one kill
            times = sorted(oom)
            for index, now in enumerate(times):
                was_on = index > 0 and oom[times[index - 1]] >= 0.5
                if now > start and oom[now] >= 0.5 and not was_on:
                    events.append((now, 1))
        if not events or container in _IGNORED_CONTAINERS:
            continue
        last_time, _ = max(events)
        previous = found.get(container, OomKills(0))
        count = previous.count + sum(kills for _, kills in events)
        if previous.last_time is not None and previous.last_time >= last_time:
            found[container] = OomKills(count, previous.last_time, previous.last_pod)
        else:
            found[container] = OomKills(count, last_time, pod)
    return found


def _restarted(restarts: list[Series], start: int) -> bool:
    for series in restarts:
        points = _points(series)
        times = sorted(points)
        if any(now > start and points[now] > points[before] for before, now in pairwise(times)):
            return True
    return False


def _last_before(series: list[Series], pod: str | None, container: str, when: int) -> float | None:
    """The last sample of (pod, container) strictly before ``when``."""
    for item in series:
        if _pod_container(item) == (pod, container):
            earlier = [(t, v) for t, v in _points(item).items() if t < when and math.isfinite(v)]
            return max(earlier)[1] if earlier else None
    return None


def _series(answer: Answer | None) -> list[Series]:
    return answer if isinstance(answer, list) else []


def _points(series: Series) -> dict[int, float]:
    return {round(t): v for t, v in series.samples if math.isfinite(v)}


def _pod_container(series: Series) -> tuple[str, str] | None:
    pod, container = series.labels.get("pod"), series.labels.get("container")
    return (pod, container) if pod is not None and container is not None else None


def _last_value(series: Series) -> float | None:
    values = [v for _, v in series.samples if math.isfinite(v)]
    return values[-1] if values else None


def _by_label(series: list[Series], label: str) -> dict[str, float]:
    """label value -> the series' last value (series without the label are left out)."""
    out: dict[str, float] = {}
    for item in series:
        name = item.labels.get(label)
        value = _last_value(item)
        if name is not None and value is not None:
            out[name] = max(value, out.get(name, value))
    return out


def _count(value: float | None) -> int | None:
    return None if value is None or value < 0 else round(value)


def _non_negative(value: float | None) -> float | None:
    return None if value is None or value < 0 else float(value)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
