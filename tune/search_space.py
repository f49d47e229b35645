"""The Tune search space for one service: LSTM architecture and training, and the fusion weight.

A trial's config is flat (``lstm_layers``, ``lstm_units_1``, ``dropout``, ...); ``trial_to_config``
turns it into a nested ``TrainingConfig`` dict layered over a base config. The bounds are a
pydantic model so a tiny search (tests, demos) is the same code with narrower lists.

Fusion weights: ``fusion_weight`` is the legacy pair's (Prophet ``w``, LSTM ``1 - w``; written as
``fusion_weights``); ``member_weights`` searches the weight of any other registered member
(``models.members``) in the base config, as ``weight_{member}`` (written as ``member_weights``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mora_platform.recommend.types import TARGETS

#: Name of the metric every trial reports (lower is better).
METRIC = "val_fused_nmae"
MODE = "min"
#: Trial key of a searched member weight: ``weight_{member}``.
WEIGHT_PREFIX = "weight_"


class SearchBounds(BaseModel):
    """Choices and ranges searched per service (defaults: a modest search for a 2-core box)."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] = Field(default_factory=lambda: [1, 2], description="number of LSTM layers")
    units: list[int] = Field(default_factory=lambda: [16, 32, 64], description="units per layer")
    dropout: tuple[float, float] = (0.0, 0.4)
    learning_rate: tuple[float, float] = (1e-4, 1e-2)
    seq_len: list[int] = Field(default_factory=lambda: [12, 24, 30, 48])
    batch_size: list[int] = Field(default_factory=lambda: [32, 64, 128])
    fusion_weight: tuple[float, float] = Field(
        default=(0.1, 0.9), description="Prophet's weight; the LSTM gets 1 - w"
    )
    member_weights: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="member -> weight range searched (members beyond Prophet / LSTM)"
    )
    max_epochs: int = Field(default=20, ge=1, description="epochs of the longest trial (ASHA's max_t)")

    @model_validator(mode="after")
    def _check(self) -> SearchBounds:
        for name in ("layers", "units", "seq_len", "batch_size"):
            values = getattr(self, name)
            if not values or any(v < 1 for v in values):
                raise ValueError(
                    f"search bounds: {name} must be a non-empty list of positive ints, got {values}"
                )
        for name in ("dropout", "learning_rate", "fusion_weight"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"search bounds: {name} low {low} > high {high}")
        if not (self.dropout[0] >= 0 and self.dropout[1] < 1):
            raise ValueError(f"search bounds: dropout must lie in [0, 1), got {self.dropout}")
        if not (self.fusion_weight[0] >= 0 and self.fusion_weight[1] <= 1):
            raise ValueError(f"search bounds: fusion_weight must lie in [0, 1], got {self.fusion_weight}")
        from mora_platform.models.members import LEGACY_PAIR, registered_members

        known = registered_members()
        for member, (low, high) in self.member_weights.items():
            if member not in known or member in LEGACY_PAIR:
                raise ValueError(
                    f"search bounds: member_weights: {member!r} is not a registered member beyond "
                    f"{'/'.join(LEGACY_PAIR)} (those take fusion_weight)"
                )
            if not 0 <= low <= high:
                raise ValueError(f"search bounds: member_weights.{member} must be 0 <= low <= high")
        if self.learning_rate[0] <= 0:
            raise ValueError(f"search bounds: learning_rate must be > 0, got {self.learning_rate}")
        return self

    @classmethod
    def tiny(cls) -> SearchBounds:
        """A search small enough for tests: tiny networks, short windows, 2 epochs."""
        return cls(layers=[1], units=[4, 8], seq_len=[6, 8], batch_size=[32, 64], max_epochs=2)


def param_space(bounds: SearchBounds) -> dict[str, Any]:
    """The Tune ``param_space`` for ``bounds`` (Ray imported here, not at module import)."""
    from ray import tune

    space: dict[str, Any] = {
        "lstm_layers": tune.choice(bounds.layers),
        "dropout": _uniform(tune, bounds.dropout),
        "learning_rate": _loguniform(tune, bounds.learning_rate),
        "seq_len": tune.choice(bounds.seq_len),
        "batch_size": tune.choice(bounds.batch_size),
        "fusion_weight": _uniform(tune, bounds.fusion_weight),
    }
    for layer in range(1, max(bounds.layers) + 1):
        space[f"lstm_units_{layer}"] = tune.choice(bounds.units)
    for member, weight_bounds in bounds.member_weights.items():
        space[f"{WEIGHT_PREFIX}{member}"] = _uniform(tune, weight_bounds)
    return space


def _uniform(tune: Any, bounds: tuple[float, float]) -> Any:
    low, high = bounds
    return low if low == high else tune.uniform(low, high)


def _loguniform(tune: Any, bounds: tuple[float, float]) -> Any:
    low, high = bounds
    return low if low == high else tune.loguniform(low, high)


def trial_to_config(
    trial: dict[str, Any], base: dict[str, Any] | None = None, epochs: int | None = None
) -> dict[str, Any]:
    """Nested ``TrainingConfig`` fields for a flat trial config, layered over ``base``.

    Layer sizes decrease with depth as the seed's did: layer k takes ``min(units_k, units_{k-1})``.
    """
    base = dict(base or {})
    layers = int(trial["lstm_layers"])
    units: list[int] = []
    for layer in range(1, layers + 1):
        size = int(trial.get(f"lstm_units_{layer}", trial.get("lstm_units_1", 32)))
        units.append(min(size, units[-1]) if units else size)
    lstm = dict(base.get("lstm") or {})
    lstm.update(
        {
            "units": units,
            "dropout": round(float(trial["dropout"]), 4),
            "learning_rate": float(trial["learning_rate"]),
            "batch_size": int(trial["batch_size"]),
            "seq_len": None,
        }
    )
    if epochs is not None:
        lstm["epochs"] = int(epochs)
    weight = round(float(trial["fusion_weight"]), 4)
    config = {
        **base,
        "seq_len": int(trial["seq_len"]),
        "lstm": lstm,
        "fusion_weights": dict.fromkeys(TARGETS, weight),
    }
    searched = {
        key[len(WEIGHT_PREFIX) :]: dict.fromkeys(TARGETS, round(float(value), 4))
        for key, value in trial.items()
        if key.startswith(WEIGHT_PREFIX)
    }
    if searched:
        config["member_weights"] = {**dict(base.get("member_weights") or {}), **searched}
    return config
