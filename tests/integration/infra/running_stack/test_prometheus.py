"""`mora stack up --prometheus`: the platform's custom Ray metrics end up in the stack's Prometheus.

The folder's shared stack (``conftest.py``: `mora stack up --prometheus` on free ports with a temporary
MORA_HOME and HOME, metrics reported every second and scraped every second); a driver records
one fleet outcome per service through the fleet jobs' own metric code (``RayFleetMetrics``), and
the test polls Prometheus' HTTP API until ``ray_mora_services_trained_total`` has the value. The
head's dashboard must read from that Prometheus (``/api/prometheus_health`` and the environment of
its dashboard process). The fixture's teardown checks that ``mora stack down`` stops Prometheus with the
rest (by PID).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Stack

pytestmark = pytest.mark.integration  # needs Debian's prometheus: `make test` installs it

DATASET = "probe-metrics"

DRIVER = textwrap.dedent(
    f"""
    import sys
    from pathlib import Path

    import ray

    from infra.local.ray_head import use_client_env
    from jobs.ray_backend import RayFleetMetrics
    from mora_platform.orchestration import ServiceOutcome

    home, address = Path(sys.argv[1]), sys.argv[2]
    use_client_env(home, address)
    ray.init(address=address, log_to_driver=False)
    metrics = RayFleetMetrics({DATASET!r}, kind="test")
    metrics.record(ServiceOutcome(service="svc-a", status="published", seconds=3.0))
    metrics.record(ServiceOutcome(service="svc-b", status="published", seconds=7.0))
    metrics.record(ServiceOutcome(service="svc-c", status="failed", seconds=1.0))
    print("recorded", flush=True)
    sys.stdin.read()  # stay connected (so the metrics get exported) until the test closes stdin
    """
)


def _query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def _values(prometheus: str, promql: str) -> dict[str, float]:
    return {row["metric"].get("service", ""): float(row["value"][1]) for row in _query(prometheus, promql)}


def test_custom_ray_metrics_reach_the_stack_prometheus(stack: Stack) -> None:
    began = time.monotonic()
    prometheus = stack.record("prometheus")
    head = stack.record("ray")
    assert prometheus.details["url"] == stack.prometheus
    assert head.details["prometheus_url"] == stack.prometheus

    # The generated configuration, on loopback, scraping the head's session and fixed metrics port.
    config = (stack.home / "prometheus" / "prometheus.yml").read_text()
    assert "prom_metrics_service_discovery.json" in config
    assert f"127.0.0.1:{stack.ports['ray_metrics_export_port']}" in config
    assert f"--web.listen-address=127.0.0.1:{stack.ports['prometheus_port']}" in prometheus.command
    assert str(stack.home / "prometheus" / "data") in " ".join(prometheus.command)

    # The dashboard reads from it: its own health check and its process environment say so.
    token = (stack.home / "ray_auth_token").read_text().strip()
    health = httpx.get(
        f"{stack.dashboard}/api/prometheus_health", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert health.status_code == 200, health.text
    dashboards = [proc for proc in head.family() if any("dashboard.py" in part for part in proc.cmdline())]
    assert dashboards, "no dashboard process in the head's family"
    assert dashboards[0].environ().get("RAY_PROMETHEUS_HOST") == stack.prometheus

    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(stack.home), f"127.0.0.1:{stack.ports['ray_port']}"],
        env=stack.env,
        cwd=Path(__file__).resolve().parents[3],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert driver.stdout is not None and driver.stdin is not None
        output: list[str] = []
        for line in driver.stdout:  # Ray's connection messages come first
            output.append(line)
            if line.strip() == "recorded":
                break
        assert output and output[-1].strip() == "recorded", "".join(output)
        recorded = time.monotonic()
        trained: dict[str, float] = {}
        deadline = recorded + 40
        while time.monotonic() < deadline:
            trained = _values(stack.prometheus, f'ray_mora_services_trained_total{{dataset="{DATASET}"}}')
            if trained == {"svc-a": 1.0, "svc-b": 1.0}:
                break
            time.sleep(0.5)
        names = httpx.get(f"{stack.prometheus}/api/v1/label/__name__/values", timeout=5).json()["data"]
        mora_names = sorted(name for name in names if "mora" in name)
        assert trained == {"svc-a": 1.0, "svc-b": 1.0}, f"after 40 s: {trained}; mora series: {mora_names}"
        print(f"\nmetric in Prometheus {time.monotonic() - recorded:.1f} s after recording: {mora_names}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            failed = _values(stack.prometheus, f'ray_mora_services_failed_total{{dataset="{DATASET}"}}')
            count = _values(stack.prometheus, f'ray_mora_service_train_seconds_count{{dataset="{DATASET}"}}')
            if failed and count:
                break
            time.sleep(0.5)
        assert failed == {"svc-c": 1.0}
        assert count == {"svc-a": 1.0, "svc-b": 1.0, "svc-c": 1.0}
        row = _query(
            stack.prometheus, f'ray_mora_services_trained_total{{service="svc-a",dataset="{DATASET}"}}'
        )
        assert row[0]["metric"]["job"] == "ray" and row[0]["metric"]["kind"] == "test"
    finally:
        if driver.stdin is not None:
            driver.stdin.close()
        try:
            driver.wait(timeout=20)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait(timeout=10)

    # One target per address although the head's port is found both statically and by file discovery.
    targets = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    addresses = [target["labels"]["instance"] for target in targets]
    assert len(addresses) == len(set(addresses)), addresses
    assert f"127.0.0.1:{stack.ports['ray_metrics_export_port']}" in addresses

    status = stack.mora(["stack", "status", "-c", "ray", "-c", "prometheus"])
    assert status.returncode == 0, status.stdout + status.stderr
    assert stack.prometheus in status.stdout and "Ray metrics targets up" in status.stdout
    assert f"metrics views read {stack.prometheus}" in status.stdout
    print(f"checks took {time.monotonic() - began:.1f} s")
