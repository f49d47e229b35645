"""A request's ``history`` as the data layer sees it: validated, canonicalised and cleaned by ``mora_platform.data``.

History rows are rows of the unified 18-column schema (what ``mora data import`` reads), so the endpoint
applies the data layer's rules instead of its own: `history_errors` runs
``validation.validate_rows`` (the per-cell rules of ``validate_table``) for the request validation, and
`load_history` runs ``loaders.load_rows`` (the same validation, ``t_N`` labels mapped onto the relative
clock, then ``cleaning.clean_frame``) to build the model's input. Only what a request may leave out gets
a default here, and only when the column is absent from every row:

- ``timestamp``: the rows are taken as consecutive, labelled ``t_0``, ``t_1``, ... and so mapped like the
  seed's labels, one model step apart (``step_seconds``: the spacing the model was trained at);
- ``experiment_id``: ``{service}-request``; ``service``: the request's service;
- ``load_users`` / ``replica_count`` / ``scenario``: missing cells come from the request ``context``.

A column present on some rows only is judged by the data layer (a missing timestamp or
``experiment_id`` is an error there, as in a file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from mora_platform.data.issues import DataIssue
from mora_platform.data.loaders import load_rows
from mora_platform.data.schema import (
    DEFAULT_RELATIVE_STEP_SECONDS,
    EXPERIMENT_ID,
    LOAD_USERS,
    REPLICA_COUNT,
    SCENARIO,
    SERVICE,
    STEP,
    TIMESTAMP,
)
from mora_platform.data.validation import validate_rows

HISTORY = "history"  # the source name of a request's rows in data-layer issues
CONTEXT_COLUMNS = (LOAD_USERS, REPLICA_COUNT, SCENARIO)  # filled from the request context
_ROW_REFERENCE = re.compile(r"\brow (\d+)\b")


class HistoryError(ValueError):
    """The history breaks a data-layer rule; ``errors`` holds (field path, message, value) per problem."""

    def __init__(self, errors: list[tuple[tuple[str | int, ...], str, Any]]) -> None:
        shown = "; ".join(f"{field_text(loc)}: {message}" for loc, message, _ in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{shown}{more}")
        self.errors = errors


def field_text(loc: Sequence[str | int]) -> str:
    """('history', 3, 'cpu_cores_value') -> 'history[3].cpu_cores_value'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _present(table: pd.DataFrame, column: str) -> bool:
    """True when some row carries a value for ``column`` (null / NaN on every row counts as absent)."""
    return column in table.columns and bool(table[column].notna().any())


def history_table(
    service: str, rows: Sequence[Mapping[str, Any]], context: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """The raw table of ``rows`` (oldest first) with the request defaults of the module docstring."""
    table = pd.DataFrame.from_records([dict(row) for row in rows], index=range(len(rows)))
    if not _present(table, TIMESTAMP):
        table[TIMESTAMP] = [f"t_{i}" for i in range(len(table))]
    if not _present(table, EXPERIMENT_ID):
        table[EXPERIMENT_ID] = f"{service}-request"
    if not _present(table, SERVICE):
        table[SERVICE] = service
    return _with_context(table, context or {})


def _with_context(table: pd.DataFrame, context: Mapping[str, Any]) -> pd.DataFrame:
    for column in CONTEXT_COLUMNS:
        fallback = context.get(column)
        if fallback is None:
            continue
        if column not in table.columns:
            table[column] = fallback
        else:
            table[column] = table[column].astype(object).where(table[column].notna(), fallback)
    return table


def _issue_error(issue: DataIssue) -> tuple[tuple[str | int, ...], str, Any]:
    """A data-layer issue as (loc, message, value), its 1-based rows turned into ``history[i]``."""
    loc: tuple[str | int, ...] = (HISTORY,)
    if issue.row is not None:
        loc += (issue.row - 1,)
    if issue.column is not None:
        loc += (issue.column,)
    message = _ROW_REFERENCE.sub(lambda m: f"{HISTORY}[{int(m.group(1)) - 1}]", issue.message)
    if issue.more_rows:
        message += f" (and {issue.more_rows} more row{'s' if issue.more_rows > 1 else ''})"
    return loc, message, issue.value


def history_errors(
    service: str, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[tuple[str | int, ...], str, Any]]:
    """What the data layer refuses in ``rows`` sent for ``service``, as (loc, message, value) per problem.

    Besides the data layer's rules, a row's ``service`` must be the request's.
    """
    if not rows:
        return []
    table = history_table(service, rows)
    errors = [_issue_error(issue) for issue in validate_rows(table, HISTORY).issues if issue.is_error]
    if SERVICE in table.columns:
        for index, value in enumerate(table[SERVICE]):
            if isinstance(value, str) and value.strip() and value.strip() != service:
                errors.append(
                    ((HISTORY, index, SERVICE), f"must be the request's service {service!r}", value)
                )
    return errors


def _next_row(
    table: pd.DataFrame, current: Mapping[str, Any], context: Mapping[str, Any], step_seconds: int
) -> pd.DataFrame:
    """``table`` with ``current`` appended as the newest row of its last row's experiment, one step later.

    The row takes the request context, else the last row's. ``t_N`` labels continue (``t_{N+1}``); real
    timestamps (replaced by the data layer's parsing of them) advance by the experiment's median spacing,
    else by ``step_seconds``.
    """
    checked = validate_rows(table, HISTORY)
    errors = [issue for issue in checked.issues if issue.is_error]
    if errors or checked.frame is None:
        raise HistoryError([_issue_error(issue) for issue in errors])
    typed = checked.frame
    last = table.iloc[-1]
    row: dict[str, Any] = {EXPERIMENT_ID: last[EXPERIMENT_ID], SERVICE: last[SERVICE]}
    for column in CONTEXT_COLUMNS:
        given = context.get(column)
        row[column] = given if given is not None else last.get(column)
    row.update(current)
    same = (typed[EXPERIMENT_ID] == typed[EXPERIMENT_ID].iloc[-1]).to_numpy()
    if checked.relative:
        row[TIMESTAMP] = f"t_{int(typed.loc[same, STEP].max()) + 1}"
    else:
        table[TIMESTAMP] = pd.Series(typed[TIMESTAMP].array, index=table.index)
        stamps = typed.loc[same, TIMESTAMP].sort_values()
        gaps = stamps.diff().dropna()
        gaps = gaps[gaps > pd.Timedelta(0)]
        row[TIMESTAMP] = stamps.iloc[-1] + (
            gaps.median() if len(gaps) else pd.Timedelta(seconds=step_seconds)
        )
    return pd.concat([table, pd.DataFrame([row])], ignore_index=True)


def load_history(
    service: str,
    rows: Sequence[Mapping[str, Any]],
    context: Mapping[str, Any] | None = None,
    current: Mapping[str, Any] | None = None,
    *,
    step_seconds: int = DEFAULT_RELATIVE_STEP_SECONDS,
) -> tuple[pd.DataFrame, list[str]]:
    """(canonical cleaned frame, notes) of a request's history (+ ``current`` as its newest row).

    The frame is what ``loaders.load_rows`` makes of the rows (``t_N`` / absent timestamps at
    ``step_seconds``), every row attributed to ``service``; notes carry the data layer's informational
    issues (e.g. a collection gap treated as missing). ``HistoryError`` when a row breaks a rule.
    """
    step_seconds = max(int(step_seconds), 1)
    table = history_table(service, rows)
    table[SERVICE] = service  # a row naming another service was refused by the request validation
    if current:
        table = _next_row(table, current, context or {}, step_seconds)
    table = _with_context(table, context or {})
    result = load_rows(table, HISTORY, relative_step_seconds=step_seconds)
    if result.errors or result.frame.empty:
        raise HistoryError(
            [_issue_error(issue) for issue in result.errors] or [((HISTORY,), "no rows", None)]
        )
    notes = [f"{field_text(loc)}: {message}" for loc, message, _ in map(_issue_error, result.issues)]
    return result.frame, notes
