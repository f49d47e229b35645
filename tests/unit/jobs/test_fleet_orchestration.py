"""The fleet orchestrator: failure isolation, progress, summary, exit codes (local loop, no Ray)."""

from __future__ import annotations

import json

import pytest

from mora_platform.orchestration import (
    FleetOrchestrator,
    LocalLoopBackend,
    PeakRssSampler,
    ProgressLine,
    RunSummary,
    ServiceOutcome,
    failed_outcome,
    lifetime_peak_rss_mb,
    new_run_id,
    parse_services,
    utc_now,
)


def _work(service: str) -> ServiceOutcome:
    if service == "bad":
        raise ValueError("bad.csv: row 3, column 'cpu_cores_value': non-numeric value 'abc'")
    return ServiceOutcome(service=service, status="published", version=f"v-{service}", seconds=1.5)


def _summary() -> RunSummary:
    return RunSummary(run_id="retrain-test", dataset="ds", started_at=utc_now())


def test_one_failing_service_does_not_stop_the_others() -> None:
    seen: list[str] = []
    summary = FleetOrchestrator(LocalLoopBackend()).run(
        _work, ["a", "bad", "c"], summary=_summary(), on_outcome=[lambda o: seen.append(o.service)]
    )
    assert seen == ["a", "bad", "c"]
    assert summary.succeeded == ["a", "c"]
    assert summary.failed == ["bad"]
    bad = next(o for o in summary.services if o.service == "bad")
    assert bad.error is not None and bad.error.startswith("ValueError: bad.csv: row 3")
    assert bad.error_type == "ValueError"
    assert summary.wall_seconds is not None and summary.finished_at is not None


def test_a_broken_callback_does_not_stop_the_fleet() -> None:
    def boom(outcome: ServiceOutcome) -> None:
        raise RuntimeError("exporter down")

    summary = FleetOrchestrator().run(_work, ["a", "b"], summary=_summary(), on_outcome=[boom])
    assert summary.succeeded == ["a", "b"]


def test_duplicate_services_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        FleetOrchestrator().run(_work, ["a", "a"], summary=_summary())


@pytest.mark.parametrize(
    ("statuses", "allow_failures", "code"),
    [
        (["published", "failed"], False, 1),
        (["published", "failed"], True, 0),
        (["failed", "failed"], False, 1),
        (["failed", "failed"], True, 1),
        (["published", "published"], False, 0),
        ([], False, 1),
        ([], True, 1),
    ],
)
def test_exit_code(statuses: list[str], allow_failures: bool, code: int) -> None:
    summary = _summary()
    summary.services = [
        ServiceOutcome(service=f"s{i}", status=status)  # type: ignore[arg-type]
        for i, status in enumerate(statuses)
    ]
    assert summary.exit_code(allow_failures=allow_failures) == code


def test_summary_json_and_table_name_every_service_and_error() -> None:
    summary = FleetOrchestrator().run(_work, ["a", "bad"], summary=_summary())
    payload = json.loads(summary.to_json())
    assert payload["counts"] == {"total": 2, "succeeded": 1, "failed": 1}
    rows = {row["service"]: row for row in payload["services"]}
    assert rows["a"]["status"] == "published" and rows["a"]["version"] == "v-a"
    assert rows["bad"]["status"] == "failed" and "non-numeric" in rows["bad"]["error"]
    table = summary.table()
    assert "service" in table.splitlines()[0]
    assert "bad" in table and "non-numeric value" in table and "1 succeeded, 1 failed" in table


def test_progress_line_counts_and_estimates() -> None:
    ticks = iter([0.0, 10.0, 20.0, 25.0])
    progress = ProgressLine(4, clock=lambda: next(ticks))
    first = progress.update(ServiceOutcome(service="a", status="published", seconds=9.0))
    assert "1/4 done, 0 failed" in first and "a published in 9.0s" in first and "eta 30s" in first
    second = progress.update(failed_outcome("b", KeyError("no data")))
    assert "2/4 done, 1 failed" in second and "b failed: KeyError" in second
    assert "running: c, d" in progress.waiting(["d", "c"])


def test_parse_services() -> None:
    available = ["cart", "frontend", "payment"]
    assert parse_services("all", available) == ["cart", "frontend", "payment"]
    assert parse_services("payment, cart,cart", available) == ["payment", "cart"]
    with pytest.raises(ValueError, match="not in the dataset: nope"):
        parse_services("cart,nope", available)
    with pytest.raises(ValueError, match="empty"):
        parse_services(" , ", available)


def test_run_ids_are_unique_and_prefixed() -> None:
    ids = {new_run_id("tune") for _ in range(20)}
    assert len(ids) == 20
    assert all(run_id.startswith("tune-2") for run_id in ids)


def test_peak_rss_sampler_sees_an_allocation() -> None:
    with PeakRssSampler(interval_s=0.01) as sampler:
        block = bytearray(64 * 2**20)
        block[::4096] = b"x" * len(block[::4096])
    assert sampler.peak_mb >= 64
    assert lifetime_peak_rss_mb() >= sampler.peak_mb * 0.9
