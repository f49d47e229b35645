"""Where the tests find Online Boutique experiment CSVs: the subset shipped in the repository.

``examples/online-boutique/`` (42 real experiments of all 7 services, credited in its README) is what
every test reads by default, so a plain clone with nothing beside it runs the whole suite. Set
``MORA_SHARED_DATA`` to a directory of the same CSVs (the full set of 252 experiments in
``../shared/data/online-boutique``, say) to run the same tests on it; the tests derive every count
from the files they are given, never from a hard-coded size.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = REPO_ROOT / "examples" / "online-boutique"


class DataDirError(RuntimeError):
    """MORA_SHARED_DATA names no directory of Online Boutique CSVs."""


def online_boutique_dir() -> Path:
    """``MORA_SHARED_DATA`` (or its ``online-boutique`` / ``data/online-boutique``) when set, else the shipped subset."""
    configured = os.environ.get("MORA_SHARED_DATA", "").strip()
    if not configured:
        return SHIPPED
    root = Path(configured)
    for candidate in (root, root / "online-boutique", root / "data" / "online-boutique"):
        if candidate.is_dir() and any(candidate.glob("*_replicas_*_users_*.csv")):
            return candidate
    raise DataDirError(f"MORA_SHARED_DATA={configured}: no *_replicas_*_users_*.csv files there")


def experiment_files(directory: Path) -> list[Path]:
    """The experiment CSVs of ``directory``, sorted."""
    return sorted(directory.glob("*_replicas_*_users_*.csv"))


def rows_per_service(directory: Path) -> Counter[str]:
    """Data rows per ``service`` column value, read straight from the CSVs."""
    counts: Counter[str] = Counter()
    for path in experiment_files(directory):
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                counts[row["service"]] += 1
    return counts


def experiments_per_service(directory: Path) -> Counter[str]:
    """Experiment files per service, from the file names (``{service}_{scenario}_replicas_...``)."""
    return Counter(path.name.split("_", 1)[0] for path in experiment_files(directory))
