"""`DataIssue`: one problem found in one input, said in one line that names file, row, column and value.

Severity ``error`` means the rows it concerns were not loaded (a whole file, or one experiment of it);
``info`` means the data loaded and the issue only explains a repair (e.g. a collection gap).
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
INFO = "info"


@dataclass(frozen=True)
class DataIssue:
    """One problem in one input. ``row`` is the 1-based data row of the file (the header is not a row)."""

    source: str
    message: str
    column: str | None = None
    row: int | None = None
    value: str | None = None
    severity: str = ERROR
    more_rows: int = 0  # further rows with the same problem in the same column, not listed one by one

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        text = f"{self.source}: "
        if where:
            text += ", ".join(where) + ": "
        text += self.message
        if self.value is not None:
            text += f" '{self.value}'"
        if self.more_rows:
            text += f" (and {self.more_rows} more row{'s' if self.more_rows > 1 else ''})"
        return text

    @property
    def is_error(self) -> bool:
        """True when the data the issue concerns was skipped."""
        return self.severity == ERROR
