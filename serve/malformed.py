"""A table of malformed requests and what the endpoint must answer to each.

Shared by the unit tests (FastAPI TestClient, fake backend) and the integration tests (the real
Serve deployment), so both check the same promises: every bad request gets a 4xx whose message
names the offending field. ``{service}`` in a body is replaced by a published service name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from serve.api import MAX_BATCH_REQUESTS, MAX_BODY_BYTES, MAX_HISTORY_ROWS, MAX_JSON_DEPTH, MAX_OBJECT_KEYS


@dataclass(frozen=True)
class MalformedCase:
    """One bad request: how to send it and what the answer must contain."""

    name: str
    status: int
    mentions: str  # text the error message must contain (usually the field path)
    body: Any = None  # JSON-able body; ignored when ``raw`` is set
    raw: bytes | None = None
    path: str = "/v1/recommendations"
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})

    def payload(self, service: str) -> bytes:
        """The exact bytes to send, with ``{service}`` filled in."""
        if self.raw is not None:
            return self.raw.replace(b"{service}", service.encode())
        text = json.dumps(self.body, allow_nan=True)
        return text.replace("{service}", service).encode()


def _ok(**extra: Any) -> dict[str, Any]:
    return {"service": "{service}", **extra}


def _history(rows: int) -> list[dict[str, float]]:
    return [{"cpu_cores_value": 0.01, "mem_bytes_value": 5e7} for _ in range(rows)]


def _nested(depth: int) -> bytes:
    """A request whose ``context`` is ``depth`` arrays deep."""
    return b'{"service":"{service}","context":' + b"[" * depth + b"]" * depth + b"}"


MALFORMED_CASES: tuple[MalformedCase, ...] = (
    MalformedCase("unknown service", 404, "no-such-service", body={"service": "no-such-service"}),
    MalformedCase("missing service", 422, "service", body={"context": {"load_users": 5}}),
    MalformedCase("service wrong type", 422, "service", body={"service": 42}),
    MalformedCase("service with path traversal", 422, "service", body={"service": "../etc/passwd"}),
    MalformedCase("service upper case", 422, "service", body={"service": "FrontEnd"}),
    MalformedCase("empty body object", 422, "service", body={}),
    MalformedCase("body is a list", 422, "body", body=[1, 2]),
    MalformedCase(
        "load_users NaN",
        422,
        "context.load_users",
        raw=b'{"service":"{service}","context":{"load_users":NaN}}',
    ),
    MalformedCase(
        "load_users infinite",
        422,
        "context.load_users",
        raw=b'{"service":"{service}","context":{"load_users":Infinity}}',
    ),
    MalformedCase("load_users negative", 422, "context.load_users", body=_ok(context={"load_users": -5})),
    MalformedCase(
        "load_users out of range", 422, "context.load_users", body=_ok(context={"load_users": 1e12})
    ),
    MalformedCase("load_users string", 422, "context.load_users", body=_ok(context={"load_users": "fifty"})),
    MalformedCase(
        "replica_count fractional", 422, "context.replica_count", body=_ok(context={"replica_count": 1.5})
    ),
    MalformedCase(
        "replica_count negative", 422, "context.replica_count", body=_ok(context={"replica_count": -1})
    ),
    MalformedCase(
        "replica_count huge", 422, "context.replica_count", body=_ok(context={"replica_count": 10**9})
    ),
    MalformedCase(
        "replica_count boolean", 422, "context.replica_count", body=_ok(context={"replica_count": True})
    ),
    MalformedCase("context unknown field", 422, "context.load_user", body=_ok(context={"load_user": 5})),
    MalformedCase("context not an object", 422, "context", body=_ok(context=[5, 2])),
    MalformedCase(
        "current negative cpu", 422, "current.cpu_cores_value", body=_ok(current={"cpu_cores_value": -0.1})
    ),
    MalformedCase(
        "current negative memory", 422, "current.mem_bytes_value", body=_ok(current={"mem_bytes_value": -1.0})
    ),
    MalformedCase(
        "current NaN",
        422,
        "current.cpu_cores_value",
        raw=b'{"service":"{service}","current":{"cpu_cores_value":NaN}}',
    ),
    MalformedCase("current unknown metric", 422, "current.cpu", body=_ok(current={"cpu": 0.1})),
    MalformedCase("history not a list", 422, "history", body=_ok(history={"cpu_cores_value": 0.1})),
    MalformedCase(
        "history row bad value",
        422,
        "history[1].cpu_cores_value",
        body=_ok(history=[{"cpu_cores_value": 0.1}, {"cpu_cores_value": "lots"}]),
    ),
    MalformedCase(
        "history row negative restarts",
        422,
        "history[0].pod_restarts_value",
        body=_ok(history=[{"pod_restarts_value": -3.0}]),
    ),
    MalformedCase(
        "history bad timestamp",
        422,
        "history[0].timestamp",
        body=_ok(history=[{"timestamp": "yesterday-ish"}]),
    ),
    MalformedCase(
        "history row negative cpu",
        422,
        "history[3].cpu_cores_value: negative value",
        body=_ok(history=[*_history(3), {"cpu_cores_value": -0.1}]),
    ),
    MalformedCase(
        "history row infinite raw metric",
        422,
        "history[1].cpu_cores_value: infinite value",
        raw=b'{"service":"{service}","history":[{"cpu_cores_value":0.1},{"cpu_cores_value":Infinity}]}',
    ),
    MalformedCase(
        "history row infinite raw metric as string",
        422,
        "history[0].mem_bytes_value: infinite value",
        body=_ok(history=[{"cpu_cores_value": 0.1, "mem_bytes_value": "inf"}]),
    ),
    MalformedCase(
        "history row boolean value",
        422,
        "history[0].cpu_cores_value",
        body=_ok(history=[{"cpu_cores_value": True}]),
    ),
    MalformedCase(
        "history relative and absolute timestamps mixed",
        422,
        "history[0].timestamp: unparseable timestamp",
        body=_ok(history=[{"timestamp": "t_0"}, {"timestamp": "2026-01-01T00:00:15Z"}]),
    ),
    MalformedCase(
        "history timestamp on some rows only",
        422,
        "history[1].timestamp: missing timestamp",
        body=_ok(
            history=[{"timestamp": "2026-01-01T00:00:00Z", "cpu_cores_value": 0.1}, {"cpu_cores_value": 0.1}]
        ),
    ),
    MalformedCase(
        "history duplicate timestamp",
        422,
        "history[2].timestamp: duplicate timestamp",
        body=_ok(history=[{"timestamp": "t_0"}, {"timestamp": "t_1"}, {"timestamp": "t_1"}]),
    ),
    MalformedCase(
        "history row of another service",
        422,
        "history[0].service",
        body=_ok(history=[{"service": "not-this-one", "cpu_cores_value": 0.1}]),
    ),
    MalformedCase("too many history rows", 422, "history", body=_ok(history=_history(MAX_HISTORY_ROWS + 1))),
    MalformedCase("invalid JSON", 400, "JSON", raw=b'{"service": "{service}",'),
    MalformedCase("JSON nested 100,000 levels", 400, "body: JSON nested deeper than", raw=_nested(100_000)),
    MalformedCase(
        "JSON nested past the limit", 400, "body: JSON nested deeper than", raw=_nested(MAX_JSON_DEPTH + 1)
    ),
    MalformedCase(
        "object with absurdly many keys",
        413,
        f"the limit is {MAX_OBJECT_KEYS}",
        body=_ok(current={f"unknown_{i}": 1 for i in range(MAX_OBJECT_KEYS * 4)}),
    ),
    MalformedCase("body not UTF-8", 400, "body: not UTF-8", raw=b'{"service":"{service}","x":"\xff"}'),
    MalformedCase("empty body", 422, "body", raw=b""),
    MalformedCase(
        "wrong content type",
        415,
        "Content-Type",
        raw=b"service={service}",
        headers={"content-type": "text/plain"},
    ),
    MalformedCase("no content type", 415, "Content-Type", raw=b'{"service":"{service}"}', headers={}),
    MalformedCase(
        "oversized body",
        413,
        "limit",
        raw=b'{"service":"{service}","pad":"' + b"x" * (MAX_BODY_BYTES + 10) + b'"}',
    ),
    MalformedCase("batch empty", 422, "requests", path="/v1/recommendations:batch", body={"requests": []}),
    MalformedCase(
        "batch too large",
        422,
        "requests",
        path="/v1/recommendations:batch",
        body={"requests": [_ok() for _ in range(MAX_BATCH_REQUESTS + 1)]},
    ),
    MalformedCase(
        "batch item invalid",
        422,
        "requests[1].context.load_users",
        path="/v1/recommendations:batch",
        body={"requests": [_ok(), _ok(context={"load_users": -1})]},
    ),
    MalformedCase(
        "batch missing requests", 422, "requests", path="/v1/recommendations:batch", body={"service": "x"}
    ),
)
