"""Fixtures of the data-layer unit tests: the shared Online Boutique data, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from mora_platform.data.cleaning import clean_frame
from mora_platform.data.loaders import LoadResult, load_path

REPO_ROOT = Path(__file__).resolve().parents[3]


def _candidates() -> list[Path]:
    found: list[Path] = []
    env = os.environ.get("MORA_SHARED_DATA")
    if env:
        root = Path(env)
        found += [root, root / "online-boutique", root / "data" / "online-boutique"]
    found.append(REPO_ROOT.parent / "shared" / "data" / "online-boutique")
    return found


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The Online Boutique CSVs (env MORA_SHARED_DATA, else <repo>/../shared/data/online-boutique)."""
    for candidate in _candidates():
        if candidate.is_dir() and any(candidate.glob("*_replicas_*_users_*.csv")):
            return candidate
    tried = ", ".join(str(c) for c in _candidates())
    pytest.fail(f"Online Boutique data not found (tried {tried}); set MORA_SHARED_DATA to its directory")


@pytest.fixture(scope="session")
def shared_raw(shared_data_dir: Path) -> LoadResult:
    """The shared data loaded without cleaning (values exactly as shipped)."""
    return load_path(shared_data_dir, clean=False)


@pytest.fixture(scope="session")
def shared_clean(shared_raw: LoadResult) -> pd.DataFrame:
    """The shared data after `clean_frame` (what `load_path(..., clean=True)` returns)."""
    return clean_frame(shared_raw.frame)
