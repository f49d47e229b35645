"""``TrainingConfig``: everything one service's training needs, as a pydantic model Tune can fill.

``fusion_weights`` is Prophet's weight per target (the LSTM gets ``1 - w``); ``fusion="auto"``
chooses it on the validation split instead (by MAE against the next value, or against the peak over
``calibration_horizon_steps`` when that is > 1). ``calibration_horizon_steps`` is how many steps a
served request is held: the conformal head-room covers the peak over that many steps (see
``models.calibration``); ``head_room="relative"`` scales it with the forecast. ``level_member`` adds the last observed value ("naive") as a third
ensemble member, so fusion can anchor on the current level (useful for slow-moving memory);
it needs ``fusion="auto"`` to receive a weight. ``members`` are names in the member registry
(``models.members``); ``member_weights`` (member -> target -> weight) overrides a member's registered
default weight, after ``fusion_weights`` (``weights()`` resolves them). ``peak`` configures the
peak-quantile candidate (``models.peak``: a quantile regression of the usage over the held steps,
offered beside the fused forecast and the recent peak). The floors are the serving policy's
(``recommend.policy``): 10 millicores and 32 MiB by default, 1 / 1 is Kubernetes' smallest unit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mora_platform.models.config import LSTMConfig, ProphetConfig
from mora_platform.models.members import (
    default_members,
    registered_members,
    resolve_weights,
)
from mora_platform.models.peak import PeakQuantileConfig  # issue 16
from mora_platform.recommend.kubernetes import ResourcePolicy
from mora_platform.recommend.types import TARGETS

#: A member name: any name in the member registry (``models.members.register_member``).
MemberName = str
LEVEL_MEMBER = "naive"


def _all_members() -> list[MemberName]:
    return default_members()


class TrainingConfig(BaseModel):
    """One service's training settings (defaults are the platform's)."""

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(default=30, ge=2, le=512, description="LSTM window length (steps)")
    lstm: LSTMConfig = Field(default_factory=LSTMConfig)
    prophet: ProphetConfig = Field(default_factory=ProphetConfig)
    members: list[MemberName] = Field(default_factory=_all_members, min_length=1)
    fusion_weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(TARGETS, 0.4), description="Prophet's weight per target"
    )
    member_weights: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="member -> target -> fusion weight (overrides the defaults)"
    )
    fusion: Literal["fixed", "auto"] = "fixed"
    coverage: float = Field(default=0.95, gt=0.5, lt=1)
    calibration_horizon_steps: int = Field(
        default=1, ge=1, le=100_000, description="steps a request is held; head-room covers their peak"
    )
    head_room: Literal["absolute", "relative"] = Field(
        default="absolute", description="conformal head-room in target units or relative to the forecast"
    )
    level_member: bool = Field(default=False, description="add the last value as a fusion member")
    # --- issue 16: the peak-quantile candidate (models.peak), fitted beside the ensemble ---
    peak: PeakQuantileConfig = Field(
        default_factory=PeakQuantileConfig,
        description="the forecast of the usage over the held steps offered as a request candidate",
    )
    # --- end issue 16 ---
    cpu_floor_millicores: int = Field(default=10, ge=1, description="serving policy's CPU floor")
    memory_floor_mib: int = Field(default=32, ge=1, description="serving policy's memory floor")
    resources: ResourcePolicy = Field(
        default_factory=ResourcePolicy,
        description="how per-pod requests become container requests, limits and replicas",
    )
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    split_by: Literal["rows", "experiments"] = Field(
        default="rows", description="hold out each experiment's last rows, or whole latest experiments"
    )
    test_fraction: float = Field(default=0.15, ge=0, lt=0.5)
    min_rows: int = Field(default=12, ge=3, description="fewer rows than this is unusable data")
    seed: int = 0
    cpu_threads: int = Field(default=1, ge=1, le=256)

    @field_validator("members")
    @classmethod
    def _members(cls, value: list[str]) -> list[str]:
        known = registered_members()
        unknown = [m for m in value if m not in known]
        if unknown:
            raise ValueError(f"unknown member(s) {unknown}; registered: {list(known)}")
        return list(dict.fromkeys(value))

    @field_validator("member_weights")
    @classmethod
    def _member_weights(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        known = registered_members()
        for member, per in value.items():
            if member not in known:
                raise ValueError(f"member_weights: unknown member {member!r}; registered: {list(known)}")
            unknown = sorted(set(per) - set(TARGETS))
            if unknown:
                raise ValueError(f"member_weights.{member}: unknown target(s) {unknown}")
            if any(not w >= 0 for w in per.values()):
                raise ValueError(f"member_weights.{member}: weights must be >= 0, got {per}")
        return {m: {t: float(w) for t, w in per.items()} for m, per in value.items()}

    @field_validator("fusion_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(TARGETS))
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; expected {list(TARGETS)}")
        bad = {t: w for t, w in value.items() if not 0 <= w <= 1}
        if bad:
            raise ValueError(f"weights must be in [0, 1], got {bad}")
        return {t: float(value.get(t, 0.4)) for t in TARGETS}

    @property
    def member_names(self) -> list[str]:
        """The ensemble's members: ``members``, plus the level member when ``level_member``."""
        names = list(self.members)
        if self.level_member and LEVEL_MEMBER not in names:
            names.append(LEVEL_MEMBER)
        return names

    def weights(self) -> dict[str, dict[str, float]]:
        """Per member (``member_names``), per target fusion weights: registered defaults, then the
        legacy ``fusion_weights`` (Prophet ``w``, LSTM ``1 - w``), then ``member_weights``."""
        return resolve_weights(self.member_names, self.fusion_weights, self.member_weights)

    @property
    def effective_seq_len(self) -> int:
        return self.lstm.seq_len or self.seq_len
