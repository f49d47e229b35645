"""The development / confirmation split: deterministic, disjoint, covering; the report writes both parts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from mora_platform.backtest.evaluation import (
    CONFIRMATION,
    DEVELOPMENT,
    ONLINE_BOUTIQUE_CONDITIONS,
    ONLINE_BOUTIQUE_SERVICES,
    PARTS,
    experiment_condition,
    online_boutique_split,
    side_by_side,
    split_dataset,
    split_names,
    split_online_boutique,
    split_synthetic,
    synthetic_cut,
    synthetic_service_part,
    warmup_for,
)
from mora_platform.data.synthetic import generate_fleet

REPO = Path(__file__).resolve().parents[3]


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "backtest_report_bench", REPO / "benchmarks" / "backtest_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_split_names_is_deterministic_disjoint_and_covering() -> None:
    names = [f"name-{i}" for i in range(20)]
    first = split_names(names)
    assert first == split_names(reversed(names)) == split_names([*names, *names])
    assert set(first.development).isdisjoint(first.confirmation)
    assert set(first.development) | set(first.confirmation) == set(names)
    assert len(first.confirmation) == 8  # round(0.4 * 20)
    assert split_names(["a", "b"]).confirmation and split_names(["a", "b"]).development
    assert split_names(names, salt="other") != first  # the salt, not the order, decides
    with pytest.raises(ValueError, match="share"):
        split_names(names, share=1.0)


def test_online_boutique_split_is_fixed() -> None:
    services, conditions = online_boutique_split()
    assert services.confirmation == ("cartservice", "currencyservice", "emailservice")
    assert services.development == ("adservice", "checkoutservice", "frontend", "productcatalogservice")
    assert len(conditions.confirmation) == 14 and len(conditions.development) == 22
    assert set(conditions.confirmation) | set(conditions.development) == set(ONLINE_BOUTIQUE_CONDITIONS)
    assert {c.split("_")[0] for c in conditions.confirmation} == {"browsing", "checkout"}
    assert experiment_condition("adservice_browsing_replicas_1_users_10", "adservice") == (
        "browsing_replicas_1_users_10"
    )
    assert experiment_condition("run-7", "adservice") == "run-7"


def ob_frame() -> pd.DataFrame:
    rows = []
    for service in ONLINE_BOUTIQUE_SERVICES:
        for condition in ONLINE_BOUTIQUE_CONDITIONS:
            for step in range(3):
                rows.append(
                    {
                        "timestamp": pd.Timestamp("2026-01-01T00:00:00Z") + pd.Timedelta(seconds=15 * step),
                        "experiment_id": f"{service}_{condition}",
                        "service": service,
                        "cpu_cores_value": 0.1,
                    }
                )
    return pd.DataFrame(rows)


def test_online_boutique_parts_are_other_services_and_other_conditions() -> None:
    frame = ob_frame()
    parts = split_online_boutique(frame)
    shuffled = split_online_boutique(frame.sample(frac=1.0, random_state=3).reset_index(drop=True))
    for part in PARTS:  # the rows' order does not matter
        assert shuffled[part].services == parts[part].services
        assert sorted(shuffled[part].frame["experiment_id"]) == sorted(parts[part].frame["experiment_id"])
    dev, conf = parts[DEVELOPMENT].frame, parts[CONFIRMATION].frame
    assert set(dev["service"]).isdisjoint(conf["service"])
    assert set(dev["experiment_id"]).isdisjoint(conf["experiment_id"])
    conditions = [
        {experiment_condition(e, s) for e, s in zip(p["experiment_id"], p["service"], strict=True)}
        for p in (dev, conf)
    ]
    assert conditions[0].isdisjoint(conditions[1])
    assert len(dev) == 4 * 22 * 3 and len(conf) == 3 * 14 * 3  # the other rows are used by neither part
    assert split_dataset("online-boutique", frame)[CONFIRMATION].services == parts[CONFIRMATION].services


def test_synthetic_parts_are_other_services_and_later_time() -> None:
    fleet = generate_fleet(4, 12, step_seconds=3600, seed=1)
    cut = synthetic_cut(fleet)
    assert cut == pd.Timestamp("2026-01-13T00:00:00Z")  # day 8 of 12
    assert synthetic_cut(generate_fleet(2, 6, step_seconds=3600)) == pd.Timestamp("2026-01-09T00:00:00Z")
    parts = split_synthetic(fleet)
    again = split_dataset("preset:flash-crowd", fleet)
    for part in PARTS:
        pd.testing.assert_frame_equal(parts[part].frame, again[part].frame)
    dev, conf = parts[DEVELOPMENT], parts[CONFIRMATION]
    assert dev.services == ("svc-00", "svc-02") and conf.services == ("svc-01", "svc-03")
    assert (dev.frame["timestamp"] < cut).all() and dev.score_from is None
    assert conf.score_from == cut and conf.frame["timestamp"].max() > cut
    assert set(fleet["service"]) == set(dev.services) | set(conf.services)
    # the confirmation part is scored from the cut: the warm-up ends there
    assert warmup_for(conf, pd.Timedelta(days=3)) == pd.Timedelta(days=8)
    assert warmup_for(dev, pd.Timedelta(days=3)) == pd.Timedelta(days=3)
    assert [synthetic_service_part(f"svc-{i:02d}") for i in range(4)] == [
        DEVELOPMENT,
        CONFIRMATION,
        DEVELOPMENT,
        CONFIRMATION,
    ]
    assert synthetic_service_part("checkout") in PARTS


def test_side_by_side_keeps_both_parts() -> None:
    def report(slack: float) -> dict[str, object]:
        stats = {"slack": slack, "under_provisioning_rate": 0.01, "peak_exceed_rate": 0.02}
        block = {"series": ["a"], "methods": {"vpa": stats}, "comparison": None}
        return {"summary": {"cpu": block, "memory": {"series": [], "methods": {}, "comparison": None}}}

    document = side_by_side({"synthetic": {DEVELOPMENT: report(0.3), CONFIRMATION: report(0.4)}})
    cells = document["datasets"]["synthetic"]["resources"]["cpu"]["methods"]["vpa"]
    assert cells[DEVELOPMENT]["slack"] == 0.3 and cells[CONFIRMATION]["slack"] == 0.4
    assert document["parts"] == list(PARTS)


def test_the_benchmark_writes_both_parts_side_by_side(tmp_path: Path) -> None:
    bench = load_benchmark()
    assert bench.expand_datasets("synthetic,presets")[:2] == ["synthetic", "preset:regime-shift"]
    with pytest.raises(SystemExit):
        bench.expand_datasets("nope")
    bench.main(
        ["--quick", "--no-platform", "--datasets", "synthetic,preset:cpu-only", "--results", str(tmp_path)]
    )
    for dataset in ("synthetic", "preset-cpu-only"):
        for part in PARTS:
            report = json.loads((tmp_path / dataset / part / "backtest.json").read_text())
            assert report["config"]["evaluation"]["part"] == part
            assert report["summary"]["cpu"]["series"], (dataset, part)
    conf = json.loads((tmp_path / "synthetic" / CONFIRMATION / "backtest.json").read_text())
    assert conf["series"][0]["resources"]["cpu"]["first_origin"] == conf["config"]["evaluation"]["score_from"]
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["parts"] == list(PARTS)
    vpa = evaluation["datasets"]["synthetic"]["resources"]["cpu"]["methods"]["vpa"]
    assert vpa[DEVELOPMENT] is not None and vpa[CONFIRMATION] is not None
    assert evaluation["datasets"]["preset:cpu-only"]["resources"]["memory"]["series"] == {
        DEVELOPMENT: 0,
        CONFIRMATION: 0,
    }
    summary = (tmp_path / "summary.md").read_text()
    assert "| method | development | confirmation |" in summary
    assert "## synthetic, confirmation" in summary
    # one part alone: the other part's earlier run stays in the summary
    bench.main(
        [
            "--quick",
            "--no-platform",
            "--datasets",
            "synthetic",
            "--part",
            "development",
            "--results",
            str(tmp_path),
        ]
    )
    assert json.loads((tmp_path / "evaluation.json").read_text())["parts"] == list(PARTS)
