"""The member registry: every forecaster an ensemble can hold, by name, in one place.

A member is one ``Forecaster`` subclass plus one ``register_member`` call saying how it is built
from a ``TrainingConfig`` (``build``), which files its ``save`` writes into a bundle (``files``,
glob patterns: a retrain removes stale ones) and its default fusion weight (``default_weight``,
the same for every target; the fusion normalises over the members that answered, so weights need
not sum to 1). ``default=True`` puts it in ``TrainingConfig.members`` by default. Loading uses the
class's own ``load`` (``Forecaster.load``). The trainer, the ensemble's load, the fusion weights
and Tune read this registry; ``TrainingConfig`` validates member names against it.

Built-in members: ``prophet`` (0.4) and ``lstm`` (0.6), the default pair; ``naive`` (the last value,
weight 0: the level member ``fusion="auto"`` may raise) and ``percentile`` (a fixed level).

Legacy weights: ``TrainingConfig.fusion_weights`` is Prophet's weight ``w`` per target, the LSTM
getting ``1 - w`` (``LEGACY_PAIR``); ``resolve_weights`` turns it into per-member weights, so old
configs keep their meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mora_platform.models.base import Forecaster
from mora_platform.models.baselines import LastValueForecaster, PercentileForecaster
from mora_platform.models.lstm import LSTMForecaster
from mora_platform.models.prophet_model import ProphetForecaster
from mora_platform.recommend.types import TARGETS

if TYPE_CHECKING:
    from mora_platform.training.config import TrainingConfig

#: ``fusion_weights`` (legacy) is the first member's weight, the second gets ``1 - w``.
LEGACY_PAIR: tuple[str, str] = ("prophet", "lstm")


@dataclass(frozen=True)
class MemberSpec:
    """One registered member: its class, how it is built, its bundle files and default weight."""

    name: str
    forecaster: type[Forecaster]
    build: Callable[[TrainingConfig], Forecaster]
    files: tuple[str, ...]
    default_weight: float = 1.0
    default: bool = False

    def load(self, directory: Any) -> Forecaster:
        """The fitted member from a bundle directory (its class's ``load``)."""
        return self.forecaster.load(directory)


_REGISTRY: dict[str, MemberSpec] = {}


def register_member(
    name: str,
    forecaster: type[Forecaster],
    *,
    build: Callable[[TrainingConfig], Forecaster] | None = None,
    files: Iterable[str] = (),
    default_weight: float = 1.0,
    default: bool = False,
    replace: bool = False,
) -> MemberSpec:
    """Register ``forecaster`` under ``name`` (``build`` defaults to ``forecaster()``).

    ``files`` are glob patterns of what its ``save`` writes; ``replace`` allows re-registering a
    name (otherwise ``ValueError``). Returns the spec.
    """
    if not name or "+" in name or name == "fused":
        raise ValueError(f"member name {name!r} is not allowed (non-empty, no '+', not 'fused')")
    if name in _REGISTRY and not replace:
        raise ValueError(f"member {name!r} is already registered")
    if not (isinstance(forecaster, type) and issubclass(forecaster, Forecaster)):
        raise TypeError(f"member {name!r}: {forecaster!r} is not a Forecaster subclass")
    if float(default_weight) < 0:
        raise ValueError(f"member {name!r}: default_weight must be >= 0, got {default_weight}")
    spec = MemberSpec(
        name=name,
        forecaster=forecaster,
        build=build or (lambda _config: forecaster()),
        files=tuple(files),
        default_weight=float(default_weight),
        default=default,
    )
    _REGISTRY[name] = spec
    return spec


def unregister_member(name: str) -> None:
    """Remove a registration (tests; a bundle naming it no longer loads)."""
    _REGISTRY.pop(name, None)


def registered_members() -> dict[str, MemberSpec]:
    """Name -> spec, in registration order."""
    return dict(_REGISTRY)


def member_spec(name: str) -> MemberSpec:
    """The spec of ``name``; ``ValueError`` naming the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown member {name!r}; registered: {', '.join(_REGISTRY)}") from None


def member_types() -> dict[str, type[Forecaster]]:
    """Member name -> class (what ``EnsembleForecaster.load`` rebuilds)."""
    return {name: spec.forecaster for name, spec in _REGISTRY.items()}


def default_members() -> list[str]:
    """The members a ``TrainingConfig`` trains unless told otherwise."""
    return [name for name, spec in _REGISTRY.items() if spec.default]


def member_file_patterns() -> tuple[str, ...]:
    """Glob patterns of every registered member's files (plus ``ensemble.json`` by the ensemble)."""
    return tuple(dict.fromkeys(p for spec in _REGISTRY.values() for p in spec.files))


def build_members(config: TrainingConfig, names: Iterable[str]) -> dict[str, Forecaster]:
    """Unfitted members ``names`` built from ``config``."""
    return {name: member_spec(name).build(config) for name in names}


def resolve_weights(
    names: Iterable[str],
    prophet_weight: Mapping[str, float] | None = None,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-member, per-target fusion weights for ``names``.

    Each member starts at its registered ``default_weight``; the legacy ``prophet_weight`` (per
    target) then sets the ``LEGACY_PAIR`` to ``w`` and ``1 - w``; ``overrides`` (member -> target
    -> weight) come last.
    """
    weights = {n: dict.fromkeys(TARGETS, member_spec(n).default_weight) for n in names}
    if prophet_weight is not None:
        first, second = LEGACY_PAIR
        for t in TARGETS:
            w = float(prophet_weight.get(t, member_spec(first).default_weight))
            if first in weights:
                weights[first][t] = w
            if second in weights:
                weights[second][t] = 1.0 - w
    for name, per in (overrides or {}).items():
        if name in weights:
            weights[name].update({t: float(w) for t, w in per.items()})
    return weights


def legacy_prophet_weight(weights: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The ``LEGACY_PAIR``'s first member's weight per target (what ``fusion_weights`` records), or {}."""
    return {t: float(w) for t, w in weights.get(LEGACY_PAIR[0], {}).items()}


register_member(
    "prophet",
    ProphetForecaster,
    build=lambda config: ProphetForecaster(config.prophet),
    files=("prophet_*.json", "percentile_*.json"),
    default_weight=0.4,
    default=True,
)
register_member(
    "lstm",
    LSTMForecaster,
    build=lambda config: LSTMForecaster(config.lstm, config.seq_len, config.seed, config.cpu_threads),
    files=("lstm.keras", "scaler.json"),
    default_weight=0.6,
    default=True,
)
register_member("naive", LastValueForecaster, files=("naive.json",), default_weight=0.0)
register_member("percentile", PercentileForecaster, files=("percentile_*.json",), default_weight=1.0)
