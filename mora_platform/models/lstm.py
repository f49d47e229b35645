"""LSTM member (Keras 3 / TensorFlow): one-step-ahead forecast of the three targets.

Inputs: windows of ``seq_len`` steps x 14 min-max-scaled features (scaler fitted on the training
rows only), built inside one experiment. Default architecture (the seed's):
LSTM 64 -> Dropout 0.2 -> LSTM 32 -> Dropout 0.2 -> Dense 16 relu -> Dense out, Adam,
EarlyStopping(restore_best_weights) and ReduceLROnPlateau on the last ``validation_fraction``
of each series' windows (time-ordered, not a random 20%). ``multi_output=True`` trains one
network with 3 outputs; ``False`` trains one network per target (the seed), combined into one
saved model with 3 outputs. Files: ``lstm.keras`` (no optimizer state) and ``scaler.json``.

Inference runs a NumPy forward pass over the saved weights (dropout is inactive at inference),
checked against ``model(x, training=False)``; it answers one window in well under a millisecond.
Loading reads those weights straight from ``lstm.keras`` (``models.keras_archive``: zip + HDF5,
nothing executed, no Keras), so loading and answering never import TensorFlow; the Keras model
itself is loaded (``safe_mode=True``) only on demand: ``keras_model()``, ``forward(engine="keras")``.

An ``EpochHook`` (Ray Tune's trials use one) is called after the epochs it names with a predict
function over the weights of that moment, so one fit serves every intermediate report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np
import pandas as pd

from mora_platform.data.schema import EXPERIMENT_ID
from mora_platform.features.scaling import MinMaxScaler
from mora_platform.features.targets import FEATURE_COLUMNS, feature_matrix, target_matrix
from mora_platform.features.windows import build_windows
from mora_platform.models.base import Forecaster, ModelError, ModelLoadError, read_json, write_json
from mora_platform.models.config import LSTMConfig
from mora_platform.models.keras_archive import ArchiveLayer, read_keras_archive
from mora_platform.models.tf_runtime import (
    configure_tensorflow,
    custom_gradient_names,
    forget_custom_gradients,
)
from mora_platform.recommend.types import TARGETS

MODEL_FILE = "lstm.keras"
SCALER_FILE = "scaler.json"
SCALER_FORMAT = 1
DENSE_ACTIVATIONS: frozenset[str] = frozenset({"relu", "linear", "None"})


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def _lstm_forward(
    x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray, sequences: bool
) -> np.ndarray:
    """Keras LSTM (gates i, f, c, o; tanh / sigmoid) over (batch, time, features)."""
    batch, steps, _ = x.shape
    u = recurrent.shape[0]
    projected = x @ kernel + bias
    h = np.zeros((batch, u))
    c = np.zeros((batch, u))
    outputs = []
    for t in range(steps):
        z = projected[:, t] + h @ recurrent
        i, f = _sigmoid(z[:, :u]), _sigmoid(z[:, u : 2 * u])
        g, o = np.tanh(z[:, 2 * u : 3 * u]), _sigmoid(z[:, 3 * u :])
        c = f * c + i * g
        h = o * np.tanh(c)
        if sequences:
            outputs.append(h)
    return np.stack(outputs, axis=1) if sequences else h


class EpochHook(Protocol):
    """Called after each epoch (1-based) in ``epochs`` with a predict function (frame -> targets)
    over the network's weights at that moment. Only for a single network (``multi_output``)."""

    @property
    def epochs(self) -> Collection[int]: ...

    def __call__(self, epoch: int, predict: Callable[[pd.DataFrame], pd.DataFrame]) -> None: ...


class LSTMForecaster(Forecaster):
    """Keras LSTM over windows of the 14 scaled features; see the module docstring."""

    name = "lstm"

    def __init__(
        self,
        config: LSTMConfig | None = None,
        seq_len: int = 30,
        seed: int = 0,
        cpu_threads: int = 1,
        epoch_hook: EpochHook | None = None,
    ) -> None:
        super().__init__()
        self.epoch_hook = epoch_hook
        self.config = config or LSTMConfig()
        self.seq_len = self.config.seq_len or seq_len
        self.seed = seed
        self.cpu_threads = cpu_threads
        self.feature_scaler: MinMaxScaler | None = None
        self.target_scaler: MinMaxScaler | None = None
        self.model: Any = None
        self._model_path: Path | None = None  # where a loaded model's Keras file is (see keras_model)
        self.branches: list[str] = []
        self.training: dict[str, Any] = {}
        self._layers: list[list[tuple[str, tuple[np.ndarray, ...], str]]] = []

    # ---- network ---------------------------------------------------------------------------
    def _branch(self, keras: Any, outputs: int, name: str) -> Any:
        cfg = self.config
        layers: list[Any] = [keras.Input(shape=(self.seq_len, len(FEATURE_COLUMNS)))]
        for k, units in enumerate(cfg.units):
            layers.append(keras.layers.LSTM(units, return_sequences=k < len(cfg.units) - 1))
            layers.append(keras.layers.Dropout(cfg.dropout))
        if cfg.dense_units:
            layers.append(keras.layers.Dense(cfg.dense_units, activation="relu"))
        layers.append(keras.layers.Dense(outputs))
        return keras.Sequential(layers, name=name)

    def _fit(self, frame: pd.DataFrame) -> None:
        features, targets = feature_matrix(frame), target_matrix(frame)
        self.feature_scaler = MinMaxScaler.fit(features, FEATURE_COLUMNS)
        self.target_scaler = MinMaxScaler.fit(targets, TARGETS)
        experiments = frame[EXPERIMENT_ID].to_numpy()
        windows = build_windows(
            self.feature_scaler.transform(features),
            self.target_scaler.transform(targets),
            experiments,
            self.seq_len,
        )
        if len(windows) < 2:
            raise ModelError(
                f"lstm: {len(windows)} training window(s) of {self.seq_len} steps; "
                f"experiments need more than {self.seq_len} training rows"
            )
        holdout = self._holdout_mask(experiments[windows.rows])
        x_tr, y_tr = windows.x[~holdout], windows.y[~holdout]
        x_va, y_va = windows.x[holdout], windows.y[holdout]
        configure_tensorflow(self.cpu_threads, self.seed)
        import keras

        gradients_before = custom_gradient_names()

        cfg = self.config
        monitor = "val_loss" if len(x_va) else "loss"
        groups = [list(range(len(TARGETS)))] if cfg.multi_output else [[k] for k in range(len(TARGETS))]
        self.branches = ["branch_all"] if cfg.multi_output else [f"branch_{t}" for t in TARGETS]
        trained, started, epochs = [], time.perf_counter(), []
        for name, cols in zip(self.branches, groups, strict=True):
            net = self._branch(keras, len(cols), name)
            net.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate), loss="mse")
            callbacks = [
                keras.callbacks.EarlyStopping(
                    monitor=monitor, patience=cfg.patience, restore_best_weights=True
                ),
                keras.callbacks.ReduceLROnPlateau(
                    monitor=monitor, factor=0.5, patience=cfg.lr_patience, min_lr=1e-5
                ),
            ]
            hook = self.epoch_hook
            if hook is not None and len(groups) == 1:
                callbacks.append(
                    keras.callbacks.LambdaCallback(
                        on_epoch_end=lambda epoch, logs, net=net, hook=hook: self._at_epoch(
                            keras, net, groups, epoch + 1, hook
                        )
                    )
                )
            history = net.fit(
                x_tr.astype("float32"),
                y_tr[:, cols].astype("float32"),
                validation_data=(x_va.astype("float32"), y_va[:, cols].astype("float32"))
                if len(x_va)
                else None,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                callbacks=callbacks,
                shuffle=True,
                verbose=0,
            )
            epochs.append(len(history.history["loss"]))
            trained.append(net)
        self._assemble(keras, trained, groups)
        del trained
        # the training networks are gone (the kept one is a clean copy): drop their traced graphs
        forget_custom_gradients(gradients_before)
        self.training = {
            "windows_train": len(x_tr),
            "windows_validation": len(x_va),
            "epochs": epochs,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def _assemble(self, keras: Any, trained: list[Any], groups: list[list[int]]) -> None:
        """The saved model from the trained networks, and its NumPy weights for inference."""
        # Fresh, uncompiled copies: the saved model then carries no optimizer state (a third of the size).
        inference = []
        for name, net, cols in zip(self.branches, trained, groups, strict=True):
            clean = self._branch(keras, len(cols), name)
            clean.set_weights(net.get_weights())
            inference.append(clean)
        inputs = keras.Input(shape=(self.seq_len, len(FEATURE_COLUMNS)), name="window")
        outs = [net(inputs) for net in inference]
        output = outs[0] if len(outs) == 1 else keras.layers.Concatenate(name="targets")(outs)
        self.model = keras.Model(inputs, output, name="mora_lstm")
        self._extract_weights()

    def _at_epoch(self, keras: Any, net: Any, groups: list[list[int]], epoch: int, hook: EpochHook) -> None:
        if epoch in hook.epochs:
            self._assemble(keras, [net], groups)
            hook(epoch, self._predict)

    def _holdout_mask(self, window_experiments: np.ndarray) -> np.ndarray:
        """Last ``validation_fraction`` of each experiment's windows (time-ordered)."""
        labels = pd.Series(window_experiments)
        position = labels.groupby(labels, sort=False).cumcount().to_numpy()
        count = labels.groupby(labels, sort=False).transform("size").to_numpy()
        n_hold = np.floor(count * self.config.validation_fraction).astype(int)
        n_hold = np.where(count >= 2, np.maximum(n_hold, 1), 0)
        return position >= count - n_hold

    def _extract_weights(self) -> None:
        """Copy the in-memory network's weights into NumPy for the fast forward pass."""
        self._layers = [
            _numpy_stack(
                name,
                [
                    (type(layer).__name__, layer.name, layer.get_config(), layer.get_weights())
                    for layer in self.model.get_layer(name).layers
                ],
            )
            for name in self.branches
        ]

    def _weights_from_archive(self, root: ArchiveLayer) -> None:
        """The forward pass's weights from the saved file as read by ``read_keras_archive``:
        the same float32 arrays Keras would load, so the answers are identical."""
        inputs = [layer for layer in root.layers if layer.class_name == "InputLayer"]
        shape = (
            inputs[0].config.get("batch_shape", inputs[0].config.get("batch_input_shape")) if inputs else None
        )
        expected_in = [None, self.seq_len, len(FEATURE_COLUMNS)]
        if shape is None or list(shape) != expected_in:
            raise ModelLoadError(f"{MODEL_FILE}: input shape {shape} does not match {tuple(expected_in)}")
        layers = []
        for name in self.branches:
            try:
                branch = root.get_layer(name)
            except ValueError as exc:
                raise ModelLoadError(f"{MODEL_FILE}: {exc}") from exc
            layers.append(
                _numpy_stack(
                    name,
                    [(layer.class_name, layer.name, layer.config, layer.weights) for layer in branch.layers],
                )
            )
        self._layers = layers
        try:
            out = self.forward(np.zeros((1, self.seq_len, len(FEATURE_COLUMNS))))
        except (ValueError, ModelError) as exc:  # weight shapes that do not chain
            raise ModelLoadError(f"{MODEL_FILE}: weights do not fit together ({exc})") from exc
        if out.shape != (1, len(TARGETS)):
            raise ModelLoadError(f"{MODEL_FILE}: {out.shape[1]} outputs, expected {len(TARGETS)}")

    def keras_model(self) -> Any:
        """The Keras model (imports TensorFlow): the trained one, or a loaded one read on first use."""
        if self.model is None:
            if self._model_path is None:
                raise ModelError("lstm: no Keras model (not fitted or loaded)")
            configure_tensorflow(self.cpu_threads)
            import keras

            try:
                self.model = keras.saving.load_model(self._model_path, compile=False, safe_mode=True)
            except Exception as exc:  # Keras raises many types for a bad archive
                raise ModelLoadError(f"{MODEL_FILE}: cannot load ({type(exc).__name__}: {exc})") from exc
        return self.model

    # ---- asking ------------------------------------------------------------------------------
    def forward(self, x: np.ndarray, engine: str = "numpy") -> np.ndarray:
        """Scaled outputs (batch, 3) for scaled windows ``x`` (batch, seq_len, 14)."""
        if engine == "keras":
            return np.asarray(self.keras_model()(x.astype("float32"), training=False), dtype="float64")
        return np.concatenate(
            [run_stack(np.asarray(x, dtype="float64"), stack) for stack in self._layers], axis=1
        )

    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        assert self.feature_scaler is not None and self.target_scaler is not None
        out = pd.DataFrame(np.nan, index=frame.index, columns=list(TARGETS), dtype="float64")
        windows = build_windows(
            self.feature_scaler.transform(feature_matrix(frame)),
            np.zeros((len(frame), len(TARGETS))),
            frame[EXPERIMENT_ID].to_numpy(),
            self.seq_len,
        )
        if len(windows):
            values = self.target_scaler.inverse(self.forward(windows.x))
            out.iloc[windows.rows] = values
        return out

    def _forecast_next(self, history: pd.DataFrame, context: dict[str, float | str]) -> dict[str, float]:
        assert self.feature_scaler is not None and self.target_scaler is not None
        experiments = history[EXPERIMENT_ID].to_numpy()
        tail = history[experiments == experiments[-1]].tail(self.seq_len)
        if len(tail) < self.seq_len:
            return dict.fromkeys(TARGETS, float("nan"))
        x = self.feature_scaler.transform(feature_matrix(tail))[None, :, :]
        values = self.target_scaler.inverse(self.forward(x))[0]
        return {t: float(v) for t, v in zip(TARGETS, values, strict=True)}

    # ---- persistence ------------------------------------------------------------------------
    def _save(self, directory: Path) -> list[str]:
        assert self.feature_scaler is not None and self.target_scaler is not None
        self.keras_model().save(directory / MODEL_FILE)  # a loaded model is read from its file first
        meta = {
            "format": SCALER_FORMAT,
            "seq_len": self.seq_len,
            "branches": self.branches,
            "config": self.config.model_dump(),
            "features": self.feature_scaler.to_dict(),
            "targets": self.target_scaler.to_dict(),
            "training": self.training,
        }
        return [MODEL_FILE, write_json(directory / SCALER_FILE, meta)]

    @classmethod
    def _load(cls, directory: Path, cpu_threads: int = 1) -> Self:
        meta = read_json(directory / SCALER_FILE)
        try:
            if meta["format"] != SCALER_FORMAT:
                raise ValueError(f"unsupported format {meta['format']!r}")
            model = cls(
                LSTMConfig.model_validate(meta["config"]), int(meta["seq_len"]), cpu_threads=cpu_threads
            )
            model.seq_len = int(meta["seq_len"])
            model.branches = [str(b) for b in meta["branches"]]
            model.feature_scaler = MinMaxScaler.from_dict(meta["features"])
            model.target_scaler = MinMaxScaler.from_dict(meta["targets"])
            model.training = dict(meta.get("training", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{SCALER_FILE}: malformed ({exc})") from exc
        path = directory / MODEL_FILE
        if not path.is_file():
            raise ModelLoadError(f"{MODEL_FILE}: file missing in {directory}")
        try:
            root = read_keras_archive(path)  # no Keras / TensorFlow: see models.keras_archive
        except Exception as exc:  # zipfile, h5py and the reader raise many types for a bad archive
            raise ModelLoadError(f"{MODEL_FILE}: cannot load ({type(exc).__name__}: {exc})") from exc
        model._weights_from_archive(root)
        model._model_path = path
        return model


def run_stack(h: np.ndarray, stack: Sequence[tuple[str, tuple[np.ndarray, ...], str]]) -> np.ndarray:
    """One branch's forward pass (``_numpy_stack``'s steps) over a batch ``h``."""
    for kind, weights, extra in stack:
        if kind == "lstm":
            h = _lstm_forward(h, weights[0], weights[1], weights[2], extra == "seq")
        else:
            h = h @ weights[0] + weights[1]
            if extra == "relu":
                h = np.maximum(h, 0.0)
            elif extra not in ("linear", "None"):
                raise ModelError(f"lstm: unsupported dense activation {extra}")
    return h


def _numpy_stack(
    branch: str, layers: list[tuple[str, str, Mapping[str, Any], Sequence[Any]]]
) -> list[tuple[str, tuple[np.ndarray, ...], str]]:
    """One branch's layers, each (class name, layer name, config, weights), as the forward pass's
    ``(kind, float64 weights, extra)`` steps: dropout and input layers are skipped (inactive at
    inference); anything but a tanh/sigmoid LSTM or a relu/linear Dense is refused."""
    stack: list[tuple[str, tuple[np.ndarray, ...], str]] = []
    for kind, name, cfg, weights in layers:
        arrays = tuple(np.asarray(w, dtype="float64") for w in weights)
        if kind == "LSTM":
            if cfg.get("activation") != "tanh" or cfg.get("recurrent_activation") != "sigmoid":
                raise ModelLoadError(f"{MODEL_FILE}: unsupported LSTM activations in {name}")
            if cfg.get("go_backwards") or not cfg.get("use_bias", True) or len(arrays) != 3:
                raise ModelLoadError(
                    f"{MODEL_FILE}: unsupported LSTM set-up in {name} ({len(arrays)} arrays)"
                )
            stack.append(("lstm", arrays, "seq" if cfg.get("return_sequences") else "last"))
        elif kind == "Dense":
            activation = str(cfg.get("activation"))
            if activation not in DENSE_ACTIVATIONS or len(arrays) != 2:
                raise ModelLoadError(
                    f"{MODEL_FILE}: unsupported Dense in {name} (activation {activation}, {len(arrays)} arrays)"
                )
            stack.append(("dense", arrays, activation))
        elif kind in ("Dropout", "InputLayer"):
            continue
        else:
            raise ModelLoadError(f"{MODEL_FILE}: unexpected layer {kind} in {branch}")
    return stack
