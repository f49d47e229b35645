"""What a dataset's CPU / memory figures cover: declared per directory or per import, never guessed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from online_boutique import SHIPPED

from mora_platform.data.loaders import DataLoadError, load_path, with_usage_scope
from mora_platform.data.schema import DATASET_METADATA_FILE, USAGE_SCOPE


def test_the_shipped_online_boutique_subset_declares_per_pod_figures() -> None:
    meta = json.loads((SHIPPED / DATASET_METADATA_FILE).read_text())
    assert meta[USAGE_SCOPE] == "pod"
    frame = load_path(SHIPPED).frame
    assert frame[USAGE_SCOPE].eq("pod").all()


def test_an_explicit_scope_wins_and_files_without_metadata_have_none(tmp_path: Path) -> None:
    source = next(SHIPPED.glob("cartservice_*.csv"))
    (tmp_path / source.name).write_bytes(source.read_bytes())
    assert USAGE_SCOPE not in load_path(tmp_path).frame.columns  # no metadata: totals over the pods
    assert load_path(tmp_path, usage_scope="service").frame[USAGE_SCOPE].eq("service").all()
    (tmp_path / DATASET_METADATA_FILE).write_text(json.dumps({"usage_scope": "pod"}))
    assert load_path(tmp_path).frame[USAGE_SCOPE].eq("pod").all()
    assert load_path(tmp_path, usage_scope="service").frame[USAGE_SCOPE].eq("service").all()


def test_bad_metadata_and_scopes_are_refused_by_name(tmp_path: Path) -> None:
    source = next(SHIPPED.glob("cartservice_*.csv"))
    (tmp_path / source.name).write_bytes(source.read_bytes())
    (tmp_path / DATASET_METADATA_FILE).write_text(json.dumps({"usage_scopes": "pod"}))
    with pytest.raises(DataLoadError, match=r"unknown key.*usage_scopes"):
        load_path(tmp_path)
    (tmp_path / DATASET_METADATA_FILE).write_text("{not json")
    with pytest.raises(DataLoadError, match=DATASET_METADATA_FILE):
        load_path(tmp_path)
    with pytest.raises(DataLoadError, match="usage_scope must be one of"):
        with_usage_scope(load_path(tmp_path / source.name).frame, "cluster")
