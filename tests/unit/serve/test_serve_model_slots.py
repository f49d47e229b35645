"""Loading, hot reload and tamper refusal of served models, on a local registry with a fake model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mora_platform.data.schema import UNIFIED_COLUMNS
from mora_platform.recommend.types import Recommendation, ResourceRecommendation
from mora_platform.registry import LocalBlobBackend, ModelRegistry
from serve.model_slots import (
    ModelLoader,
    NoUsableVersionError,
    UnknownServiceError,
    model_step_seconds,
    request_inputs,
)


class FakeModel:
    """Recommends ``cores`` from its bundle; refuses histories without cpu."""

    def __init__(self, cores: float) -> None:
        self.cores = cores
        self.seen: list[tuple[pd.DataFrame | None, Mapping[str, float | str] | None]] = []

    @classmethod
    def load(cls, directory: Path) -> FakeModel:
        return cls(json.loads((directory / "model.json").read_text())["cores"])

    def recommend(
        self,
        history: pd.DataFrame | None = None,
        context: Mapping[str, float | str] | None = None,
        *,
        model_version: str | None = None,
        workload: object = None,
    ) -> Recommendation:
        self.seen.append((history, context))
        if history is not None and history["cpu_cores_value"].isna().all():
            raise ValueError("history lacks column 'cpu_cores_value'")
        return Recommendation(
            service="svc-a",
            model_version=model_version,
            recommendations=ResourceRecommendation(
                cpu_cores=self.cores,
                cpu_millicores=round(self.cores * 1000),
                memory_bytes=2**26,
                memory_mib=64.0,
                replicas=1,
            ),
            confidence=0.5,
            coverage_target=0.95,
        )


def publish(registry: ModelRegistry, tmp_path: Path, service: str, cores: float) -> str:
    bundle = tmp_path / f"bundle-{service}-{cores}"
    bundle.mkdir()
    (bundle / "model.json").write_text(json.dumps({"cores": cores}))
    return registry.publish(service, bundle, metadata={"metrics": {"cpu": {"mae": 0.1}}})


def tamper(registry: ModelRegistry, service: str, version: str) -> None:
    registry.backend.put_bytes(f"models/{service}/{version}/model.json", b'{"cores": 99.0}')


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(LocalBlobBackend(tmp_path / "blobs"))


@pytest.fixture()
def loader(registry: ModelRegistry, tmp_path: Path) -> ModelLoader:
    return ModelLoader(registry, tmp_path / "cache", factory=FakeModel.load)


def served(loader: ModelLoader, slot) -> dict:
    [answer] = loader.answer(slot, [{"service": slot.service}])
    assert answer["status"] == 200, answer
    return answer["recommendation"]


def test_load_and_answer(registry: ModelRegistry, loader: ModelLoader, tmp_path: Path) -> None:
    version = publish(registry, tmp_path, "svc-a", 0.25)
    slot = loader.load("svc-a")
    rec = served(loader, slot)
    assert rec["model_version"] == version
    assert rec["recommendations"]["cpu_millicores"] == 250
    assert rec["degraded"] is False


def test_unknown_service(loader: ModelLoader) -> None:
    with pytest.raises(UnknownServiceError, match="svc-none"):
        loader.load("svc-none")


def test_refresh_swaps_new_version(registry: ModelRegistry, loader: ModelLoader, tmp_path: Path) -> None:
    publish(registry, tmp_path, "svc-a", 0.25)
    slot = loader.load("svc-a")
    assert loader.refresh(slot) is False
    newer = publish(registry, tmp_path, "svc-a", 0.5)
    assert loader.refresh(slot) is True
    rec = served(loader, slot)
    assert rec["model_version"] == newer
    assert rec["recommendations"]["cpu_cores"] == 0.5


def test_tampered_version_refused_previous_keeps_serving(
    registry: ModelRegistry, loader: ModelLoader, tmp_path: Path
) -> None:
    good = publish(registry, tmp_path, "svc-a", 0.25)
    slot = loader.load("svc-a")
    bad = publish(registry, tmp_path, "svc-a", 0.5)
    tamper(registry, "svc-a", bad)
    assert loader.refresh(slot) is False
    rec = served(loader, slot)
    assert rec["model_version"] == good
    assert rec["recommendations"]["cpu_cores"] == 0.25
    assert rec["degraded"] is True
    assert any(bad in reason and "model.json" in reason for reason in rec["reasons"])
    # checked again on the next interval: still refused, still serving the good one
    assert loader.refresh(slot) is False
    assert served(loader, slot)["model_version"] == good
    fixed = publish(registry, tmp_path, "svc-a", 0.75)
    assert loader.refresh(slot) is True
    rec = served(loader, slot)
    assert (rec["model_version"], rec["degraded"]) == (fixed, False)


def test_cold_load_falls_back_past_tampered_latest(
    registry: ModelRegistry, loader: ModelLoader, tmp_path: Path
) -> None:
    good = publish(registry, tmp_path, "svc-a", 0.25)
    bad = publish(registry, tmp_path, "svc-a", 0.5)
    tamper(registry, "svc-a", bad)
    slot = loader.load("svc-a")
    assert slot.version == good
    rec = served(loader, slot)
    assert rec["degraded"] is True and bad in " ".join(rec["reasons"])


def test_no_usable_version(registry: ModelRegistry, loader: ModelLoader, tmp_path: Path) -> None:
    bad = publish(registry, tmp_path, "svc-a", 0.5)
    tamper(registry, "svc-a", bad)
    with pytest.raises(NoUsableVersionError, match="checksum"):
        loader.load("svc-a")


def test_model_value_error_is_422_and_isolated(
    registry: ModelRegistry, loader: ModelLoader, tmp_path: Path
) -> None:
    publish(registry, tmp_path, "svc-a", 0.25)
    slot = loader.load("svc-a")
    answers = loader.answer(
        slot,
        [{"service": "svc-a", "history": [{"mem_bytes_value": 1.0}]}, {"service": "svc-a"}],
    )
    assert [a["status"] for a in answers] == [422, 200]
    assert "cpu_cores_value" in answers[0]["error"]


def test_request_inputs_builds_history_and_context() -> None:
    payload = {
        "service": "svc-a",
        "context": {"load_users": 50.0, "replica_count": 2, "scenario": "browsing"},
        "current": {"cpu_cores_value": 0.03},
        "history": [
            {"timestamp": "2026-01-01T00:00:00Z", "cpu_cores_value": 0.01},
            {"timestamp": "2026-01-01T00:00:30Z", "cpu_cores_value": 0.02, "load_users": 40.0},
        ],
    }
    history, context, notes = request_inputs("svc-a", payload)
    assert context == {"load_users": 50.0, "replica_count": 2}
    assert notes == []
    assert history is not None and len(history) == 3
    assert set(UNIFIED_COLUMNS) <= set(history.columns)
    assert list(history["cpu_cores_value"]) == [0.01, 0.02, 0.03]
    assert list(history["load_users"]) == [50.0, 40.0, 50.0]
    assert list(history["scenario"]) == ["browsing"] * 3
    assert history["mem_bytes_value"].isna().all()
    stamps = pd.DatetimeIndex(history["timestamp"])
    assert str(stamps.tz) == "UTC"
    assert stamps[2] - stamps[1] == pd.Timedelta(seconds=30)


def test_request_inputs_without_history() -> None:
    assert request_inputs("svc-a", {"service": "svc-a"}) == (None, {}, [])
    history, _, notes = request_inputs("svc-a", {"service": "svc-a", "current": {"cpu_cores_value": 0.1}})
    assert history is None and "current" in notes[0]


def test_request_inputs_lays_out_missing_timestamps() -> None:
    history, _, _ = request_inputs("svc-a", {"service": "svc-a", "history": [{"cpu_cores_value": 0.1}] * 4})
    assert history is not None
    stamps = pd.DatetimeIndex(history["timestamp"])
    assert stamps.is_monotonic_increasing and stamps.is_unique
    assert list(history["scenario"]) == ["unknown"] * 4


def test_history_less_answers_are_memoised_per_version(
    registry: ModelRegistry, loader: ModelLoader, tmp_path: Path
) -> None:
    publish(registry, tmp_path, "svc-a", 0.25)
    slot = loader.load("svc-a")
    model = slot.loaded.model
    assert isinstance(model, FakeModel)
    ask = {"service": "svc-a", "context": {"load_users": 5.0}}
    assert loader.cached_answers(slot, [ask]) is None
    first = loader.answer(slot, [ask])
    assert loader.cached_answers(slot, [ask]) == first
    assert loader.answer(slot, [ask]) == first
    assert len(model.seen) == 1
    other = loader.answer(slot, [{"service": "svc-a", "context": {"load_users": 6.0}}])
    assert other[0]["status"] == 200 and len(model.seen) == 2
    with_history = {"service": "svc-a", "history": [{"cpu_cores_value": 0.1}]}
    loader.answer(slot, [with_history, with_history])
    assert len(model.seen) == 4, "requests carrying data are never memoised"
    # a refused newer version marks memoised answers degraded too
    bad = publish(registry, tmp_path, "svc-a", 0.5)
    tamper(registry, "svc-a", bad)
    loader.refresh(slot)
    [cached] = loader.cached_answers(slot, [ask]) or []
    assert cached["recommendation"]["degraded"] is True and bad in cached["recommendation"]["reasons"][-1]
    assert first[0]["recommendation"]["degraded"] is False, "the memo itself stays undecorated"
    # a reload starts a fresh memo
    publish(registry, tmp_path, "svc-a", 0.75)
    assert loader.refresh(slot) is True
    assert loader.cached_answers(slot, [ask]) is None
    assert served(loader, slot)["recommendations"]["cpu_cores"] == 0.75


def test_request_inputs_maps_relative_labels_at_the_model_spacing() -> None:
    """``t_N`` labels land N model steps apart, as the loader maps them; ``current`` continues them."""
    payload = {
        "service": "svc-a",
        "history": [
            {"timestamp": f"t_{n}", "cpu_cores_value": 0.01, "mem_bytes_value": 5e7} for n in (0, 1, 3)
        ],
        "current": {"cpu_cores_value": 0.02},
    }
    history, _, _ = request_inputs("svc-a", payload, step_seconds=60)
    assert history is not None
    assert list(history["step"]) == [0, 1, 3, 4]
    offsets = (pd.DatetimeIndex(history["timestamp"]) - pd.Timestamp("2026-01-01T00:00:00Z")).total_seconds()
    assert list(offsets) == [0, 60, 180, 240]
    assert history["mem_bytes_value"].iloc[-1] == 5e7, "current's missing memory is imputed like a file's"


def test_request_inputs_cleans_the_history() -> None:
    rows = [
        {
            "cpu_cores_value": 0.01,
            "mem_bytes_value": 5e7,
            "pod_restarts_value": 3.0,
            "node_cpu_util_value": -140.0,
        },
        {
            "cpu_cores_value": 0.01,
            "mem_bytes_value": 0.0,
            "pod_restarts_value": 3.0,
            "service_stability_value": "inf",
        },
        {"cpu_cores_value": 0.02, "mem_bytes_value": 6e7, "pod_restarts_value": 0.0},
    ]
    history, _, _ = request_inputs("svc-a", {"service": "svc-a", "history": rows})
    assert history is not None
    assert history["mem_bytes_value"].iloc[1] == 5.5e7, "a 0.0 memory scrape is a gap, imputed"
    assert np.isfinite(history["service_stability_value"]).all()
    assert history["node_cpu_util_value"].between(0, 100).all()
    # inf dropped and recomputed: 1 / (1 + restarts in the step); 3 -> 0 is a counter reset, not -3
    assert list(history["service_stability_value"]) == [1.0, 1.0, 1.0]


def test_request_inputs_refuses_what_the_data_layer_refuses() -> None:
    rows = [{"cpu_cores_value": 0.1}, {"cpu_cores_value": -0.1}]
    with pytest.raises(ValueError, match=r"history\[1\]\.cpu_cores_value: negative value"):
        request_inputs("svc-a", {"service": "svc-a", "history": rows})


def test_model_step_seconds() -> None:
    class WithTail:
        history = pd.DataFrame(
            {
                "timestamp": pd.date_range("2026-01-01", periods=5, freq="60s", tz="UTC"),
                "experiment_id": "e",
            }
        )

    assert model_step_seconds(WithTail()) == 60
    assert model_step_seconds(FakeModel(0.1)) == 15


def restore(registry: ModelRegistry, service: str, version: str, cores: float) -> None:
    registry.backend.put_bytes(
        f"models/{service}/{version}/model.json", json.dumps({"cores": cores}).encode()
    )


def test_refused_version_is_served_once_its_file_is_restored(
    registry: ModelRegistry, loader: ModelLoader, tmp_path: Path
) -> None:
    good = publish(registry, tmp_path, "svc-a", 0.25)
    slot = loader.load("svc-a")
    bad = publish(registry, tmp_path, "svc-a", 0.5)
    tamper(registry, "svc-a", bad)
    assert loader.refresh(slot) is False
    assert (slot.version, slot.refused_version) == (good, bad)
    assert loader.refresh(slot) is False  # re-checked every reload interval, still bad
    assert served(loader, slot)["degraded"] is True
    restore(registry, "svc-a", bad, 0.5)
    assert loader.refresh(slot) is True  # recovered without a new replica
    rec = served(loader, slot)
    assert (rec["model_version"], rec["degraded"], rec["recommendations"]["cpu_cores"]) == (bad, False, 0.5)
    assert slot.refused_version is None and slot.degraded_reason is None


def test_cold_loaded_fallback_recovers_when_latest_is_restored(
    registry: ModelRegistry, loader: ModelLoader, tmp_path: Path
) -> None:
    good = publish(registry, tmp_path, "svc-a", 0.25)
    bad = publish(registry, tmp_path, "svc-a", 0.5)
    tamper(registry, "svc-a", bad)
    slot = loader.load("svc-a")
    assert (slot.version, served(loader, slot)["degraded"]) == (good, True)
    restore(registry, "svc-a", bad, 0.5)
    assert loader.refresh(slot) is True
    assert (served(loader, slot)["model_version"], served(loader, slot)["degraded"]) == (bad, False)


@pytest.mark.parametrize("pointer", [b"../../x", b""])
def test_garbled_latest_serves_the_newest_valid_version_degraded(
    registry: ModelRegistry, loader: ModelLoader, tmp_path: Path, pointer: bytes
) -> None:
    first = publish(registry, tmp_path, "svc-a", 0.25)
    second = publish(registry, tmp_path, "svc-a", 0.5)
    registry.backend.put_bytes("models/svc-a/LATEST", pointer)
    slot = loader.load("svc-a")  # not "unknown service"
    rec = served(loader, slot)
    assert (rec["model_version"], rec["degraded"]) == (second, True)
    assert any("LATEST" in reason for reason in rec["reasons"])
    # the newest is tampered too: the next valid one, still degraded
    tamper(registry, "svc-a", second)
    fresh = ModelLoader(registry, tmp_path / "cache2", factory=FakeModel.load).load("svc-a")
    assert (fresh.version, served(loader, fresh)["degraded"]) == (first, True)
    # LATEST repaired: the degraded flag clears on the next check
    registry.backend.put_bytes("models/svc-a/LATEST", f"{second}\n".encode())
    assert loader.refresh(slot) is False
    assert (served(loader, slot)["model_version"], served(loader, slot)["degraded"]) == (second, False)


def test_missing_latest_serves_the_newest_valid_version_degraded(
    registry: ModelRegistry, loader: ModelLoader, tmp_path: Path
) -> None:
    publish(registry, tmp_path, "svc-a", 0.25)
    second = publish(registry, tmp_path, "svc-a", 0.5)
    registry.backend.delete("models/svc-a/LATEST")
    slot = loader.load("svc-a")
    rec = served(loader, slot)
    assert (rec["model_version"], rec["degraded"]) == (second, True)
    assert any("no LATEST" in reason for reason in rec["reasons"])
    registry.backend.put_bytes("models/svc-a/LATEST", f"{second}\n".encode())
    loader.refresh(slot)
    assert served(loader, slot)["degraded"] is False
