"""History rows through the HTTP layer: accepted and cleaned as the data layer accepts and cleans a file.

The real path in process: FastAPI app -> ``ServeBackend`` (payloads serialised as for Ray) -> an
in-process stand-in for the model deployment -> ``ModelLoader`` -> a real ``ServiceModel`` trained
with a tiny config on the shipped Online Boutique rows of ``frontend``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mora_platform.data.loaders import load_path
from mora_platform.data.schema import LOAD_USERS, METRIC_COLUMNS, REPLICA_COUNT, UNIFIED_COLUMNS
from mora_platform.data.validation import validate_table
from mora_platform.models.recent import (
    PEAK_QUANTILE,
    PEAK_WINDOW_SECONDS,
    RECENT_RULES,
    min_recent_windows,
)
from mora_platform.registry import LocalBlobBackend, ModelRegistry
from mora_platform.training.bundle import ServiceModel
from mora_platform.training.config import TrainingConfig
from mora_platform.training.service_trainer import train_service
from serve.api import RecommendationRequest, ServiceInfo
from serve.http_api import ModelOutcome, create_api
from serve.ingress import ServeBackend
from serve.model_slots import ModelLoader, ServiceSlot, model_step_seconds, request_inputs

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "online-boutique"
SERVICE = "frontend"
# t_N labels, an infinite service_stability_value, negative node_cpu_util_value and empty cells
SHIPPED = EXAMPLES / "frontend_checkout_replicas_1_users_20.csv"
TINY = {
    "seq_len": 8,
    "lstm": {"units": [8], "dense_units": 4, "epochs": 1, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 16},
    "seed": 0,
}
JSON_HEADERS = {"content-type": "application/json"}


class InProcessModels:
    """Stands in for the ``ServiceModels`` DeploymentHandle: ``options(...).recommend.remote(payloads)``."""

    def __init__(self, loader: ModelLoader, service: str | None = None, slots: dict | None = None) -> None:
        self.loader, self.service = loader, service
        self.slots: dict[str, ServiceSlot] = {} if slots is None else slots

    def options(self, *, multiplexed_model_id: str) -> InProcessModels:
        return InProcessModels(self.loader, multiplexed_model_id, self.slots)

    @property
    def recommend(self) -> InProcessModels:
        return self

    async def _answer(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self.service is not None
        slot = self.slots.get(self.service) or self.slots.setdefault(
            self.service, self.loader.load(self.service)
        )
        return self.loader.answer(slot, payloads)

    def remote(self, payloads: list[dict[str, Any]]) -> Any:
        return self._answer(payloads)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``frontend`` trained with a tiny config on its six shipped experiments (15 s relative steps)."""
    root = tmp_path_factory.mktemp("history-bundle")
    csv_dir = root / "csv"
    csv_dir.mkdir()
    for path in sorted(EXAMPLES.glob(f"{SERVICE}_*.csv")):
        shutil.copy(path, csv_dir / path.name)
    out = root / "bundle"
    out.mkdir()
    train_service(load_path(csv_dir).frame, SERVICE, TrainingConfig.model_validate(TINY), out)
    return out


@pytest.fixture(scope="module")
def model(bundle: Path) -> ServiceModel:
    return ServiceModel.load(bundle)


@pytest.fixture(scope="module")
def client(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("history-registry")
    registry = ModelRegistry(LocalBlobBackend(root / "blobs"))
    registry.publish(SERVICE, bundle, metadata={"metrics": {}})
    loader = ModelLoader(registry, root / "cache")
    backend = ServeBackend(InProcessModels(loader), registry)  # type: ignore[arg-type]
    yield TestClient(create_api(backend))
    loader.close()


def post(client: TestClient, body: dict[str, Any]) -> Any:
    """POST ``body`` encoded as Python's json.dumps encodes it (``Infinity``, ``NaN``)."""
    return client.post("/v1/recommendations", content=json.dumps(body), headers=JSON_HEADERS)


def shipped_rows() -> list[dict[str, Any]]:
    """The shipped file's rows as a JSON client holds them after pandas.read_csv (NaN for empty cells)."""
    return pd.read_csv(SHIPPED).to_dict(orient="records")


def head_room_reasons(answer: dict[str, Any]) -> list[str]:
    return [reason for reason in answer.get("reasons", []) if "head-room calibrated on the" in reason]


# the no-fit rules that look back an hour (the recent peak, the hour's p95)
HOUR_RULES = tuple(name for name, (_, seconds) in RECENT_RULES.items() if seconds >= PEAK_WINDOW_SECONDS)


def not_the_recent_peak(reason: str) -> bool:
    """A head-room reason naming a candidate that needs less than an hour of rows before its first
    prediction: the peak-quantile forecast or a shorter rule."""
    named = reason.rsplit("(", 1)[-1].split(")", 1)[0]
    shorter = {PEAK_QUANTILE, *(name for name in RECENT_RULES if name not in HOUR_RULES)}
    return bool(HOUR_RULES) and named in shorter


def test_shipped_rows_are_accepted_and_cleaned_like_a_file(client: TestClient, model: ServiceModel) -> None:
    raw = pd.read_csv(SHIPPED)
    assert np.isinf(raw["service_stability_value"]).any()
    assert (raw["node_cpu_util_value"] < 0).any()
    assert raw["timestamp"].str.fullmatch(r"t_\d+").all()
    body = {"service": SERVICE, "history": shipped_rows()}
    encoded = json.dumps(body)
    assert "Infinity" in encoded and "NaN" in encoded and '"t_0"' in encoded
    response = post(client, body)
    assert response.status_code == 200, response.text
    served = response.json()
    # the model saw exactly what the data layer makes of the same file, cleaned
    loaded = load_path(SHIPPED).frame
    assert model_step_seconds(model) == 15
    frame, _, notes = request_inputs(SERVICE, body, step_seconds=model_step_seconds(model))
    assert frame is not None and notes == []
    pd.testing.assert_frame_equal(frame, loaded)
    assert np.isfinite(frame["service_stability_value"]).all()
    assert frame["node_cpu_util_value"].between(0, 100).all()
    expected = model.recommend(loaded).model_dump(mode="json")
    assert served["recommendations"] == expected["recommendations"]
    assert served["confidence"] == pytest.approx(expected["confidence"])


def test_shipped_rows_as_csv_text_get_the_same_answer(client: TestClient) -> None:
    """The cells exactly as the file holds them ("inf", "" for missing) are accepted too."""
    with SHIPPED.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert any(row["service_stability_value"] == "inf" for row in rows)
    as_text = post(client, {"service": SERVICE, "history": rows})
    as_numbers = post(client, {"service": SERVICE, "history": shipped_rows()})
    assert as_text.status_code == 200, as_text.text
    assert as_text.json()["recommendations"] == as_numbers.json()["recommendations"]


def test_shipped_rows_with_current_get_an_answer(client: TestClient) -> None:
    body = {
        "service": SERVICE,
        "context": {"load_users": 20, "replica_count": 1, "scenario": "checkout"},
        "history": shipped_rows(),
        "current": {"cpu_cores_value": 0.0005, "mem_bytes_value": 9e6},
    }
    response = post(client, body)
    assert response.status_code == 200, response.text


def minimum_rows(model: ServiceModel, step_seconds: float) -> int:
    """The fewest rows before the model's fit for the hour's rules (the recent peak, its p95) to be
    judged: they look back ``PEAK_WINDOW_SECONDS`` (those rows have no prediction yet), then
    ``min_recent_windows`` complete holding windows of ``horizon_steps`` rows must follow (40, and an
    hour of them). The 15 minutes' peak and the peak-quantile forecast (judged on rows it never trained
    on) may answer from fewer; with ``horizon_steps + min_recent_windows - 2`` or fewer rows (fewer
    windows than needed) no candidate can."""
    peak_rows = round(PEAK_WINDOW_SECONDS / step_seconds)
    return peak_rows + model.calibration.horizon_steps + min_recent_windows(step_seconds) - 1


def pooled_rows(count: int) -> list[dict[str, Any]]:
    """``count`` shipped frontend rows (experiments one after another) without timestamp or identity."""
    frames = [pd.read_csv(path) for path in sorted(EXAMPLES.glob(f"{SERVICE}_*.csv"))]
    pool = pd.concat(frames, ignore_index=True).drop(columns=["timestamp", "experiment_id", "service"])
    assert len(pool) >= count
    return pool.head(count).to_dict(orient="records")


def test_history_without_timestamps_gets_the_auto_head_room_from_the_minimum(
    client: TestClient, model: ServiceModel
) -> None:
    """Rows without timestamps are consecutive at the model's spacing (15 s here), so the hour's rules
    look back 240 rows and need an hour of holding windows after them (240): 480 rows with a 1-step
    horizon."""
    minimum = minimum_rows(model, model_step_seconds(model))
    assert (model_step_seconds(model), model.calibration.horizon_steps, minimum) == (15, 1, 480)
    enough = post(client, {"service": SERVICE, "history": pooled_rows(minimum)})
    assert enough.status_code == 200, enough.text
    for target in ("cpu", "memory"):
        assert any(
            reason.startswith(f"{target} head-room calibrated on the {minimum} most recent rows (")
            for reason in enough.json()["reasons"]
        ), enough.json()["reasons"]
    # one row fewer: the hour's rules cannot be judged; only a candidate needing less look-back can
    # answer (the 15 minutes' peak, the peak-quantile forecast judged on rows it never trained on)
    short = post(client, {"service": SERVICE, "history": pooled_rows(minimum - 1)})
    assert short.status_code == 200, short.text
    assert all(not_the_recent_peak(r) for r in head_room_reasons(short.json())), short.json()["reasons"]
    # and with H + 238 rows (239 holding windows) no candidate has an hour of holding windows: the
    # training-time head-room
    fewest = model.calibration.horizon_steps + min_recent_windows(model_step_seconds(model)) - 2
    assert head_room_reasons(post(client, {"service": SERVICE, "history": pooled_rows(fewest)}).json()) == []


def test_one_minute_history_needs_120_rows(client: TestClient, model: ServiceModel) -> None:
    """At 1 min per row the hour's rules look back 60 rows, then need 60 holding windows: 60 + 1 + 59."""
    minimum = minimum_rows(model, 60)
    assert minimum == 120
    start = pd.Timestamp("2026-01-01T00:00:00Z")  # before the training data's end, as t_N rows are

    def stamped(count: int) -> list[dict[str, Any]]:
        rows = pooled_rows(count)
        for i, row in enumerate(rows):
            row["timestamp"] = (start + pd.Timedelta(minutes=i)).isoformat()
        return rows

    enough = post(client, {"service": SERVICE, "history": stamped(minimum)}).json()
    assert {r.split(" head-room")[0] for r in head_room_reasons(enough)} == {"cpu", "memory"}
    short = post(client, {"service": SERVICE, "history": stamped(minimum - 1)}).json()
    assert all(not_the_recent_peak(r) for r in head_room_reasons(short)), short["reasons"]
    fewest = model.calibration.horizon_steps + min_recent_windows(60) - 2
    assert head_room_reasons(post(client, {"service": SERVICE, "history": stamped(fewest)}).json()) == []


def test_a_history_too_short_for_any_candidate_is_not_judged(
    client: TestClient, model: ServiceModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below ``recent_rows_needed`` (H + an hour of holding windows - 1 rows) no candidate could answer,
    so the request path does not prepare and judge them (the training-time head-room answers at once);
    from that many rows on it does. At 15 s a row: 240 rows is the first history judged."""
    judged: list[int] = []
    original = ServiceModel.held_requests

    def spy(self: ServiceModel, history: pd.DataFrame, *args: Any, **kwargs: Any) -> Any:
        judged.append(len(history))
        return original(self, history, *args, **kwargs)

    monkeypatch.setattr(ServiceModel, "held_requests", spy)
    needed = model.calibration.horizon_steps + min_recent_windows(model_step_seconds(model)) - 1
    assert needed == 240
    short = post(client, {"service": SERVICE, "history": pooled_rows(needed - 1)})
    assert short.status_code == 200, short.text
    assert judged == [] and head_room_reasons(short.json()) == []
    enough = post(client, {"service": SERVICE, "history": pooled_rows(needed)})
    assert enough.status_code == 200, enough.text
    assert judged == [needed]


# --- the endpoint refuses exactly what the data layer refuses ---------------------------------------

CELL_VALUES: tuple[Any, ...] = (
    0.5,
    -0.5,
    -0.0,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
    None,
    "0.5",
    " 2 ",
    "-1",
    "inf",
    "-inf",
    "Infinity",
    "1e3",
    "",
    "  ",
    "nan",
    "lots",
)


def base_rows() -> list[dict[str, Any]]:
    """Three valid rows of the 18-column schema."""
    rows = []
    for i in range(3):
        row: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS, 0.5)
        row.update(
            timestamp=f"t_{i}",
            experiment_id="exp-1",
            service=SERVICE,
            scenario="browsing",
            replica_count=1,
            load_users=10.0,
            mem_bytes_value=5e7,
        )
        rows.append(row)
    return rows


def refused_by_data_layer(rows: list[dict[str, Any]]) -> bool:
    table = pd.DataFrame.from_records(rows, columns=list(UNIFIED_COLUMNS))
    return any(issue.is_error for issue in validate_table(table, "rows").issues)


class AcceptingBackend:
    """Answers every valid request with 200: only the request validation is under test."""

    async def recommend(self, service: str, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        return [ModelOutcome(200, {"service": service}) for _ in requests]

    async def recommend_batch(self, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        return [ModelOutcome(200, {"service": request.service}) for request in requests]

    async def list_services(self) -> list[ServiceInfo]:
        return []

    async def registry_problem(self) -> str | None:
        return None


@pytest.fixture(scope="module")
def fake_client() -> TestClient:
    return TestClient(create_api(AcceptingBackend()))


@pytest.mark.parametrize("column", [*METRIC_COLUMNS, LOAD_USERS, REPLICA_COUNT])
def test_cell_refused_exactly_when_the_data_layer_refuses_it(fake_client: TestClient, column: str) -> None:
    disagreements = []
    for value in CELL_VALUES:
        rows = base_rows()
        rows[1][column] = value
        expected = refused_by_data_layer(rows)
        response = post(fake_client, {"service": SERVICE, "history": rows})
        refused = response.status_code == 422
        if refused:
            assert f"history[1].{column}" in response.json()["detail"], response.text
        else:
            assert response.status_code == 200, response.text
        if refused != expected:
            disagreements.append(f"{value!r}: endpoint {'refused' if refused else 'accepted'}")
    assert not disagreements, f"{column}: " + "; ".join(disagreements)


@pytest.mark.parametrize(
    "stamps",
    [
        ["t_0", "t_1", "t_2"],
        [" t_5", "t_6 ", "t_9"],
        ["2026-01-01T00:00:00Z", "2026-01-01T00:00:15Z", "2026-01-01T00:00:30"],
        ["2026-01-01 00:00:00", "2026-01-01 00:00:15", "2026-01-01 00:00:30"],
        [1767225600, 1767225615.5, 1767225630],
        ["t_0", "2026-01-01T00:00:15Z", "t_2"],
        ["t_0", "t_0", "t_1"],
        ["t_0", None, "t_2"],
        ["t_0", "", "t_2"],
        ["2026-01-01T00:00:00Z", "soon", "2026-01-01T00:00:30Z"],
        ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z"],
    ],
)
def test_timestamps_refused_exactly_when_the_data_layer_refuses_them(
    fake_client: TestClient, stamps: list[Any]
) -> None:
    rows = base_rows()
    for row, stamp in zip(rows, stamps, strict=True):
        row["timestamp"] = stamp
    response = post(fake_client, {"service": SERVICE, "history": rows})
    assert (response.status_code == 422) == refused_by_data_layer(rows), response.text
    if response.status_code == 422:
        assert "].timestamp" in response.json()["detail"]
