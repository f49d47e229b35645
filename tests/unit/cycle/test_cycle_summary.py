"""The cycle's run summary (kind "cycle"): collection figures, decisions, the result line and the exit code."""

from __future__ import annotations

import json
import shlex

import pytest

from jobs.rightsize_cycle import build_parser
from mora_platform.cli.cycle import cycle_entrypoint
from mora_platform.cycle import CollectedService, CollectionFigures, CycleSummary, ServiceDecision
from mora_platform.orchestration import ServiceOutcome


def summary(
    *,
    collected: list[CollectedService] | None = None,
    error: str | None = None,
    outcomes: list[ServiceOutcome] | None = None,
    collect: bool = True,
) -> CycleSummary:
    figures = CollectionFigures(
        status="ok" if collect else "skipped",
        prometheus="http://prometheus:9090",
        namespace="shop",
        step_seconds=30,
        error=error,
        services=collected
        if collected is not None
        else [
            CollectedService(service="api", status="ok", new_rows=120, resumed=True),
            CollectedService(service="db", status="ok", new_rows=0, resumed=True),
        ],
    )
    figures.settle()
    result = CycleSummary(
        run_id="cycle-x",
        dataset="shop",
        namespace="shop",
        started_at="2026-03-01T00:00:00+00:00",
        collection=figures,
        decisions=[
            ServiceDecision(service="api", retrain=True, reason="new rows"),
            ServiceDecision(service="db", retrain=False, reason="unchanged: no row after ..."),
        ],
    )
    result.services = (
        outcomes
        if outcomes is not None
        else [ServiceOutcome(service="api", status="published", version="v2")]
    )
    return result


def test_a_clean_cycle_exits_0_and_says_what_it_did() -> None:
    done = summary()
    assert done.collection.status == "ok" and done.exit_code() == 0
    assert done.to_retrain == ["api"] and done.skipped == ["db"]
    assert done.result_line() == (
        "CYCLE RESULT: collected 120 new rows for 2 services; retrained 1: 1 published; 1 skipped; exit 0"
    )


def test_nothing_changed_is_a_success() -> None:
    quiet = summary(outcomes=[])
    assert quiet.exit_code() == 0  # RunSummary would say 1 for a run without services
    assert "retrained 0: 0 published; 1 skipped; exit 0" in quiet.result_line()


def test_a_failed_retrain_fails_the_cycle() -> None:
    failed = summary(
        outcomes=[
            ServiceOutcome(service="api", status="published", version="v2"),
            ServiceOutcome(service="db", status="failed", error="training: ServiceDataError: too few rows"),
        ]
    )
    assert failed.exit_code() == 1
    assert failed.result_line().endswith("retrained 2: 1 published, 1 FAILED (db); 1 skipped; exit 1")


@pytest.mark.parametrize(
    ("collected", "error"),
    [
        ([CollectedService(service="api", status="failed", message="query timed out")], None),
        ([CollectedService(service="api", status="not attempted", message="not attempted: down")], None),
        ([CollectedService(service="api", status="interrupted")], None),
        ([], "cannot reach Prometheus at http://prometheus:9090"),
    ],
)
def test_a_failed_collection_fails_the_cycle_even_when_retraining_went_well(
    collected: list[CollectedService], error: str | None
) -> None:
    failed = summary(collected=collected, error=error)
    assert failed.collection.status == "failed" and failed.exit_code() == 1
    assert "FAILED" in failed.result_line() and failed.result_line().endswith("exit 1")


def test_no_data_is_not_a_collection_failure() -> None:
    quiet = summary(collected=[CollectedService(service="api", status="no data", message="no series")])
    assert quiet.collection.status == "ok" and quiet.exit_code() == 0


def test_a_skipped_collection_says_so() -> None:
    skipped = summary(collect=False, collected=[])
    assert skipped.collection.status == "skipped" and skipped.exit_code() == 0
    assert skipped.result_line().startswith("CYCLE RESULT: collection skipped; retrained 1")


def test_the_summary_json_has_the_collection_decisions_and_skipped_services() -> None:
    payload = json.loads(summary().to_json())
    assert payload["kind"] == "cycle" and payload["run_id"] == "cycle-x" and payload["namespace"] == "shop"
    assert payload["counts"] == {
        "total": 1,
        "succeeded": 1,
        "failed": 0,
        "retrain_decided": 1,
        "skipped": 1,
        "collected_new_rows": 120,
        "collection_failed": 0,
    }
    assert payload["skipped"] == ["db"]
    assert [row["service"] for row in payload["collection"]["services"]] == ["api", "db"]
    assert payload["collection"]["services"][0]["new_rows"] == 120
    assert payload["decisions"][1] == {
        "service": "db",
        "retrain": False,
        "reason": "unchanged: no row after ...",
        "newest_row": None,
        "trained_through": None,
        "model_version": None,
    }
    assert payload["services"][0]["version"] == "v2"


def test_tables_name_every_service() -> None:
    done = summary()
    assert "api" in done.collection_table() and "(resumed)" in done.collection_table()
    assert done.decision_table().splitlines()[2].split()[:2] == ["api", "yes"]


def test_the_cli_entrypoint_parses_back_and_carries_no_credential() -> None:
    argv = cycle_entrypoint(
        dataset="shop data",
        namespace="shop",
        services="all",
        since="14d",
        until="now",
        run_id="cycle-x",
        prometheus="https://prometheus.example:9090",
        step="30s",
        min_new_data="24h",
        config_json='{"lstm": {"units": [4]}}',
        no_tuned=True,
    )
    command = shlex.join(argv)
    assert shlex.split(command)[:2] == ["python", "jobs/rightsize_cycle.py"]
    args = build_parser().parse_args(shlex.split(command)[2:])
    assert args.dataset == "shop data" and args.namespace == "shop" and args.run_id == "cycle-x"
    assert args.prometheus == "https://prometheus.example:9090" and args.step == "30s"
    assert args.min_new_data == "24h" and args.no_tuned and args.retrain == "changed"
    assert args.backend == "ray"
    assert "TOKEN" not in command.upper() and "PASSWORD" not in command.upper()


def test_a_summary_that_cannot_be_stored_fails_the_cycle(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import jobs.retrain_fleet
    from jobs.rightsize_cycle import finish_cycle
    from mora_platform.settings import MoraSettings

    stored: list[bytes] = []

    def store(summary: CycleSummary, settings: MoraSettings) -> str:
        stored.append(summary.to_json())
        return f"s3://b/runs/{summary.run_id}/summary.json"

    settings = MoraSettings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setattr(jobs.retrain_fleet, "store_summary", store)
    assert finish_cycle(summary(), settings) == 0 and len(stored) == 1
    out = capsys.readouterr().out
    assert "run summary: s3://b/runs/cycle-x/summary.json" in out and out.rstrip().endswith("exit 0")

    def unreachable(summary: CycleSummary, settings: MoraSettings) -> str:
        raise ConnectionError("S3 is down")

    monkeypatch.setattr(jobs.retrain_fleet, "store_summary", unreachable)
    assert finish_cycle(summary(), settings) == 3
    out = capsys.readouterr().out
    assert "run summary could not be stored: ConnectionError: S3 is down" in out
    assert out.rstrip().endswith("1 skipped; run summary NOT stored; exit 3")
