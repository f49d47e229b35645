"""Request recommenders behind one interface: the peers' algorithms (VPA, KRR, Crane) and two simple rules.

Every recommender answers one question at one origin: given only the usage *before* the origin,
what request (cores or bytes) should hold for the next horizon? The answer is split in two so the
backtest can sweep the safety margin without recomputing anything:

    request = max(base * margin, floor), rounded up to the method's quantum (if any)

``Recommender.suggest`` returns the unmargined ``base`` (plus an optional point forecast);
``Recommender.apply_margin`` turns it into a request. Baselines are stateless per origin.

Definitions implemented here (deviations from the peers' code are noted):

- ``vpa``: the Kubernetes VPA recommender's target. Decaying histogram (half-life 24 h) with
  exponential buckets (first bucket 0.01 core / 1e7 bytes, ratio 1.05, max 1000 cores / 1e12 bytes);
  the percentile is the *end* of the bucket holding it, as VPA reports it. CPU: every sample of the
  last 8 days, weight 2^((t - origin) / 24 h) (VPA also weights CPU samples by the pod's request;
  the backtest has no requests, so the weight is the decay alone). Memory: the peak of each 24 h
  interval (intervals aligned on UTC days, the current one partial) over 8 days, each peak weighted
  by the decay at its own time. Target = p90, margin x1.15, then minimums 25m CPU and 250 MiB memory.
  OOM bumps are not modelled (the traces carry no OOM events).
- ``krr``: Robusta KRR ``simple``: CPU = p95 of the last 14 days (margin 1.0), memory = max x 1.15.
- ``crane``: Crane's resource recommender: p99 of the last 7 days x 1.15, CPU and memory.
- ``max``: max of the last 14 days x 1.15.
- ``reactive``: p95 of the last hour x 1.15.

Every method's request is rounded up to the units a request is written in: whole millicores
(Kubernetes cannot express less than 1m CPU) and whole MiB. Without it a recommender would be
credited with slack no Deployment can have (a 0.56m request is a 1m request in the cluster).

One ``FloorPolicy`` (``--floors`` of ``mora backtest``) holds for every method of a run: the engine
raises each method's requests to ``max(method's own floor, policy floor)`` before scoring, so a peer
without a floor is not credited with requests the platform's serving policy would never write.
``default`` is that serving policy's (10m CPU, 32 MiB), ``kubernetes`` Kubernetes' smallest units
(1m, 1 MiB), ``none`` no floor; ``"5m,16Mi"`` sets both explicitly. VPA keeps its own minimums
(25m / 250 MiB) when they are higher, since its recommender enforces them itself.

Percentiles other than VPA's use linear interpolation (``numpy.quantile``), as PromQL's
``quantile_over_time`` does. A window with no sample falls back to the last sample before the origin.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mora_platform.recommend.policy import CPU_FLOOR_MILLICORES, MEMORY_FLOOR_MIB

RESOURCES: tuple[str, ...] = ("cpu", "memory")

# What a request can be written as: whole millicores (Kubernetes' smallest CPU unit), whole MiB.
REQUEST_QUANTA: Mapping[str, float] = {"cpu": 0.001, "memory": float(2**20)}
VPA_CPU_MIN_CORES = 0.025
VPA_MEMORY_MIN_BYTES = 250.0 * 2**20


MIB = float(2**20)


@dataclass(frozen=True)
class FloorPolicy:
    """One floor for every method's requests: CPU in millicores, memory in MiB (0 = no floor)."""

    name: str
    cpu_millicores: float
    memory_mib: float

    def __post_init__(self) -> None:
        for label, value in (("cpu", self.cpu_millicores), ("memory", self.memory_mib)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"floor policy {self.name!r}: {label} floor must be >= 0, got {value!r}")

    def floor(self, resource: str) -> float:
        """The floor of ``resource`` in model units: cores for CPU, bytes for memory."""
        _check_resource(resource)
        return self.cpu_millicores / 1000 if resource == "cpu" else self.memory_mib * MIB

    def floor_for(self, method: Recommender, resource: str) -> float:
        """The floor ``method``'s requests get under this policy: its own floor or the policy's, the higher."""
        return max(method.floor(resource), self.floor(resource))

    def describe(self) -> str:
        """E.g. ``default (10m CPU, 32 MiB memory)``."""
        if self.cpu_millicores == 0 and self.memory_mib == 0:
            return f"{self.name} (no floor)"
        return f"{self.name} ({self.cpu_millicores:g}m CPU, {self.memory_mib:g} MiB memory)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cpu_millicores": self.cpu_millicores, "memory_mib": self.memory_mib}


# the serving policy's default floors
DEFAULT_FLOORS = FloorPolicy("default", CPU_FLOOR_MILLICORES, MEMORY_FLOOR_MIB)
FLOOR_POLICIES: Mapping[str, FloorPolicy] = {
    "default": DEFAULT_FLOORS,
    "kubernetes": FloorPolicy("kubernetes", 1, 1),
    "none": FloorPolicy("none", 0, 0),
}
_CPU_FLOOR = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>m?)$")
_MEMORY_FLOOR = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>Ki|Mi|Gi|)$")
_MEMORY_UNITS_MIB = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0, "": 1 / MIB}


def parse_floor_policy(text: str) -> FloorPolicy:
    """``default``, ``kubernetes``, ``none``, or ``CPU,MEMORY`` in Kubernetes quantities: CPU as
    millicores (``5m``) or cores (``0.005``), memory as ``Ki`` / ``Mi`` / ``Gi`` or bytes (``16Mi``)."""
    raw = text.strip()
    if raw.lower() in FLOOR_POLICIES:
        return FLOOR_POLICIES[raw.lower()]
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) != 2:
        raise ValueError(
            f"floors: expected {', '.join(FLOOR_POLICIES)} or CPU,MEMORY (e.g. 5m,16Mi), got {text!r}"
        )
    cpu, memory = _CPU_FLOOR.match(parts[0]), _MEMORY_FLOOR.match(parts[1])
    if cpu is None:
        raise ValueError(f"floors: cannot read the CPU floor {parts[0]!r} (e.g. 5m or 0.005)")
    if memory is None:
        raise ValueError(f"floors: cannot read the memory floor {parts[1]!r} (e.g. 16Mi, 512Ki, 1Gi)")
    millicores = float(cpu["value"]) * (1.0 if cpu["unit"] else 1000.0)
    mib = float(memory["value"]) * _MEMORY_UNITS_MIB[memory["unit"]]
    return FloorPolicy(f"{parts[0]},{parts[1]}", round(millicores, 6), round(mib, 6))


class HistoryError(ValueError):
    """The history handed to a recommender is unusable (empty, unsorted, not time-indexed)."""


@dataclass(frozen=True)
class Suggestion:
    """One method's answer at one origin, before the margin: base request and optional point forecast."""

    base: float
    forecast: float | None = None
    source: str | None = None  # what answered, for methods that choose among several (the platform)


class Recommender(ABC):
    """A request recommender for one resource series at a time.

    Subclasses implement ``_suggest``; the public ``suggest`` validates the history first.
    ``margin`` (if given) replaces the default margin of every resource, for the efficiency-vs-risk sweep.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_margins: ClassVar[Mapping[str, float]] = {"cpu": 1.15, "memory": 1.15}

    def __init__(self, margin: float | None = None) -> None:
        if margin is not None and not (margin > 0 and math.isfinite(margin)):
            raise ValueError(
                f"{type(self).__name__}: margin must be a positive finite number, got {margin!r}"
            )
        self.margin = margin

    def margin_for(self, resource: str) -> float:
        """The margin in force for ``resource``: the override if set, else the method's default."""
        _check_resource(resource)
        return self.margin if self.margin is not None else float(self.default_margins[resource])

    def floor(self, resource: str) -> float:
        """Smallest request the method ever gives (0 unless the peer enforces a minimum)."""
        return 0.0

    def quantum(self, resource: str) -> float:
        """Requests are rounded up to a multiple of this: 1 millicore for CPU, 1 MiB for memory."""
        return REQUEST_QUANTA[resource]

    def apply_margin(self, base: float, resource: str, margin: float | None = None) -> float:
        """Request from a base: ``max(base * margin, floor)`` rounded up to the quantum;
        ``margin`` defaults to ``margin_for``."""
        m = self.margin_for(resource) if margin is None else margin
        return float(finalize_requests(np.array([base]), m, self.floor(resource), self.quantum(resource))[0])

    def suggest(
        self,
        history: pd.Series,
        resource: str,
        *,
        origin: pd.Timestamp | None = None,
        horizon: pd.Timedelta = pd.Timedelta(hours=1),
        frame: pd.DataFrame | None = None,
    ) -> Suggestion:
        """Base request for the horizon starting at ``origin`` from ``history`` (samples before ``origin`` only).

        ``frame`` carries the unified-schema rows before the origin for methods that use more than
        one metric (the platform); baselines ignore it.
        """
        _check_resource(resource)
        values = _clean_history(history, self.name)
        if origin is None:
            origin = values.index[-1] + pd.Timedelta(microseconds=1)
        if values.index[-1] >= origin:
            raise HistoryError(
                f"{self.name}: history reaches {values.index[-1]}, at or after the origin {origin} (look-ahead)"
            )
        return self._suggest(values, resource, origin, horizon, frame)

    def recommend(
        self,
        history: pd.Series,
        resource: str,
        *,
        origin: pd.Timestamp | None = None,
        horizon: pd.Timedelta = pd.Timedelta(hours=1),
        frame: pd.DataFrame | None = None,
    ) -> float:
        """The request (cores or bytes) to hold over ``[origin, origin + horizon)``."""
        suggestion = self.suggest(history, resource, origin=origin, horizon=horizon, frame=frame)
        return self.apply_margin(suggestion.base, resource)

    @abstractmethod
    def _suggest(
        self,
        history: pd.Series,
        resource: str,
        origin: pd.Timestamp,
        horizon: pd.Timedelta,
        frame: pd.DataFrame | None,
    ) -> Suggestion:
        """Compute the base from a validated, sorted, NaN-free history."""


RecommenderFactory = Callable[..., Recommender]
_REGISTRY: dict[str, type[Recommender]] = {}


def register_recommender(name: str) -> Callable[[type[Recommender]], type[Recommender]]:
    """Class decorator: register a recommender under ``name`` (explicit, one place per method)."""

    def decorate(cls: type[Recommender]) -> type[Recommender]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"recommender {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered_recommenders() -> dict[str, type[Recommender]]:
    """Name -> class of every registered recommender (baselines, and the platform once imported)."""
    return dict(_REGISTRY)


def baseline_names() -> list[str]:
    """The peers and simple rules, in report order."""
    return [n for n in ("vpa", "krr", "crane", "max", "reactive") if n in _REGISTRY]


def create_recommender(name: str, margin: float | None = None) -> Recommender:
    """Instantiate a registered recommender; a clear error lists the known names."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown recommender {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return cls(margin=margin)


# --------------------------------------------------------------------------- helpers


def finalize_requests(base: np.ndarray, margin: float, floor: float, quantum: float) -> np.ndarray:
    """``max(base * margin, floor)``, rounded up to a multiple of ``quantum`` when it is > 0."""
    requests = np.maximum(np.asarray(base, dtype="float64") * margin, floor)
    if quantum > 0:
        # round to 1e-6 of a step first, so 0.5 / 0.001 does not become 501 steps through float noise
        requests = np.ceil(np.round(requests / quantum, 6)) * quantum
    return requests


def _check_resource(resource: str) -> None:
    if resource not in RESOURCES:
        raise ValueError(f"resource must be one of {RESOURCES}, got {resource!r}")


def _clean_history(history: pd.Series, method: str) -> pd.Series:
    if not isinstance(history, pd.Series):
        raise HistoryError(f"{method}: history must be a pandas Series, got {type(history).__name__}")
    if not isinstance(history.index, pd.DatetimeIndex):
        raise HistoryError(f"{method}: history needs a DatetimeIndex, got {type(history.index).__name__}")
    values = history.dropna()
    if values.empty:
        raise HistoryError(f"{method}: history is empty (no non-NaN sample before the origin)")
    if not values.index.is_monotonic_increasing:
        raise HistoryError(f"{method}: history index is not sorted by time")
    return values.astype("float64")


def window(history: pd.Series, origin: pd.Timestamp, length: pd.Timedelta) -> pd.Series:
    """Samples in ``[origin - length, origin)``; the last sample if that window is empty."""
    start = history.index.searchsorted(origin - length, side="left")
    picked = history.iloc[start:]
    return picked if not picked.empty else history.iloc[-1:]


def quantile(values: pd.Series | np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (numpy's default, as PromQL ``quantile_over_time``)."""
    return float(np.quantile(np.asarray(values, dtype="float64"), q))


@dataclass(frozen=True)
class ExponentialBuckets:
    """VPA's bucket scheme: bucket i starts at ``first * (ratio**i - 1) / (ratio - 1)``."""

    first: float
    ratio: float
    max_value: float

    @property
    def count(self) -> int:
        return (
            math.ceil(math.log(self.max_value * (self.ratio - 1) / self.first + 1) / math.log(self.ratio)) + 1
        )

    def start(self, index: np.ndarray | int) -> np.ndarray:
        i = np.asarray(index, dtype="float64")
        return np.asarray(self.first * (self.ratio**i - 1) / (self.ratio - 1))

    def index(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype="float64")
        raw = np.floor(np.log(np.maximum(v, 0.0) * (self.ratio - 1) / self.first + 1) / math.log(self.ratio))
        raw = np.where(v < self.first, 0, raw)
        return np.clip(raw, 0, self.count - 1).astype(np.int64)


def histogram_percentile(
    values: np.ndarray, weights: np.ndarray, buckets: ExponentialBuckets, p: float
) -> float:
    """VPA's histogram percentile: walk buckets until the cumulative weight reaches ``p * total``,
    then report the start of the next bucket (the end of the one holding the percentile)."""
    idx = buckets.index(values)
    totals = np.bincount(idx, weights=weights, minlength=buckets.count)
    total = float(totals.sum())
    if total <= 0:
        raise HistoryError("vpa: histogram has no weight")
    cumulative = np.cumsum(totals)
    # a relative tolerance keeps float round-off in the decay weights from skipping a bucket
    hit = int(np.argmax(cumulative >= p * total * (1 - 1e-12)))
    end = hit + 1 if hit < buckets.count - 1 else hit
    return float(buckets.start(end))


def decay_weights(times: pd.DatetimeIndex, origin: pd.Timestamp, half_life: pd.Timedelta) -> np.ndarray:
    """``2 ** ((t - origin) / half_life)``: 1 at the origin, halving every half-life into the past."""
    age = (origin - times) / half_life
    return np.asarray(np.exp2(-np.asarray(age, dtype="float64")))


# --------------------------------------------------------------------------- baselines


@register_recommender("vpa")
class VpaRecommender(Recommender):
    """Kubernetes VPA recommender target (decaying histogram, p90, x1.15, minimums 25m / 250 MiB)."""

    description = "VPA: decaying histogram p90 x1.15, min 25m CPU / 250 MiB"
    half_life = pd.Timedelta(hours=24)
    history_length = pd.Timedelta(days=8)
    memory_interval = pd.Timedelta(hours=24)
    percentile = 0.9
    cpu_buckets = ExponentialBuckets(first=0.01, ratio=1.05, max_value=1000.0)
    memory_buckets = ExponentialBuckets(first=1e7, ratio=1.05, max_value=1e12)

    def floor(self, resource: str) -> float:
        return VPA_CPU_MIN_CORES if resource == "cpu" else VPA_MEMORY_MIN_BYTES

    def _suggest(
        self,
        history: pd.Series,
        resource: str,
        origin: pd.Timestamp,
        horizon: pd.Timedelta,
        frame: pd.DataFrame | None,
    ) -> Suggestion:
        recent = window(history, origin, self.history_length)
        if resource == "cpu":
            times = pd.DatetimeIndex(recent.index)
            values = recent.to_numpy()
            buckets = self.cpu_buckets
        else:
            peaks = memory_interval_peaks(recent, self.memory_interval)
            times = pd.DatetimeIndex(peaks.index)
            values = peaks.to_numpy()
            buckets = self.memory_buckets
        weights = decay_weights(times, origin, self.half_life)
        return Suggestion(base=histogram_percentile(values, weights, buckets, self.percentile))


def memory_interval_peaks(series: pd.Series, interval: pd.Timedelta) -> pd.Series:
    """The peak of each aggregation interval (aligned on multiples of ``interval`` since the epoch),
    indexed by the time of that peak (VPA decays each peak by its own timestamp)."""
    table = pd.DataFrame({"value": series.to_numpy(), "key": series.index.floor(interval)})
    positions = table.groupby("key", sort=True)["value"].idxmax().to_numpy()
    return series.iloc[positions]


@register_recommender("krr")
class KrrSimpleRecommender(Recommender):
    """Robusta KRR ``simple``: CPU p95 (no margin), memory max x1.15, over 14 days."""

    description = "KRR simple: CPU p95, memory max x1.15, 14 d"
    default_margins = {"cpu": 1.0, "memory": 1.15}
    history_length = pd.Timedelta(days=14)
    cpu_percentile = 0.95

    def _suggest(
        self,
        history: pd.Series,
        resource: str,
        origin: pd.Timestamp,
        horizon: pd.Timedelta,
        frame: pd.DataFrame | None,
    ) -> Suggestion:
        recent = window(history, origin, self.history_length)
        base = quantile(recent, self.cpu_percentile) if resource == "cpu" else float(recent.max())
        return Suggestion(base=base)


@register_recommender("crane")
class CraneRecommender(Recommender):
    """Crane resource recommender: p99 over 7 days x1.15."""

    description = "Crane: p99 x1.15, 7 d"
    history_length = pd.Timedelta(days=7)
    percentile = 0.99

    def _suggest(
        self,
        history: pd.Series,
        resource: str,
        origin: pd.Timestamp,
        horizon: pd.Timedelta,
        frame: pd.DataFrame | None,
    ) -> Suggestion:
        return Suggestion(base=quantile(window(history, origin, self.history_length), self.percentile))


@register_recommender("max")
class MaxRecommender(Recommender):
    """The peak of the last 14 days x1.15."""

    description = "max x1.15, 14 d"
    history_length = pd.Timedelta(days=14)

    def _suggest(
        self,
        history: pd.Series,
        resource: str,
        origin: pd.Timestamp,
        horizon: pd.Timedelta,
        frame: pd.DataFrame | None,
    ) -> Suggestion:
        return Suggestion(base=float(window(history, origin, self.history_length).max()))


@register_recommender("reactive")
class ReactiveRecommender(Recommender):
    """A short reactive window: p95 of the last hour x1.15."""

    description = "reactive: p95 of the last hour x1.15"
    history_length = pd.Timedelta(hours=1)
    percentile = 0.95

    def _suggest(
        self,
        history: pd.Series,
        resource: str,
        origin: pd.Timestamp,
        horizon: pd.Timedelta,
        frame: pd.DataFrame | None,
    ) -> Suggestion:
        return Suggestion(base=quantile(window(history, origin, self.history_length), self.percentile))
