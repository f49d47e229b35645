"""Reading ``lstm.keras`` without Keras: the same arrays Keras loads, the same answers, bad files refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_frames import synthetic_service_frame

from mora_platform.features import prepare_frame
from mora_platform.features.targets import FEATURE_COLUMNS
from mora_platform.models import ModelLoadError
from mora_platform.models.config import LSTMConfig
from mora_platform.models.keras_archive import read_keras_archive, snake_case
from mora_platform.models.lstm import MODEL_FILE, LSTMForecaster

SEQ_LEN = 6
MULTI = LSTMConfig(units=[6, 4], dense_units=4, epochs=1, patience=1, batch_size=64)
SINGLE = MULTI.model_copy(update={"multi_output": False, "units": [3], "dense_units": 0})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return prepare_frame(synthetic_service_frame(days=1.0, step_seconds=300, seed=7, experiments=2))


@pytest.fixture(scope="module", params=["multi", "single"])
def saved(
    request: pytest.FixtureRequest, frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LSTMForecaster, Path]:
    config = MULTI if request.param == "multi" else SINGLE
    model = LSTMForecaster(config, seq_len=SEQ_LEN, seed=2).fit(frame)
    directory = tmp_path_factory.mktemp(f"lstm-{request.param}")
    model.save(directory)
    return model, directory


def _rewrite(source: Path, target: Path, **members: bytes | None) -> None:
    """Copy a .keras zip, replacing members (None drops one)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            if info.filename in members:
                continue
            dst.writestr(info, src.read(info))
        for name, data in members.items():
            if data is not None:
                dst.writestr(name, data)


def test_snake_case_matches_keras_group_names() -> None:
    assert [snake_case(n) for n in ("LSTM", "Dense", "InputLayer", "Sequential", "Concatenate")] == [
        "lstm",
        "dense",
        "input_layer",
        "sequential",
        "concatenate",
    ]


def test_archive_holds_exactly_the_arrays_keras_has(saved: tuple[LSTMForecaster, Path]) -> None:
    fitted, directory = saved
    root = read_keras_archive(directory / MODEL_FILE)
    assert root.class_name == "Functional" and root.name == "mora_lstm"
    for name in fitted.branches:
        keras_layers = [layer for layer in fitted.model.get_layer(name).layers if layer.get_weights()]
        stored = [layer for layer in root.get_layer(name).layers if layer.weights]
        assert [type(layer).__name__ for layer in keras_layers] == [layer.class_name for layer in stored]
        for keras_layer, layer in zip(keras_layers, stored, strict=True):
            for expected, actual in zip(keras_layer.get_weights(), layer.weights, strict=True):
                assert actual.dtype == expected.dtype
                np.testing.assert_array_equal(actual, expected)


def test_loaded_answers_equal_fitted_and_match_keras(
    saved: tuple[LSTMForecaster, Path], frame: pd.DataFrame
) -> None:
    fitted, directory = saved
    loaded = LSTMForecaster.load(directory)
    assert loaded.model is None  # nothing was loaded with Keras
    x = np.random.default_rng(3).random((5, SEQ_LEN, len(FEATURE_COLUMNS)))
    np.testing.assert_array_equal(loaded.forward(x), fitted.forward(x))
    assert loaded.forecast_next(frame) == fitted.forecast_next(frame)
    # the Keras model is still there on demand, and agrees with the NumPy pass
    np.testing.assert_allclose(loaded.forward(x), loaded.forward(x, engine="keras"), rtol=1e-4, atol=1e-5)


def test_loaded_model_saves_again(saved: tuple[LSTMForecaster, Path], tmp_path: Path) -> None:
    _, directory = saved
    loaded = LSTMForecaster.load(directory)
    loaded.save(tmp_path)
    x = np.random.default_rng(4).random((2, SEQ_LEN, len(FEATURE_COLUMNS)))
    np.testing.assert_array_equal(LSTMForecaster.load(tmp_path).forward(x), loaded.forward(x))


def _copy_bundle(directory: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


@pytest.mark.parametrize("member", ["model.weights.h5", "config.json"])
def test_archive_without_member_is_refused(
    saved: tuple[LSTMForecaster, Path], tmp_path: Path, member: str
) -> None:
    copy = _copy_bundle(saved[1], tmp_path)
    _rewrite(saved[1] / MODEL_FILE, copy / MODEL_FILE, **{member: None})
    with pytest.raises(ModelLoadError, match=rf"lstm\.keras: cannot load .*{member}"):
        LSTMForecaster.load(copy)


def test_unparseable_weights_are_refused(saved: tuple[LSTMForecaster, Path], tmp_path: Path) -> None:
    copy = _copy_bundle(saved[1], tmp_path)
    _rewrite(saved[1] / MODEL_FILE, copy / MODEL_FILE, **{"model.weights.h5": b"not hdf5"})
    with pytest.raises(ModelLoadError, match=r"lstm\.keras"):
        LSTMForecaster.load(copy)


def test_architecture_that_does_not_fit_is_refused(
    saved: tuple[LSTMForecaster, Path], tmp_path: Path
) -> None:
    fitted, directory = saved
    with zipfile.ZipFile(directory / MODEL_FILE) as archive:
        config = json.loads(archive.read("config.json"))
    copy = _copy_bundle(directory, tmp_path)

    wrong_input = json.loads(json.dumps(config))
    wrong_input["config"]["layers"][0]["config"]["batch_shape"] = [None, SEQ_LEN + 1, len(FEATURE_COLUMNS)]
    _rewrite(directory / MODEL_FILE, copy / MODEL_FILE, **{"config.json": json.dumps(wrong_input).encode()})
    with pytest.raises(ModelLoadError, match="input shape"):
        LSTMForecaster.load(copy)

    renamed = json.loads(json.dumps(config))
    for layer in renamed["config"]["layers"]:
        if layer["config"].get("name") == fitted.branches[0]:
            layer["config"]["name"] = "someone_else"
    _rewrite(directory / MODEL_FILE, copy / MODEL_FILE, **{"config.json": json.dumps(renamed).encode()})
    with pytest.raises(ModelLoadError, match=fitted.branches[0]):
        LSTMForecaster.load(copy)

    foreign = json.loads(json.dumps(config))
    branch = next(layer for layer in foreign["config"]["layers"] if layer["class_name"] == "Sequential")
    branch["config"]["layers"].insert(1, {"class_name": "Lambda", "config": {"name": "code"}})
    _rewrite(directory / MODEL_FILE, copy / MODEL_FILE, **{"config.json": json.dumps(foreign).encode()})
    with pytest.raises(ModelLoadError, match="unexpected layer Lambda"):
        LSTMForecaster.load(copy)
