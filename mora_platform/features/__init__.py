"""Features for the forecasters: targets, model features, scaling, splits and windows (pure).

Every function here takes a canonical loaded frame (``UNIFIED_COLUMNS`` + ``step``) for one
service and never crosses an experiment boundary when it looks at neighbouring rows.
"""

from __future__ import annotations

from mora_platform.features.scaling import MinMaxScaler
from mora_platform.features.split import SPLIT_COLUMN, Split, split_frame
from mora_platform.features.targets import (
    FEATURE_COLUMNS,
    SCENARIO_CODE,
    TARGET_COLUMNS,
    prepare_frame,
)
from mora_platform.features.windows import WindowSet, build_windows

__all__ = [
    "FEATURE_COLUMNS",
    "SCENARIO_CODE",
    "SPLIT_COLUMN",
    "TARGET_COLUMNS",
    "MinMaxScaler",
    "Split",
    "WindowSet",
    "build_windows",
    "prepare_frame",
    "split_frame",
]
