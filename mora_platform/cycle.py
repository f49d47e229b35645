"""The rightsizing cycle's decisions and summary: which services to retrain, and what a run did.

Pure (no Ray, S3 or Prometheus): ``jobs/rightsize_cycle.py`` reads the dataset and the registry,
collects from Prometheus and retrains; this module decides from what it read and describes the run.

A service is retrained when its newest row in the dataset is newer than the end of the data its
published ``LATEST`` version was trained on (the manifest's ``data_window.end``), when it has no
published version yet, when that version was trained on another dataset, or when its manifest cannot
be read; ``retrain_all`` retrains every service that has rows. ``min_new_data`` (default 0) asks
for at least that much newer data before a retrain, so a cycle that collects hourly can retrain daily.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import pandas as pd
from pydantic import BaseModel, Field

from mora_platform.orchestration import RunSummary

if TYPE_CHECKING:
    from mora_platform.collect.checkpoint import Checkpoint

CollectionStatus = Literal["ok", "failed", "skipped"]

#: Exit codes of a cycle (the fleet job's, plus the collection): the Ray Job fails on any non-zero code.
EXIT_OK = 0
EXIT_FAILED = 1  # the collection failed, or a retrain failed (unless allow_failures and another succeeded)
EXIT_NOT_STARTED = 2  # settings, S3 unreachable at the start
EXIT_SUMMARY_NOT_STORED = 3  # runs/RUN_ID/summary.json could not be written


@dataclass(frozen=True)
class ServiceState:
    """What the cycle knows about one service before deciding."""

    service: str
    newest_row: datetime | None  # newest timestamp in the cycle's dataset (None: no rows)
    model_version: str | None = None  # the version LATEST names (None: never published)
    trained_through: datetime | None = None  # that version's data_window.end
    model_dataset: str | None = None  # the dataset its manifest names (extra.dataset)
    error: str | None = None  # the manifest could not be read


class ServiceDecision(BaseModel):
    """Retrain or not, and why (one row of the summary's ``decisions``)."""

    service: str
    retrain: bool
    reason: str
    newest_row: str | None = None
    trained_through: str | None = None
    model_version: str | None = None


def as_utc(value: datetime | str | pd.Timestamp | None) -> pd.Timestamp | None:
    """``value`` as a UTC ``Timestamp`` (naive means UTC); None stays None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        return None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def iso(value: datetime | pd.Timestamp | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, or None."""
    stamp = as_utc(value)
    return None if stamp is None else stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def resume_point(newest_row: datetime | None, since: datetime) -> tuple[datetime, bool]:
    """Where a service's collection starts, and whether it resumes: its newest row, never before ``since``.

    A service without rows starts at ``since``. One whose newest row is older than ``since`` (it stopped
    reporting, or the cycle did not run for longer than that) starts at ``since`` too, so a dead service
    costs at most ``since`` of queries per cycle; raise ``since`` to catch up further.
    """
    newest = as_utc(newest_row)
    start = as_utc(since)
    assert start is not None
    if newest is None:
        return start.to_pydatetime(), False
    return max(newest, start).to_pydatetime(), True


def trim_checkpoint(checkpoint: Checkpoint, resume_s: int) -> bool:
    """Forget what the checkpoint says it queried after ``resume_s`` (unix s); True if it changed.

    The collector skips a chunk whose recorded grid points cover the window, whether or not Prometheus
    had data there yet. Trimming the records to the resume point (the newest row) makes the chunk holding
    it be queried again whole (its part rewritten, no duplicates) and later chunks queried anew, so rows
    that reached Prometheus after the previous cycle's query (remote-write or ingestion lag, a backfill)
    are collected. Records wholly after the resume point held no rows and are dropped.
    """
    changed = False
    for part, record in list(checkpoint.chunks.items()):
        if record.first > resume_s:
            del checkpoint.chunks[part]
            changed = True
        elif record.last > resume_s:
            record.last = resume_s
            changed = True
    return changed


def decide(
    states: Iterable[ServiceState],
    dataset: str,
    *,
    retrain_all: bool = False,
    min_new_data: timedelta = timedelta(0),
) -> list[ServiceDecision]:
    """One decision per service, sorted by service name."""
    decisions = []
    for state in sorted(states, key=lambda s: s.service):
        retrain, reason = _decide_one(state, dataset, retrain_all, min_new_data)
        decisions.append(
            ServiceDecision(
                service=state.service,
                retrain=retrain,
                reason=reason,
                newest_row=iso(state.newest_row),
                trained_through=iso(state.trained_through),
                model_version=state.model_version,
            )
        )
    return decisions


def _decide_one(
    state: ServiceState, dataset: str, retrain_all: bool, min_new_data: timedelta
) -> tuple[bool, str]:
    newest = as_utc(state.newest_row)
    if newest is None:
        return False, f"no rows in dataset {dataset!r}"
    if retrain_all:
        return True, "--retrain all"
    if state.model_version is None:
        return True, "no published model yet"
    if state.error:
        return True, f"the manifest of {state.model_version} could not be read ({_shorten(state.error, 120)})"
    if state.model_dataset and state.model_dataset != dataset:
        return True, f"{state.model_version} was trained on dataset {state.model_dataset!r}"
    through = as_utc(state.trained_through)
    if through is None:
        return True, f"the manifest of {state.model_version} records no data window"
    if newest <= through:
        return False, f"unchanged: no row after {iso(through)}, the end of {state.model_version}'s data"
    if newest - through < pd.Timedelta(min_new_data):
        return False, (
            f"{_span(newest - through)} of new rows since {state.model_version}'s data "
            f"(retrains after {_span(pd.Timedelta(min_new_data))})"
        )
    return True, f"new rows through {iso(newest)} after {iso(through)} ({state.model_version})"


def _span(delta: pd.Timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0 and seconds:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"


class CollectedService(BaseModel):
    """How the collection of one service went in this cycle."""

    service: str
    status: str  # the collector's: ok | partial | no data | failed | interrupted | not attempted
    start: str | None = None  # the window asked for (resume point .. end)
    end: str | None = None
    resumed: bool = False  # True: from the newest row already in the dataset; False: from --since
    new_rows: int = 0
    rows: int = 0  # rows the window's chunks hold now
    chunks_written: int = 0
    chunks_skipped: int = 0
    missing_points: int = 0
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "not attempted", "interrupted")


class CollectionFigures(BaseModel):
    """The collection step of a cycle."""

    status: CollectionStatus = "skipped"
    prometheus: str | None = None  # the URL without credentials
    namespace: str | None = None
    step_seconds: int | None = None
    start: str | None = None  # earliest resume point .. end of the window
    end: str | None = None
    seconds: float = 0.0
    error: str | None = None  # why the collection could not run at all
    services: list[CollectedService] = Field(default_factory=list)

    @property
    def new_rows(self) -> int:
        return sum(s.new_rows for s in self.services)

    @property
    def failed(self) -> list[str]:
        return [s.service for s in self.services if s.failed]

    def settle(self) -> None:
        """Set ``status`` from the services (failed if any failed or the run could not start)."""
        if self.status == "skipped":
            return
        self.status = "failed" if self.error or self.failed else "ok"


class CycleSummary(RunSummary):
    """The run summary of one cycle: the retrained services (``services``), plus collection and decisions."""

    kind: str = "cycle"
    namespace: str | None = None
    collection: CollectionFigures = Field(default_factory=CollectionFigures)
    decisions: list[ServiceDecision] = Field(default_factory=list)

    @property
    def to_retrain(self) -> list[str]:
        return [d.service for d in self.decisions if d.retrain]

    @property
    def skipped(self) -> list[str]:
        """Services left alone (unchanged, too little new data, or no rows)."""
        return [d.service for d in self.decisions if not d.retrain]

    def exit_code(self, allow_failures: bool = False) -> int:
        """1 when the collection failed or a retrain failed; 0 otherwise, nothing to retrain included.

        ``allow_failures``: failed retrains count only when no retrain succeeded (as the fleet job's flag).
        """
        if self.collection.status == "failed":
            return EXIT_FAILED
        if self.failed and (not allow_failures or not self.succeeded):
            return EXIT_FAILED
        return EXIT_OK

    def to_json(self) -> bytes:
        import json

        payload = json.loads(super().to_json())
        payload["counts"].update(
            {
                "retrain_decided": len(self.to_retrain),
                "skipped": len(self.skipped),
                "collected_new_rows": self.collection.new_rows,
                "collection_failed": len(self.collection.failed),
            }
        )
        payload["skipped"] = self.skipped
        return json.dumps(payload, indent=2, sort_keys=False).encode("utf-8")

    def collection_table(self) -> str:
        """A plain-text table of the collection, one row per service."""
        header = ("service", "status", "window", "new rows", "chunks w/s", "message")
        rows: list[Sequence[str]] = [header]
        for s in sorted(self.collection.services, key=lambda item: item.service):
            window = f"{s.start or '?'}..{s.end or '?'}" + (" (resumed)" if s.resumed else "")
            rows.append(
                (
                    s.service,
                    s.status,
                    window,
                    str(s.new_rows),
                    f"{s.chunks_written}/{s.chunks_skipped}",
                    _shorten(s.message, 90),
                )
            )
        return _render(rows)

    def decision_table(self) -> str:
        """A plain-text table of the decisions."""
        rows: list[Sequence[str]] = [("service", "retrain", "reason")]
        for d in self.decisions:
            rows.append((d.service, "yes" if d.retrain else "no", d.reason))
        return _render(rows)

    def result_line(self, code: int | None = None) -> str:
        """The one-line result a log ends with (``code``: the exit code, when not ``exit_code()``)."""
        c = self.collection
        if c.status == "skipped":
            collected = "collection skipped"
        elif c.error:
            collected = f"collection FAILED ({_shorten(c.error, 120)})"
        else:
            collected = f"collected {c.new_rows} new rows for {len(c.services)} services" + (
                f", {len(c.failed)} FAILED ({', '.join(c.failed)})" if c.failed else ""
            )
        retrained = (
            f"retrained {len(self.services)}: {len(self.succeeded)} published"
            if any(o.status == "published" for o in self.services) or not self.services
            else f"retrained {len(self.services)}: {len(self.succeeded)} trained"
        )
        if self.failed:
            retrained += f", {len(self.failed)} FAILED ({', '.join(self.failed)})"
        code = self.exit_code() if code is None else code
        stored = "; run summary NOT stored" if code == EXIT_SUMMARY_NOT_STORED else ""
        return f"CYCLE RESULT: {collected}; {retrained}; {len(self.skipped)} skipped{stored}; exit {code}"


def _shorten(text: str | None, limit: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _render(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths) + "  -----")
    return "\n".join(lines)
