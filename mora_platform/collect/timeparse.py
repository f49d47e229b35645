"""Prometheus-style durations ("30s", "7d", "1h30m") and the time bounds of `mora collect`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``7d`` or ``1h30m``; a bare number means seconds."""
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    else:
        parts = _DURATION_RE.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 5m, 2h, 7d, 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return seconds


def parse_time(text: str, now: datetime) -> datetime:
    """An absolute time (ISO 8601 or unix seconds), ``now``, or a duration meaning that long before ``now``."""
    value = text.strip()
    if value.lower() == "now":
        return now
    if re.fullmatch(r"\d{9,}(?:\.\d+)?", value):
        return datetime.fromtimestamp(float(value), tz=UTC)
    try:
        return now - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use a duration before now (7d), an ISO time "
            "(2026-01-05T00:00:00Z), unix seconds or 'now'"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
