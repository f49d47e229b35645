"""Read a Keras 3 ``.keras`` archive's architecture and weights without importing Keras or TensorFlow.

Serving answers with a NumPy forward pass (``models.lstm``), so it needs only the arrays; importing
TensorFlow to get them costs seconds per process. A ``.keras`` file is a zip holding
``config.json`` (the architecture), ``metadata.json`` and ``model.weights.h5``. Keras
(``saving_lib``) stores each layer's variables in the HDF5 file under a group named after the
layer's *class* in snake case, numbered by order of appearance within its container
(``layers/sequential_1/layers/lstm/cell/vars/0``), not after the layer's name; a layer's variables
are ``vars/0``, ``vars/1``, ... in creation order, which is what ``layer.get_weights()`` returns
(for a recurrent layer they live in its ``cell``). ``read_keras_archive`` walks ``config.json``
with that naming rule and returns the tree of layers with their arrays, exactly as stored.

Nothing in the archive is executed or deserialized as code: ``config.json`` is read as plain JSON.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
# A trained LSTM here is tens of KiB to a few MiB; anything beyond this is not one of ours.
MAX_MEMBER_BYTES = 1 << 30
# Classes that hold other layers in ``config["layers"]`` (saved under ``<path>/layers/...``).
CONTAINERS: frozenset[str] = frozenset({"Sequential", "Functional", "Model"})


class KerasArchiveError(ValueError):
    """The archive is not a Keras 3 ``.keras`` file this reader understands."""


@dataclass(frozen=True)
class ArchiveLayer:
    """One layer of the saved model: class, name, its ``config.json`` entry, its weights as
    stored (the dtype of the file, normally float32) and, for a model, its layers in order."""

    class_name: str
    name: str
    config: Mapping[str, Any]
    weights: tuple[np.ndarray, ...] = ()
    layers: tuple[ArchiveLayer, ...] = ()

    def get_layer(self, name: str) -> ArchiveLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KerasArchiveError(f"no layer named {name!r} in {self.name!r}")


def snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``: the group name of a class in the weights file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _member(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise KerasArchiveError(f"{name} missing from the archive") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise KerasArchiveError(f"{name}: {info.file_size} bytes, more than {MAX_MEMBER_BYTES}")
    return archive.read(info)


def _variables(weights: Any, path: str) -> list[np.ndarray]:
    """The datasets ``0``, ``1``, ... of the group ``path`` (none if the group is absent)."""
    group = weights.get(path)
    if group is None:
        return []
    if not hasattr(group, "keys"):
        raise KerasArchiveError(f"{WEIGHTS_MEMBER}: {path} is not a group")
    keys = list(group.keys())
    if any(not key.isdigit() for key in keys):
        raise KerasArchiveError(f"{WEIGHTS_MEMBER}: unexpected entries {sorted(keys)} in {path}")
    ordered = sorted(keys, key=int)
    if [int(k) for k in ordered] != list(range(len(ordered))):
        raise KerasArchiveError(f"{WEIGHTS_MEMBER}: variables {ordered} in {path} are not 0..n-1")
    return [np.asarray(group[key][()]) for key in ordered]


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def _walk(entry: Any, weights: Any, path: str) -> ArchiveLayer:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("class_name"), str):
        raise KerasArchiveError(f"{CONFIG_MEMBER}: malformed layer entry at {path or 'the root'}")
    class_name = str(entry["class_name"])
    config = entry.get("config") or {}
    if not isinstance(config, Mapping):
        raise KerasArchiveError(f"{CONFIG_MEMBER}: malformed config of {class_name} at {path or 'the root'}")
    arrays = _variables(weights, _join(path, "vars"))
    arrays += _variables(weights, _join(path, "cell", "vars"))  # recurrent layers keep theirs in the cell
    children: list[ArchiveLayer] = []
    if class_name in CONTAINERS:
        entries = config.get("layers")
        if not isinstance(entries, list):
            raise KerasArchiveError(f"{CONFIG_MEMBER}: {class_name} at {path or 'the root'} lists no layers")
        used: dict[str, int] = {}
        for child in entries:
            base = snake_case(str(child.get("class_name", ""))) if isinstance(child, Mapping) else ""
            used[base] = used.get(base, -1) + 1
            group = base if used[base] == 0 else f"{base}_{used[base]}"
            children.append(_walk(child, weights, _join(path, "layers", group)))
    return ArchiveLayer(class_name, str(config.get("name", "")), config, tuple(arrays), tuple(children))


def read_keras_archive(path: Path) -> ArchiveLayer:
    """The saved model at ``path`` as a tree of ``ArchiveLayer``; ``KerasArchiveError`` (or the
    ``zipfile`` / ``h5py`` error) when the file is not a readable ``.keras`` archive."""
    import h5py  # a dependency of Keras itself; imported here so importing this module stays cheap

    with zipfile.ZipFile(path) as archive:
        try:
            root = json.loads(_member(archive, CONFIG_MEMBER))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KerasArchiveError(f"{CONFIG_MEMBER}: not valid JSON ({exc})") from exc
        data = _member(archive, WEIGHTS_MEMBER)
    with h5py.File(io.BytesIO(data), "r") as weights:
        return _walk(root, weights, "")
