"""Fixtures of the data-layer unit tests: Online Boutique experiments (shipped subset), loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from online_boutique import DataDirError, online_boutique_dir

from mora_platform.data.cleaning import clean_frame
from mora_platform.data.loaders import LoadResult, load_path


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The Online Boutique CSVs: the subset in examples/ (or MORA_SHARED_DATA when set)."""
    try:
        return online_boutique_dir()
    except DataDirError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def shared_raw(shared_data_dir: Path) -> LoadResult:
    """The shared data loaded without cleaning (values exactly as shipped)."""
    return load_path(shared_data_dir, clean=False)


@pytest.fixture(scope="session")
def shared_clean(shared_raw: LoadResult) -> pd.DataFrame:
    """The shared data after `clean_frame` (what `load_path(..., clean=True)` returns)."""
    return clean_frame(shared_raw.frame)
