"""A fleet driver whose parent (the Ray job's /bin/sh wrapper) dies stops, and says so in its summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from jobs.retrain_fleet import _Heartbeat
from mora_platform.orchestration import (
    EXIT_INTERRUPTED,
    FleetOrchestrator,
    LocalLoopBackend,
    ParentWatch,
    ProgressLine,
    RunInterrupted,
    RunSummary,
    ServiceFunction,
    ServiceOutcome,
    utc_now,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


def _summary() -> RunSummary:
    return RunSummary(run_id="retrain-test", dataset="ds", started_at=utc_now())


def _published(service: str) -> ServiceOutcome:
    return ServiceOutcome(service=service, status="published", version="v1")


def test_parent_watch_notices_a_new_parent() -> None:
    parents = iter([100, 100, 1])
    watch = ParentWatch(getppid=lambda: next(parents))
    assert watch.check() is None
    reason = watch.check()
    assert reason is not None and "100" in reason and "exited" in reason
    assert watch.check() == reason  # sticky
    with pytest.raises(RunInterrupted, match="exited"):
        watch.raise_if_lost()
    assert ParentWatch().check() is None  # our own parent (pytest's) is alive


def test_a_stopped_run_starts_nothing_more_and_is_not_a_success() -> None:
    started: list[str] = []

    def work(service: str) -> ServiceOutcome:
        started.append(service)
        return _published(service)

    stop_after = {"calls": 0}

    def stop() -> str | None:
        stop_after["calls"] += 1
        return "the parent went away" if stop_after["calls"] > 2 else None

    summary = FleetOrchestrator(LocalLoopBackend()).run(
        work, ["a", "b", "c", "d"], summary=_summary(), stop=stop
    )
    assert started == ["a", "b"]  # the check before the start, then after each outcome
    assert summary.interrupted == "the parent went away"
    assert summary.succeeded == ["a", "b"] and summary.failed == ["c", "d"]
    assert all("interrupted" in (o.error or "") for o in summary.services[2:])
    assert summary.exit_code() == summary.exit_code(allow_failures=True) == EXIT_INTERRUPTED == 4
    assert json.loads(summary.to_json())["interrupted"] == "the parent went away"
    assert "INTERRUPTED: the parent went away" in summary.table()


class WaitingBackend:
    """Yields one outcome, then sits in its wait loop calling ``on_wait`` (like the Ray backend)."""

    def __init__(self, on_wait: _Heartbeat) -> None:
        self.on_wait = on_wait
        self.closed = False

    def map_services(self, fn: ServiceFunction, services: Sequence[str]) -> Iterator[ServiceOutcome]:
        try:
            yield fn(services[0])
            for _ in range(100):
                self.on_wait(list(services[1:]))
            yield from (fn(service) for service in services[1:])
        finally:
            self.closed = True


def test_the_wait_loop_stops_the_run_when_the_parent_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    parents = iter([7, 7, 7, 7, 1])
    watch = ParentWatch(getppid=lambda: next(parents, 1))
    backend = WaitingBackend(_Heartbeat(ProgressLine(3), watch))
    summary = FleetOrchestrator(backend).run(
        _published, ["a", "b", "c"], summary=_summary(), stop=watch.check
    )
    assert backend.closed
    assert summary.succeeded == ["a"] and summary.failed == ["b", "c"]
    assert summary.interrupted is not None and "exited" in summary.interrupted
    assert "running:" not in capsys.readouterr().out  # heartbeat lines only every HEARTBEAT_S


DRIVER = """
import os, sys, time
from pathlib import Path
import jobs.retrain_fleet as driver
from mora_platform.orchestration import ServiceOutcome
from mora_platform.storage.datasets import DatasetStore
from mora_platform.storage.object_store import ObjectStore

out = Path(sys.argv[1])
DatasetStore.list_services = lambda self, name: [f"svc-{i:02d}" for i in range(20)]
ObjectStore.put_bytes = lambda self, key, data: (out / "summary.json").write_bytes(data)

def fake(spec, service, settings=None):
    time.sleep(0.25)  # training
    (out / f"published-{service}").write_text(str(os.getpid()))
    return ServiceOutcome(service=service, status="published", version="v1")

driver.retrain_service = fake
code = driver.main(["--dataset", "ds", "--backend", "local", "--run-id", "retrain-drill"])
(out / "exit-code").write_text(str(code))
"""


def test_killing_the_job_shell_wrapper_stops_the_driver(tmp_path: Path) -> None:
    """The drill: the job's `/bin/sh -c` wrapper is killed while the Python driver trains."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MORA_HOME": str(tmp_path / "home")}
    # "; true" keeps sh from exec-ing python: python stays sh's child, as under `ray job submit`.
    wrapper = subprocess.Popen(
        ["/bin/sh", "-c", f'"{sys.executable}" "{script}" "{out}" > "{tmp_path}/driver.log" 2>&1; true'],
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("published-*")):
            assert time.monotonic() < deadline, "the driver never published"
            assert wrapper.poll() is None, (tmp_path / "driver.log").read_text()
            time.sleep(0.05)
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait(timeout=10)
        killed_at = len(list(out.glob("published-*")))
        while (out / "exit-code").exists() is False:
            assert time.monotonic() < deadline, (tmp_path / "driver.log").read_text()
            time.sleep(0.05)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    log = (tmp_path / "driver.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    published = len(list(out.glob("published-*")))
    assert published <= killed_at + 1 < 20, log  # at most the service in progress finished
    assert f"parent process {wrapper.pid} " in summary["interrupted"], summary
    assert summary["counts"]["succeeded"] == published and summary["counts"]["failed"] == 20 - published
    assert int((out / "exit-code").read_text()) == EXIT_INTERRUPTED
    assert "run INTERRUPTED" in log and "exit 4" in log
