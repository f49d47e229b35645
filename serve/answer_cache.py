"""The ingress's answer cache: a recent recommendation answered again without the model hop.

A recommendation changes only when the model version changes (a model replica checks LATEST every
``reload_interval_s``, default 10 s) or when the server-side recent history it was calibrated on
changes (a replica reuses a service's recent rows for ``MORA_SERVE_HISTORY_MAX_AGE_S``, default 60 s).
So an answer remembered for ``ttl_s`` seconds, with ``ttl_s`` no longer than either interval
(``serve.app`` caps it at both; default ``DEFAULT_TTL_S`` = 2 s), changes no answer's meaning: a
publish or new recent rows show up at most ``ttl_s`` later than they would without the cache. The TTL
counts from when the model call was *sent*, so an answer is never served older than that.

What is remembered, per ingress replica:

- only plain answers: status 200 and not ``degraded`` (errors, 404, 503 / 504 and degraded answers are
  asked for again every time; an unknown service is remembered apart, briefly, by ``ServeBackend``);
- only questions without client ``history`` (``service`` + ``context`` / ``current``, < 1 kB): a history
  is up to 2,000 rows (MBs), canonicalising it would cost CPU on every request and its key would crowd out
  the small ones, and it is almost never sent twice (clients send their newest window);
- keyed by (service, canonical body): the validated request as sorted-keys JSON, so key order, spacing
  and ``3`` vs ``3.0`` do not matter. The raw bytes of a small body that got an answer are kept as an
  alias of its entry, so the same bytes again are answered before JSON parsing and validation (same bytes,
  same validation outcome);
- the answer as the JSON bytes the response sends (encoded once), its ``history.age_seconds`` brought up
  to date when it is served (that field is "seconds from the newest row to the moment of the answer");
- at most ``max_entries`` answers and ``max_bytes`` of them (keys and aliases included), least recently
  used evicted first.

Concurrent identical misses share one model call (single flight): a burst on a hot service costs one
call, and every request of the burst gets that call's outcome (errors included). The call is cancelled
only when every request waiting for it is gone.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from serve.api import RecommendationRequest

if TYPE_CHECKING:
    from serve.http_api import ModelOutcome

DEFAULT_TTL_S = 2.0  # <= the 10 s reload interval and the 60 s history max age (see the docstring)
MAX_ENTRIES = 10_000
MAX_BYTES = 32 * 2**20  # per ingress replica
MAX_ALIAS_BYTES = 2048  # raw bodies up to this are remembered as aliases (a plain question is ~100 B)
MAX_ALIASES = 4  # raw spellings remembered per answer
ENTRY_OVERHEAD_BYTES = 400  # the Python objects around an entry's bytes, roughly
CACHE_HEADER = "X-Mora-Cache"

CacheKey = tuple[str, str]  # (service, sorted-keys JSON of the validated request)


def encode_json(content: Any) -> bytes:
    """``content`` as ``JSONResponse`` renders it (so a cached body is byte for byte the same)."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def cache_key(request: RecommendationRequest) -> CacheKey | None:
    """The request's key, or None when it is not cached (it carries a history)."""
    if request.history:
        return None
    payload = request.model_dump(mode="json", exclude_none=True)
    return request.service, json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _epoch(text: Any) -> float | None:
    """ISO 8601 time -> epoch seconds (naive: UTC), None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _age(newest: float, now: float) -> float:
    """``history.age_seconds`` as the model replica writes it (``serve.model_slots._decorated``)."""
    return round(max(now - newest, 0.0), 1)


@dataclass(eq=False)
class _Entry:
    key: CacheKey
    body: bytes  # the recommendation, encoded
    expires: float  # monotonic
    newest: float | None = None  # epoch seconds of history.newest (None: no age to keep current)
    age: float | None = None  # the history.age_seconds ``body`` holds
    aliases: list[bytes] = field(default_factory=list)
    size: int = 0


@dataclass(eq=False)
class _Flight:
    """One model call in progress and how many requests wait for it."""

    task: asyncio.Future[ModelOutcome]
    waiters: int = 0
    body: bytes | None = None  # the stored answer, once landed (None: not stored)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0  # requests answered by a model call (their own or a shared one)
    shared: int = 0  # of those, requests that joined a call already in flight
    stored: int = 0
    evicted: int = 0


class AnswerCache:
    """Plain answers by (service, canonical request), for ``ttl_s`` seconds; see the module docstring.

    Single-threaded (one event loop); ``clock`` is monotonic (expiry), ``wall`` epoch seconds (ages).
    """

    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not (ttl_s >= 0 and math.isfinite(ttl_s)):
            raise ValueError(f"answer cache TTL must be a finite number >= 0, got {ttl_s!r}")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._wall = wall
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._aliases: dict[bytes, _Entry] = {}
        self._flights: dict[CacheKey, _Flight] = {}
        self._bytes = 0
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def now(self) -> float:
        """The cache's monotonic clock (``put`` takes the time a model call was sent on it)."""
        return self._clock()

    # ---- lookups -------------------------------------------------------------------------------

    def by_body(self, raw: bytes) -> bytes | None:
        """The answer to a body seen before, byte for byte (before parsing it), if still fresh."""
        if len(raw) > MAX_ALIAS_BYTES:
            return None
        entry = self._aliases.get(raw)
        return None if entry is None else self._served(entry)

    def get(self, key: CacheKey) -> bytes | None:
        """The fresh answer for ``key``, encoded, or None."""
        entry = self._entries.get(key)
        return None if entry is None else self._served(entry)

    def _served(self, entry: _Entry) -> bytes | None:
        if self._clock() >= entry.expires:
            return None  # kept until refilled (its aliases move to the new entry) or evicted
        self._entries.move_to_end(entry.key)
        self.stats.hits += 1
        if entry.newest is not None:
            age = _age(entry.newest, self._wall())
            if age != entry.age:  # at most every 0.1 s per entry
                answer = json.loads(entry.body)
                answer["history"]["age_seconds"] = age
                body = encode_json(answer)
                grown = len(body) - len(entry.body)
                self._bytes += grown
                entry.size += grown
                entry.body, entry.age = body, age
        return entry.body

    def alias(self, raw: bytes, key: CacheKey) -> None:
        """Remember ``raw`` (a body that validated into ``key``) as a spelling of ``key``'s answer."""
        if len(raw) > MAX_ALIAS_BYTES or raw in self._aliases:
            return
        entry = self._entries.get(key)
        if entry is None or len(entry.aliases) >= MAX_ALIASES:
            return
        entry.aliases.append(raw)
        entry.size += len(raw)
        self._bytes += len(raw)
        self._aliases[raw] = entry
        self._shrink()

    # ---- misses ---------------------------------------------------------------------------------

    async def fetch(
        self, key: CacheKey, call: Callable[[], Awaitable[ModelOutcome]]
    ) -> tuple[ModelOutcome, bytes | None]:
        """The outcome of ``call()``, shared with identical requests in flight, and its encoded answer
        when it was stored (None: not cacheable, the caller encodes it)."""
        while True:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._take_off(key, call)
            else:
                self.stats.shared += 1
            flight.waiters += 1
            try:
                outcome = await asyncio.shield(flight.task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if flight.task.cancelled() and current is not None and not current.cancelling():
                    continue  # the call was cancelled under us (its other waiters left): ask again
                raise
            finally:
                flight.waiters -= 1
                if flight.waiters == 0 and not flight.task.done():  # nobody waits: stop the model call
                    flight.task.cancel()
                    if self._flights.get(key) is flight:
                        del self._flights[key]
            self.stats.misses += 1
            return outcome, flight.body

    def _take_off(self, key: CacheKey, call: Callable[[], Awaitable[ModelOutcome]]) -> _Flight:
        """Start the one model call for ``key``; its answer is stored when it lands, waiters or not."""
        started = self._clock()
        flight = _Flight(asyncio.ensure_future(call()))
        self._flights[key] = flight

        def landed(task: asyncio.Future[ModelOutcome]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not task.cancelled() and task.exception() is None:
                flight.body = self.put(key, task.result(), started)

        flight.task.add_done_callback(landed)  # registered first: runs before any waiter resumes
        return flight

    def put(self, key: CacheKey, outcome: ModelOutcome, started: float) -> bytes | None:
        """Store a plain answer to a model call sent at ``started`` (monotonic); its encoded body, or
        None when it is not stored (an error, degraded, too old already, unencodable, too large)."""
        if not self.enabled or outcome.status != 200 or outcome.recommendation is None:
            return None
        answer = outcome.recommendation
        if answer.get("degraded"):
            return None
        expires = started + self.ttl_s
        if expires <= self._clock():
            return None  # the call took longer than the TTL
        try:
            body = encode_json(answer)
        except (TypeError, ValueError):  # NaN and the like: the response path reports it as before
            return None
        history = answer.get("history")
        newest = age = None
        if isinstance(history, dict) and history.get("newest") is not None:
            newest = _epoch(history["newest"])
            if newest is None:
                return None  # an age it could not keep current
            age = history.get("age_seconds")
        entry = _Entry(key, body, expires, newest=newest, age=age)
        entry.size = len(body) + len(key[0]) + len(key[1]) + ENTRY_OVERHEAD_BYTES
        if entry.size > self.max_bytes // 100:
            return None
        old = self._entries.pop(key, None)
        if old is not None:  # a refill: the old entry's spellings now name the new answer
            self._bytes -= old.size
            entry.aliases = old.aliases
            entry.size += sum(len(raw) for raw in old.aliases)
            for raw in old.aliases:
                self._aliases[raw] = entry
        self._entries[key] = entry
        self._bytes += entry.size
        self.stats.stored += 1
        self._shrink()
        return body

    def _shrink(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            for raw in entry.aliases:
                if self._aliases.get(raw) is entry:
                    del self._aliases[raw]
            self.stats.evicted += 1
