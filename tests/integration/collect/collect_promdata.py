"""Known cluster metrics as OpenMetrics (cAdvisor / kube-state-metrics / node-exporter shapes).

Every value is a closed-form function of the service, pod and time, so a test can say what
Prometheus must give back. Counters grow linearly inside each 30-minute segment, so ``rate()``
over a window that lies inside one segment returns the segment's slope exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from infra.local.prometheus import PrometheusServer
from mora_platform.data import schema

SCRAPE = 30  # seconds between samples
SEGMENT = 1800  # the rates change every 30 minutes
WARMUP = 600  # samples before the collected range, so rate windows and context rows are full
RATE_WINDOW = 120  # the default rate window (2m)
NAMESPACE = "shop"
PROXY_TOKEN = "proxy-token-5c1d"  # a test credential for the test proxy, not a real secret


@dataclass(frozen=True)
class FakeService:
    name: str
    index: int
    pods: tuple[str, ...]


SERVICES: tuple[FakeService, ...] = (
    FakeService("frontend", 0, ("frontend-7d4b9c8f6-x2kq9", "frontend-7d4b9c8f6-bq7zt")),
    FakeService("cart", 1, ("cart-5f6c7d8b9-h4j2k",)),
    FakeService("ads", 2, ("ads-6b7c8d9f5-m3n4p", "ads-6b7c8d9f5-r5s6t")),
    FakeService("locked", 3, ("locked-7b8c9d6f5-a1b2c",)),
    FakeService("slow", 4, ("slow-8c9d6f5b7-d3e4f",)),
)


def cpu_rate(service: FakeService, pod: int, segment: int) -> float:
    return 0.05 * (service.index + 1) + 0.01 * segment + 0.002 * pod


def rx_rate(service: FakeService, pod: int, segment: int) -> float:
    return 1000.0 * (service.index + 1) + 100.0 * segment + 10.0 * pod


def tx_rate(service: FakeService, pod: int, segment: int) -> float:
    return 500.0 * (service.index + 1) + 50.0 * segment + 5.0 * pod


def memory(service: FakeService, pod: int, i: int) -> float:
    return 1e8 * (service.index + 1) + 1e5 * i + 1e6 * pod


def restarts(service: FakeService, pod: int, seconds_since_start: float) -> float:
    return float(pod + max(0, int(seconds_since_start // 3600)))


def replicas(service: FakeService, segment: int) -> float:
    return float(len(service.pods) + (1 if segment >= 3 else 0))


def idle_rate(cpu: int, segment: int) -> float:
    return (0.8 if cpu == 0 else 0.6) - 0.05 * segment


def mem_available(segment: int) -> float:
    return 8e9 - 1e8 * segment


MEM_TOTAL = 16e9


class Timeline:
    """Sample times: ``start - WARMUP`` .. ``start + hours``; segment 0 also covers the warm-up."""

    def __init__(self, start: int, hours: int) -> None:
        self.start = start
        self.end = start + hours * 3600
        self.times = np.arange(start - WARMUP, self.end + 1, SCRAPE, dtype=np.int64)

    def segment(self, t: int | np.ndarray) -> np.ndarray:
        return np.maximum(0, (np.asarray(t) - self.start) // SEGMENT)

    def counter(self, rate_of_segment: Callable[[int], float], t0: float = 1e6) -> np.ndarray:
        """A counter at every sample time whose slope in segment j is ``rate_of_segment(j)``."""
        values = np.empty(len(self.times))
        value = t0
        for k, t in enumerate(self.times):
            if k:
                value += rate_of_segment(int(self.segment(int(t) - SCRAPE))) * SCRAPE
            values[k] = value
        return values


def write_openmetrics(path: Path, timeline: Timeline) -> None:
    """All series of all services (plus decoys the queries must ignore) into ``path``."""
    families: dict[str, tuple[str, list[str]]] = {}

    def add(
        family: str, kind: str, sample: str, labels: str, values: np.ndarray, since: int | None = None
    ) -> None:
        lines = families.setdefault(family, (kind, []))[1]
        for t, v in zip(timeline.times, values, strict=True):
            if since is None or t >= since:
                lines.append(f"{sample}{{{labels}}} {float(v)!r} {int(t)}")

    seg = timeline.segment(timeline.times)
    for svc in SERVICES:
        for p, pod in enumerate(svc.pods):
            base = f'namespace="{NAMESPACE}",pod="{pod}"'
            add(
                "container_cpu_usage_seconds",
                "counter",
                "container_cpu_usage_seconds_total",
                f'{base},container="app"',
                timeline.counter(partial(cpu_rate, svc, p)),
            )
            # decoys: the pause container and the pod-level cgroup total must not be summed in
            add(
                "container_cpu_usage_seconds",
                "counter",
                "container_cpu_usage_seconds_total",
                f'{base},container="POD"',
                timeline.counter(lambda j: 5.0),
            )
            add(
                "container_cpu_usage_seconds",
                "counter",
                "container_cpu_usage_seconds_total",
                f'{base},container=""',
                timeline.counter(lambda j: 9.0),
            )
            index = (timeline.times - timeline.start) // SCRAPE
            add(
                "container_memory_working_set_bytes",
                "gauge",
                "container_memory_working_set_bytes",
                f'{base},container="app"',
                np.array([memory(svc, p, int(i)) for i in index]),
            )
            add(
                "container_memory_working_set_bytes",
                "gauge",
                "container_memory_working_set_bytes",
                f'{base},container="POD"',
                np.full(len(index), 7e8),
            )
            add(
                "container_network_receive_bytes",
                "counter",
                "container_network_receive_bytes_total",
                f'{base},interface="eth0"',
                timeline.counter(partial(rx_rate, svc, p)),
            )
            add(
                "container_network_transmit_bytes",
                "counter",
                "container_network_transmit_bytes_total",
                f'{base},interface="eth0"',
                timeline.counter(partial(tx_rate, svc, p)),
            )
            add(
                "kube_pod_container_status_restarts",
                "counter",
                "kube_pod_container_status_restarts_total",
                f'{base},container="app"',
                np.array([restarts(svc, p, float(t - timeline.start)) for t in timeline.times]),
            )
        add(
            "kube_deployment_status_replicas",
            "gauge",
            "kube_deployment_status_replicas",
            f'namespace="{NAMESPACE}",deployment="{svc.name}"',
            np.array([replicas(svc, int(j)) for j in seg]),
        )
    # the same deployment name in another namespace must not leak in
    add(
        "container_memory_working_set_bytes",
        "gauge",
        "container_memory_working_set_bytes",
        'namespace="staging",pod="frontend-7d4b9c8f6-zzzzz",container="app"',
        np.full(len(seg), 5e9),
    )
    for cpu in (0, 1):
        add(
            "node_cpu_seconds",
            "counter",
            "node_cpu_seconds_total",
            f'instance="node-a",cpu="{cpu}",mode="idle"',
            timeline.counter(partial(idle_rate, cpu)),
        )
        add(
            "node_cpu_seconds",
            "counter",
            "node_cpu_seconds_total",
            f'instance="node-a",cpu="{cpu}",mode="user"',
            timeline.counter(lambda j: 0.2),
        )
    add(
        "node_memory_MemAvailable_bytes",
        "gauge",
        "node_memory_MemAvailable_bytes",
        'instance="node-a"',
        np.array([mem_available(int(j)) for j in seg]),
    )
    add(
        "node_memory_MemTotal_bytes",
        "gauge",
        "node_memory_MemTotal_bytes",
        'instance="node-a"',
        np.full(len(seg), MEM_TOTAL),
    )

    _add_workloads(add, timeline)

    with path.open("w", encoding="utf-8") as out:
        for family, (kind, lines) in families.items():
            out.write(f"# TYPE {family} {kind}\n")
            out.write("\n".join(lines) + "\n")
        out.write("# EOF\n")


# -- services with a workload state: containers, requests/limits, an OOM kill, an HPA -------------


@dataclass(frozen=True)
class WorkloadService:
    name: str
    pods: tuple[str, ...]
    containers: tuple[str, ...]
    kube_state: bool  # kube-state-metrics series (requests, limits, restarts, replicas, HPA) or cAdvisor only


# two containers, three pods with skewed usage, requests/limits, an HPA and one OOM kill
CHECKOUT = WorkloadService(
    "checkout",
    ("checkout-7c8d9f6b5-a1b2c", "checkout-7c8d9f6b5-d3e4f", "checkout-7c8d9f6b5-g5h6j"),
    ("app", "proxy"),
    True,
)
# cAdvisor only: the workload lacks every kube-state-metrics fact, the rows are still collected
RECS = WorkloadService("recs", ("recs-5d6f7b8c9-k1l2m", "recs-5d6f7b8c9-n3p4q"), ("server",), False)
WORKLOAD_SERVICES = (CHECKOUT, RECS)

OOM_OFFSET = 3900  # checkout's app container in pod 1 is OOM-killed 1 h 05 min into the range
OOM_POD, OOM_CONTAINER = 1, "app"
MI = 2.0**20
# (container, resource) -> value per pod; pod 2 still runs an older, smaller cpu request
REQUESTS = {
    ("app", "cpu"): (0.5, 0.5, 0.25),
    ("app", "memory"): (256 * MI,) * 3,
    ("proxy", "cpu"): (0.1,) * 3,
    ("proxy", "memory"): (64 * MI,) * 3,
}
LIMITS = {("app", "cpu"): (1.0,) * 3, ("proxy", "cpu"): (0.2,) * 3, ("proxy", "memory"): (128 * MI,) * 3}
HPA_MIN, HPA_MAX, HPA_CPU_PERCENT = 2, 6, 70


def workload_cpu_rate(service: WorkloadService, pod: int, container: str, segment: int) -> float:
    if service is RECS:
        return (0.4, 0.1)[pod] + 0.01 * segment
    if container == "app":
        return (0.6, 0.2, 0.1)[pod] + 0.01 * segment
    return 0.05


def workload_memory(service: WorkloadService, pod: int, container: str, t: int, start: int) -> float:
    i = (t - start) // SCRAPE
    if service is RECS:
        return (3e8, 1e8)[pod] + 1e5 * i
    if container == "proxy":
        return 5e7 + 1e6 * pod
    if pod == 0:
        return 4e8 + 1e5 * i
    if pod == 1:
        oom = OOM_OFFSET // SCRAPE
        return 2e8 + 1e6 * i if i < oom else 5e7 + 1e5 * (i - oom)
    return 1.5e8


def oom_memory(start: int) -> float:
    """The working set of the killed container at the last sample before the kill."""
    return workload_memory(CHECKOUT, OOM_POD, OOM_CONTAINER, start + OOM_OFFSET - SCRAPE, start)


def _add_workloads(add: Callable[..., None], timeline: Timeline) -> None:
    times = timeline.times
    oom_time = timeline.start + OOM_OFFSET
    for svc in WORKLOAD_SERVICES:
        for p, pod in enumerate(svc.pods):
            base = f'namespace="{NAMESPACE}",pod="{pod}"'
            for c in svc.containers:
                labels = f'{base},container="{c}"'
                add("container_cpu_usage_seconds", "counter", "container_cpu_usage_seconds_total", labels,
                    timeline.counter(lambda j, p=p, c=c, svc=svc: workload_cpu_rate(svc, p, c, j)))  # fmt: skip
                add("container_memory_working_set_bytes", "gauge", "container_memory_working_set_bytes", labels,
                    np.array([workload_memory(svc, p, c, int(t), timeline.start) for t in times]))  # fmt: skip
            for family, rate in (("receive", 2000.0), ("transmit", 1000.0)):
                add(f"container_network_{family}_bytes", "counter", f"container_network_{family}_bytes_total",
                    f'{base},interface="eth0"', timeline.counter(lambda j, r=rate: r))  # fmt: skip
            if not svc.kube_state:
                continue
            add("kube_pod_status_phase", "gauge", "kube_pod_status_phase", f'{base},phase="Running"',
                np.ones(len(times)))  # fmt: skip
            for c in svc.containers:
                labels = f'{base},container="{c}"'
                add(
                    "kube_pod_container_info", "gauge", "kube_pod_container_info", labels, np.ones(len(times))
                )
                killed = (p, c) == (OOM_POD, OOM_CONTAINER)
                add("kube_pod_container_status_restarts", "counter", "kube_pod_container_status_restarts_total",
                    labels, (times >= oom_time).astype(float) if killed else np.zeros(len(times)))  # fmt: skip
                if killed:  # kube-state-metrics has the series once the container terminated
                    add("kube_pod_container_status_last_terminated_reason", "gauge",
                        "kube_pod_container_status_last_terminated_reason", f'{labels},reason="OOMKilled"',
                        np.ones(len(times)), since=oom_time)  # fmt: skip
                for kind, table in (("requests", REQUESTS), ("limits", LIMITS)):
                    for resource, unit in (("cpu", "core"), ("memory", "byte")):
                        if (c, resource) in table:
                            add(f"kube_pod_container_resource_{kind}", "gauge",
                                f"kube_pod_container_resource_{kind}",
                                f'{labels},node="node-a",resource="{resource}",unit="{unit}"',
                                np.full(len(times), table[(c, resource)][p]))  # fmt: skip
        if not svc.kube_state:
            continue
        deployment = f'namespace="{NAMESPACE}",deployment="{svc.name}"'
        for family in ("kube_deployment_status_replicas", "kube_deployment_spec_replicas"):
            add(family, "gauge", family, deployment, np.full(len(times), float(len(svc.pods))))
        # the Deployment's HPA, and a decoy HPA of a StatefulSet of the same name
        for hpa, kind, low, high, cpu in (
            (svc.name, "Deployment", HPA_MIN, HPA_MAX, HPA_CPU_PERCENT),
            (f"{svc.name}-sts", "StatefulSet", 1, 3, 50),
        ):
            labels = f'namespace="{NAMESPACE}",horizontalpodautoscaler="{hpa}"'
            add("kube_horizontalpodautoscaler_info", "gauge", "kube_horizontalpodautoscaler_info",
                f'{labels},scaletargetref_api_version="apps/v1",scaletargetref_kind="{kind}",'
                f'scaletargetref_name="{svc.name}"', np.ones(len(times)))  # fmt: skip
            for family, value in (("min_replicas", low), ("max_replicas", high)):
                name = f"kube_horizontalpodautoscaler_spec_{family}"
                add(name, "gauge", name, labels, np.full(len(times), float(value)))
            name = "kube_horizontalpodautoscaler_spec_target_metric"
            add(name, "gauge", name, f'{labels},metric_name="cpu",metric_target_type="utilization"',
                np.full(len(times), float(cpu)))  # fmt: skip


def expected_raw(service: FakeService, timeline: Timeline, times: np.ndarray) -> pd.DataFrame:
    """The 8 queried metrics as the default PromQL must return them at ``times``."""
    seg = timeline.segment(times)
    # a counter's slope up to t is the one of the interval ending at t (matters at t = segment end)
    rate_seg = timeline.segment(times - SCRAPE)
    pods = range(len(service.pods))
    index = (times - timeline.start) // SCRAPE
    frame = pd.DataFrame(
        {
            "cpu_cores_value": [sum(cpu_rate(service, p, int(j)) for p in pods) for j in rate_seg],
            "mem_bytes_value": [sum(memory(service, p, int(i)) for p in pods) for i in index],
            "net_rx_bytes_value": [sum(rx_rate(service, p, int(j)) for p in pods) for j in rate_seg],
            "net_tx_bytes_value": [sum(tx_rate(service, p, int(j)) for p in pods) for j in rate_seg],
            "pod_restarts_value": [
                sum(restarts(service, p, float(t - timeline.start)) for p in pods) for t in times
            ],
            "replica_count_value": [replicas(service, int(j)) for j in seg],
            "node_cpu_util_value": [
                100.0 * (1 - (idle_rate(0, int(j)) + idle_rate(1, int(j))) / 2) for j in rate_seg
            ],
            "node_mem_util_value": [100.0 * (1 - mem_available(int(j)) / MEM_TOTAL) for j in seg],
        }
    )
    frame.insert(0, schema.TIMESTAMP, pd.to_datetime(times, unit="s", utc=True))
    return frame


def exact_rows(timeline: Timeline, times: np.ndarray) -> np.ndarray:
    """Rows where every rate window (and the derived network diff) lies inside one segment."""
    since_segment = (times - timeline.start) % SEGMENT
    return since_segment >= RATE_WINDOW + 2 * SCRAPE


@dataclass
class BackfilledPrometheus:
    """A running test Prometheus and what was put into it."""

    server: PrometheusServer
    timeline: Timeline
    backfill_seconds: float
    start_seconds: float

    @property
    def url(self) -> str:
        return self.server.url
