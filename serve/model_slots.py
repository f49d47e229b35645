"""Loading, hot-swapping and querying per-service models, without Ray.

A :class:`ServiceSlot` is what the multiplexed Serve deployment caches per service: the model
currently served plus, when the newest published version was refused, why. The
:class:`ModelLoader` does the blocking work (registry fetch with checksum verification,
``ServiceModel.load``, ``recommend``) and is called from worker threads by the deployment.
Keeping it free of Ray lets unit tests drive it with a local registry and a fake model.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mora_platform.data.schema import (
    DEFAULT_RELATIVE_STEP_SECONDS,
    EXPERIMENT_ID,
    TIMESTAMP,
)
from mora_platform.features.targets import median_step_seconds
from mora_platform.recommend.answering import CONTEXT_KEYS
from mora_platform.recommend.types import Recommendation
from mora_platform.recommend.workload import WorkloadState
from mora_platform.registry import ArtifactIntegrityError, ModelNotFoundError, ModelRegistry
from mora_platform.registry.recent_history import RecentHistory, history_used, pick_history
from serve.history import load_history

logger = logging.getLogger(__name__)

MODEL_CONTEXT_KEYS = CONTEXT_KEYS  # what the answering layer takes as context
ANSWER_CACHE_SIZE = 1024  # memoised history-less answers per loaded version


class ServedModel(Protocol):
    """What the endpoint needs from ``ServiceModel``."""

    def recommend(
        self,
        history: pd.DataFrame | None = None,
        context: Mapping[str, float | str] | None = None,
        *,
        model_version: str | None = None,
        workload: WorkloadState | None = None,
    ) -> Recommendation: ...


ModelFactory = Callable[[Path], ServedModel]


class UnknownServiceError(LookupError):
    """No version of the service was ever published (answered with 404)."""

    def __init__(self, service: str) -> None:
        super().__init__(
            f"unknown service {service!r}: no published model (GET /v1/services lists the known ones)"
        )
        self.service = service


class NoUsableVersionError(RuntimeError):
    """Versions exist but none passed verification and loading (answered with 503)."""


def load_service_model(directory: Path) -> ServedModel:
    """The real loader: ``ServiceModel.load`` from the training package."""
    try:
        from mora_platform.training.bundle import ServiceModel
    except ImportError:  # the trainer may export it from the package instead
        from mora_platform.training import ServiceModel  # type: ignore[attr-defined,no-redef]
    model: ServedModel = ServiceModel.load(directory)
    return model


@dataclass(frozen=True)
class LoadedVersion:
    """One loaded model and where it came from; replaced as a whole on reload.

    ``answers`` memoises answers to history-less requests: with the stored history tail,
    ``recommend`` is a pure function of (model version, context), so repeated questions are
    answered without running the model. It dies with the version, so a reload invalidates it.
    ``step_seconds`` is the model's spacing (`model_step_seconds`): a history's ``t_N`` labels, or
    rows sent without timestamps, are laid out that far apart.
    """

    version: str
    model: ServedModel
    trained_at: datetime | None
    directory: Path
    step_seconds: int = DEFAULT_RELATIVE_STEP_SECONDS
    dataset: str | None = None  # the dataset it was trained on (manifest), where recent rows are read
    answers: OrderedDict[tuple[tuple[str, Any], ...], dict[str, Any]] = field(default_factory=OrderedDict)


class ServiceSlot:
    """The served state of one service; the multiplexed cache holds one per loaded service."""

    def __init__(self, service: str, loaded: LoadedVersion, degraded_reason: str | None = None) -> None:
        self.service = service
        self.loaded = loaded
        self.degraded_reason = degraded_reason
        self.refused_version: str | None = None
        self.checked_at = time.monotonic()

    @property
    def version(self) -> str:
        return self.loaded.version

    def __repr__(self) -> str:
        return f"ServiceSlot({self.service!r}, version={self.version!r}, degraded={self.degraded_reason is not None})"


def outcome(
    status: int, recommendation: dict[str, Any] | None = None, error: str | None = None
) -> dict[str, Any]:
    """The plain-dict envelope the model deployment returns (see ``serve.http_api.ModelOutcome``)."""
    return {"status": status, "recommendation": recommendation, "error": error}


def request_inputs(
    service: str, payload: Mapping[str, Any], *, step_seconds: int = DEFAULT_RELATIVE_STEP_SECONDS
) -> tuple[pd.DataFrame | None, dict[str, float | str], list[str]]:
    """(history frame or None, model context, notes) from a validated request payload.

    The model's context takes ``load_users`` and ``replica_count``. A given history becomes what the
    data layer makes of the same rows in a file (``serve.history.load_history``): validated, ``t_N``
    labels (or, with no timestamp on any row, the rows in order) mapped onto the relative clock every
    ``step_seconds`` (the model's spacing), canonical and cleaned; missing context cells come from
    ``context``. ``current`` is appended as the newest row of the history; without a history it cannot
    be used, and a note says so. ``serve.history.HistoryError`` (a ``ValueError``) when a row breaks a
    data-layer rule.
    """
    given = dict(payload.get("context") or {})
    context: dict[str, float | str] = {k: given[k] for k in MODEL_CONTEXT_KEYS if given.get(k) is not None}
    rows = [dict(row) for row in payload.get("history") or []]
    current = {k: v for k, v in (payload.get("current") or {}).items() if v is not None}
    if not rows:
        notes = []
        if current:
            notes.append(
                "'current' was not used: send it together with 'history' (the stored history was used)"
            )
        return None, context, notes
    history, notes = load_history(service, rows, given, current, step_seconds=step_seconds)
    return history, context, notes


def model_step_seconds(model: object) -> int:
    """The spacing a model was trained at: the median step of its stored history tail (whole seconds),
    else ``DEFAULT_RELATIVE_STEP_SECONDS``."""
    tail = getattr(model, "history", None)
    if not isinstance(tail, pd.DataFrame) or not {TIMESTAMP, EXPERIMENT_ID} <= set(tail.columns):
        return DEFAULT_RELATIVE_STEP_SECONDS
    seconds = median_step_seconds(tail, default=float(DEFAULT_RELATIVE_STEP_SECONDS))
    return max(round(seconds), 1) if np.isfinite(seconds) else DEFAULT_RELATIVE_STEP_SECONDS


class ModelLoader:
    """Fetches (verified), loads, reloads and queries service models; thread-safe per call."""

    def __init__(
        self,
        registry: ModelRegistry,
        cache_dir: Path,
        factory: ModelFactory = load_service_model,
        recent: RecentHistory | None = None,
    ) -> None:
        self.registry = registry
        self.cache_dir = Path(cache_dir)
        self.factory = factory
        self.recent = recent  # server-side recent rows for requests that send none
        self._lock = threading.Lock()  # one fetch at a time per replica: bounded disk and network

    def _load_version(self, service: str, version: str) -> LoadedVersion:
        with self._lock:
            bundle = self.registry.fetch(service, version, self.cache_dir / service / version)
            model = self.factory(bundle.path)
        dataset = bundle.manifest.extra.get("dataset")
        return LoadedVersion(
            version,
            model,
            bundle.manifest.created_at,
            bundle.path,
            step_seconds=model_step_seconds(model),
            dataset=str(dataset) if dataset else None,
        )

    def load(self, service: str) -> ServiceSlot:
        """The slot for ``service`` at its LATEST version, or the newest older one that verifies.

        A LATEST that is missing, not a version (tampered) or names a deleted version falls back
        to the newest complete version (``ModelRegistry.resolve_latest``), served degraded.
        """
        resolved = self.registry.resolve_latest(service)
        if resolved.version is None:
            raise UnknownServiceError(service)
        refusals = [resolved.problem] if resolved.problem else []
        for version in self.registry.serving_candidates(resolved):
            try:
                loaded = self._load_version(service, version)
            except Exception as exc:
                refusals.append(_refusal(service, version, exc))
                continue
            reason = None
            if refusals:
                reason = "; ".join(refusals) + f"; serving {version} instead"
            slot = ServiceSlot(service, loaded, degraded_reason=reason)
            if version != resolved.version:
                slot.refused_version = resolved.version
            logger.info("loaded %s version %s%s", service, version, " (degraded)" if reason else "")
            return slot
        raise NoUsableVersionError(f"service {service!r}: no usable model version: " + "; ".join(refusals))

    def refresh(self, slot: ServiceSlot) -> bool:
        """Follow LATEST: swap in a new version, re-check a refused one, clear a repaired problem.

        Called every reload interval. A version that was refused is fetched and verified again on
        every call (its bad file may have been restored), so recovery needs no new replica; while it
        stays refused the slot keeps serving what it has, degraded. Returns True when the slot now
        serves a different version.
        """
        slot.checked_at = time.monotonic()
        resolved = self.registry.resolve_latest(slot.service)
        if resolved.version is None:  # nothing complete left (pruned away?): keep what is loaded
            return False
        if resolved.version == slot.version:
            if slot.degraded_reason is not None and resolved.problem is None:
                logger.info("%s: recovered, serving %s", slot.service, slot.version)
            slot.refused_version = None
            slot.degraded_reason = f"{resolved.problem}; serving {slot.version}" if resolved.problem else None
            return False
        problems = [resolved.problem] if resolved.problem else []
        for version in self.registry.serving_candidates(resolved):
            if version == slot.version:  # nothing newer verifies: keep serving (it did verify)
                break
            try:
                loaded = self._load_version(slot.service, version)
            except Exception as exc:
                problems.append(_refusal(slot.service, version, exc, again=version == slot.refused_version))
                continue
            previous = slot.loaded
            slot.loaded = loaded
            slot.refused_version = resolved.version if version != resolved.version else None
            slot.degraded_reason = "; ".join(problems) + f"; serving {version} instead" if problems else None
            logger.info("%s: now serving %s (was %s)", slot.service, version, previous.version)
            if previous.directory != loaded.directory:
                shutil.rmtree(previous.directory, ignore_errors=True)
            return True
        slot.refused_version = resolved.version
        slot.degraded_reason = "; ".join(problems) + f"; still serving {slot.version}"
        return False

    def answer(self, slot: ServiceSlot, payloads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One outcome envelope per payload; a failing request never affects the others."""
        loaded, reason = slot.loaded, slot.degraded_reason
        return [self._answer_one(slot.service, loaded, reason, payload) for payload in payloads]

    def cached_answers(
        self, slot: ServiceSlot, payloads: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]] | None:
        """The answers if every payload is a memoised history-less question, else None (cheap)."""
        loaded, reason = slot.loaded, slot.degraded_reason
        results = []
        for payload in payloads:
            key = _memo_key(payload)
            if key == () and self.recent is not None:  # a plain question: answered on the fresh window
                window = self.recent.peek(_model_service(slot.service, loaded), loaded.dataset)
                if window is None:
                    return None
                key = _window_key(window.fetched_at)
            hit = loaded.answers.get(key) if key is not None else None
            if hit is None:
                return None
            results.append(outcome(200, _decorated(hit, [], reason)))
        return results

    def _answer_one(
        self, service: str, loaded: LoadedVersion, reason: str | None, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        key = _memo_key(payload)
        model_service = _model_service(service, loaded)
        window = None
        if key == () and self.recent is not None:  # a plain question: the server brings recent rows
            window = self.recent.get(model_service, loaded.dataset, step_seconds=loaded.step_seconds)
            key = _window_key(window.fetched_at) if window.frame is not None else key
        if key is not None and key in loaded.answers:
            return outcome(200, _decorated(loaded.answers[key], [], reason))
        try:
            history, context, notes = request_inputs(model_service, payload, step_seconds=loaded.step_seconds)
            history, source, answer_notes = pick_history(
                history, window, what_if=bool(context) and self.recent is not None
            )
            workload = (
                self.recent.workload(model_service, loaded.dataset) if self.recent is not None else None
            )
            rec = loaded.model.recommend(history, context, model_version=loaded.version, workload=workload)
            frame = history if history is not None else getattr(loaded.model, "history", None)
            rec = rec.model_copy(
                update={"history": history_used(source, frame), "reasons": [*rec.reasons, *answer_notes]}
            )
        except ValueError as exc:  # the model's own input checks (e.g. unusable history)
            return outcome(422, error=f"{service}: {exc}")
        except Exception as exc:
            logger.exception("%s/%s failed to recommend", service, loaded.version)
            return outcome(500, error=f"{service}: model failed ({type(exc).__name__})")
        answer = rec.model_dump(mode="json")
        answer["service"] = service
        if key is not None:
            loaded.answers[key] = answer
            while len(loaded.answers) > ANSWER_CACHE_SIZE:
                loaded.answers.popitem(last=False)
        return outcome(200, _decorated(answer, notes, reason))

    def close(self) -> None:
        """Remove the local bundle copies."""
        with contextlib.suppress(OSError):
            shutil.rmtree(self.cache_dir)


def _refusal(service: str, version: str, exc: Exception, *, again: bool = False) -> str:
    """Why ``version`` was not loaded (logged; a repeated refusal only at debug level)."""
    if isinstance(exc, ModelNotFoundError):  # pruned between listing and fetching
        text = f"version {version} vanished ({exc})"
    elif isinstance(exc, ArtifactIntegrityError):
        text = f"version {version} refused: {exc}"
    else:
        text = f"version {version} could not be loaded: {type(exc).__name__}: {exc}"
    if again:
        logger.debug("%s: %s (again)", service, text)
    elif isinstance(exc, ArtifactIntegrityError | ModelNotFoundError):
        logger.error("%s: %s", service, text)
    else:
        logger.error("%s: %s", service, text, exc_info=exc)
    return text


def _model_service(service: str, loaded: LoadedVersion) -> str:
    """The service name the model was trained under (rows of the dataset carry it)."""
    return str(getattr(loaded.model, "service", service))


def _window_key(fetched_at: float) -> tuple[tuple[str, Any], ...]:
    """Memo key of a plain question answered on the server-side window read at ``fetched_at``."""
    return (("recent-window", fetched_at),)


def _memo_key(payload: Mapping[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    """Cache key of a history-less request (its model context), None when it carries data."""
    if payload.get("history") or payload.get("current"):
        return None
    context = payload.get("context") or {}
    return tuple((key, context[key]) for key in MODEL_CONTEXT_KEYS if context.get(key) is not None)


def _decorated(answer: dict[str, Any], notes: list[str], reason: str | None) -> dict[str, Any]:
    """``answer`` with request notes and the slot's degraded reason added, and the age of its history
    as of now (a memoised answer was computed earlier); a copy when changed."""
    used = answer.get("history")
    if used and used.get("newest"):
        newest = pd.Timestamp(used["newest"])
        age = round(max((pd.Timestamp.now(tz="UTC") - newest).total_seconds(), 0.0), 1)
        if age != used.get("age_seconds"):
            answer = {**answer, "history": {**used, "age_seconds": age}}
    if not notes and not reason:
        return answer
    decorated = {**answer, "reasons": [*answer.get("reasons", []), *notes]}
    if reason:
        decorated["degraded"] = True
        decorated["reasons"].append(reason)
    return decorated
