"""The HTTP surface of the endpoint as a plain FastAPI app, independent of Ray.

``create_api(backend, token=...)`` builds the app; the Serve ingress (``serve.ingress``) wraps
it, and unit tests drive it with FastAPI's ``TestClient`` and a fake backend. Guards run as
ASGI middleware *before* the body is read: auth (401), content type (415) and body size (413);
validation errors become 422 (400 for malformed JSON) with the offending field path named. A body
nested deeper than ``MAX_JSON_DEPTH`` levels is a 400 saying so (checked only once parsing or
validation failed: a valid request nests 5 levels, so the check costs nothing on the way to a model).

Bounded work per request: an object with more than ``MAX_OBJECT_KEYS`` keys is refused while the JSON is
parsed (413, before any validation), a 4xx body lists at most ``MAX_LISTED_ERRORS`` field errors with
their texts truncated, a body that takes longer than ``MAX_BODY_SECONDS`` to arrive is a 408, and at most
``max_concurrent_batches`` batches run at once per replica (more are shed with 503 + ``Retry-After``).
Every 503 carries ``Retry-After``. The request *headers* are read by the Serve proxy (uvicorn, or HAProxy
in Kubernetes) before this app sees anything: see ``serve/config.yaml`` for what bounds them.

With an ``answer_cache`` (``serve.answer_cache``; the ingress passes one, TTL 2 s by default) a question
answered moments ago is answered again without the backend: after the guards, a body identical byte for
byte to one answered within the TTL is answered before FastAPI parses or validates it; any other spelling
of the same question is found by its canonical form after validation; identical concurrent misses share
one backend call. Such answers carry ``X-Mora-Cache: hit`` (a backend call's: ``miss``); nothing else in
the response differs, and errors are never cached.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from serve.answer_cache import CACHE_HEADER, AnswerCache, cache_key, encode_json
from serve.api import (
    MAX_BATCH_REQUESTS,
    MAX_BODY_BYTES,
    MAX_BODY_SECONDS,
    MAX_HISTORY_ROWS,
    MAX_JSON_DEPTH,
    MAX_LISTED_ERRORS,
    MAX_OBJECT_KEYS,
    RETRY_AFTER_S,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    FieldError,
    HealthResponse,
    RecommendationRequest,
    RecommendationResponse,
    ServiceInfo,
    ServicesResponse,
)

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
#: The routes that take a JSON body: only these are held to the content-type and size rules, so a POST to
#: any other path gets FastAPI's own 404 / 405 rather than a misleading 415.
BODY_PATHS = frozenset({"/v1/recommendations", "/v1/recommendations:batch"})
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 415, 422, 503)
}
#: The recommendation routes document the answer cache's header on their 200s.
_ANSWER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "headers": {
            CACHE_HEADER: {
                "description": "Sent when the ingress's answer cache is on: `hit` (answered from the cache) "
                "or `miss` (answered by a model call)",
                "schema": {"type": "string", "enum": ["hit", "miss"]},
            }
        }
    },
    **_ERROR_RESPONSES,
}
MAX_CONCURRENT_BATCHES = 4  # per ingress replica; a batch may carry 100 requests
MAX_FIELD_CHARS = 200  # a field path or message in an error body is cut at this length


@dataclass(frozen=True)
class ModelOutcome:
    """What the model side answers for one request: a recommendation (as JSON) or an error."""

    status: int
    recommendation: dict[str, Any] | None = None
    error: str | None = None


class RecommendationBackend(Protocol):
    """What the HTTP layer needs from the rest of the system."""

    async def recommend(self, service: str, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        """Answer ``requests`` (all for ``service``), one outcome each, in order."""
        ...

    async def recommend_batch(self, requests: Sequence[RecommendationRequest]) -> list[ModelOutcome]:
        """Answer requests for any mix of services, one outcome each, in order."""
        ...

    async def list_services(self) -> list[ServiceInfo]:
        """Every published service with its LATEST version."""
        ...

    async def registry_problem(self) -> str | None:
        """None when the registry is reachable, otherwise why not."""
        ...


class ApiError(Exception):
    """An error with an HTTP status and a message meant for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _cut(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_json(status: int, detail: str, errors: list[FieldError] | None = None) -> JSONResponse:
    body = ErrorResponse(detail=_cut(detail, 4 * MAX_FIELD_CHARS), errors=(errors or [])[:MAX_LISTED_ERRORS])
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif status == 503:  # overload or a replica being replaced: worth retrying shortly
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


class TooManyKeysError(ValueError):
    """A JSON object of the body has more keys than any valid request could (``MAX_OBJECT_KEYS``)."""


def _bounded_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_OBJECT_KEYS:
        raise TooManyKeysError(f"a JSON object with {len(pairs)} keys (the limit is {MAX_OBJECT_KEYS})")
    return dict(pairs)


class BoundedJsonRequest(Request):
    """Parses the body refusing absurdly wide objects while parsing, before validation builds one
    error per unknown key (200k keys made a 14 MB 422)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=_bounded_object)
        return self._json


EarlyAnswer = Callable[[Request], Awaitable[Response | None]]


class BoundedJsonRoute(APIRoute):
    """The routes of the API read their body through ``BoundedJsonRequest``.

    ``early_answer`` (set on a route after it is made) may answer a request before FastAPI parses and
    validates its body (the answer cache's raw-body hits); None lets the request through as usual.
    """

    early_answer: EarlyAnswer | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            bounded_request = BoundedJsonRequest(request.scope, request.receive)
            early = self.early_answer
            if early is not None:
                response = await early(bounded_request)
                if response is not None:
                    return response
            return await handler(bounded_request)

        return bounded


class GuardMiddleware:
    """Auth, content type and body size, checked before FastAPI reads a byte of the body."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_body_seconds: float = MAX_BODY_SECONDS,
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.max_body_seconds = max_body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a route prefix (e.g. /secured)
            path = path[len(root) :] or "/"
        problem = self._check(scope.get("method", "GET"), path, headers)
        if problem is not None:
            await problem(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _check(self, method: str, path: str, headers: dict[str, str]) -> JSONResponse | None:
        if self.token is not None and path not in OPEN_PATHS:
            scheme, _, presented = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not presented:
                return _error_json(401, "missing bearer token: send 'Authorization: Bearer <token>'")
            if not hmac.compare_digest(presented.strip().encode(), self.token):
                return _error_json(401, "invalid bearer token")
        if method == "POST" and path in BODY_PATHS:
            content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if content_type != "application/json" and not content_type.endswith("+json"):
                shown = content_type or "none"
                return _error_json(415, f"Content-Type must be application/json (got {shown})")
            length = headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    return _error_json(400, f"invalid Content-Length header {length[:20]!r}")
                if int(length) > self.max_body_bytes:
                    return _error_json(
                        413,
                        f"request body of {int(length)} bytes exceeds the limit of {self.max_body_bytes} bytes",
                    )
        return None

    def _limited(self, receive: Receive) -> Receive:
        """Count streamed body bytes too (chunked uploads carry no Content-Length), and give the
        whole body ``max_body_seconds`` to arrive (a slow sender gets 408, its connection is freed)."""
        seen = 0
        limit = self.max_body_bytes
        deadline_at = asyncio.get_running_loop().time() + self.max_body_seconds
        complete = False

        async def wrapped() -> Message:
            nonlocal seen, complete
            if complete:  # after the body only a disconnect can come: wait for it as long as it takes
                return await receive()
            try:
                async with asyncio.timeout_at(deadline_at):  # no extra task per message, unlike wait_for
                    message = await receive()
            except TimeoutError:
                # FastAPI re-raises HTTPException from body reading as is.
                raise HTTPException(
                    408, f"request body not received within {self.max_body_seconds:g} s"
                ) from None
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return wrapped


def field_path(loc: Sequence[int | str]) -> str:
    """('body', 'history', 3, 'cpu_cores_value') -> 'history[3].cpu_cores_value'."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def _describe(error: dict[str, Any]) -> FieldError:
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    if kind == "json_invalid":
        position = loc[1] if len(loc) > 1 else "?"
        reason = (error.get("ctx") or {}).get("error", "")
        return FieldError(
            field="body", message=f"invalid JSON at character {position}: {reason}".rstrip(": ")
        )
    message = str(error.get("msg", "invalid value"))
    value = error.get("input")
    if kind == "missing":
        message = "field required" if len(loc) > 1 else "request body is required"
    elif isinstance(value, (int, float, str, bool)):
        shown = repr(value)
        message += f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
    return FieldError(field=_cut(field_path(loc)), message=_cut(message))


def deeper_than(value: Any, limit: int) -> bool:
    """True when parsed JSON ``value`` nests objects / arrays more than ``limit`` levels deep."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def too_deep_response() -> JSONResponse:
    message = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    return _error_json(400, f"invalid request: body: {message}", [FieldError(field="body", message=message)])


def unparseable_body_response(exc: StarletteHTTPException) -> JSONResponse | None:
    """400 naming the problem when FastAPI could not parse the body (it says only "error parsing")."""
    cause = exc.__cause__
    if isinstance(cause, TooManyKeysError):
        return _error_json(
            413, f"invalid request: body: {cause}", [FieldError(field="body", message=str(cause))]
        )
    if isinstance(cause, RecursionError):  # the JSON parser's own nesting limit (far above ours)
        return too_deep_response()
    if isinstance(cause, UnicodeDecodeError):
        message = f"not UTF-8 text (byte {cause.start})"
        return _error_json(
            400, f"invalid request: body: {message}", [FieldError(field="body", message=message)]
        )
    return None


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field (400 when the body is not JSON at all, or nested too deeply)."""
    if deeper_than(exc.body, MAX_JSON_DEPTH):
        return too_deep_response()
    raw = exc.errors()
    errors = [_describe(dict(error)) for error in raw[:MAX_LISTED_ERRORS]]
    status = 400 if any(error.get("type") == "json_invalid" for error in raw[:MAX_LISTED_ERRORS]) else 422
    shown = _cut("; ".join(f"{error.field}: {error.message}" for error in errors[:5]), 3 * MAX_FIELD_CHARS)
    more = f" (and {len(raw) - 5} more" if len(raw) > 5 else ""
    if len(raw) > MAX_LISTED_ERRORS:
        more += f"; the first {MAX_LISTED_ERRORS} are listed"
    more += ")" if more else ""
    return _error_json(status, f"invalid request: {shown}{more}", errors)


def _cache_description(cache: AnswerCache | None) -> str:
    if cache is None or not cache.enabled:
        return ""
    return (
        f" Answers to questions without `history` are cached for {cache.ttl_s:g} s per ingress replica (only "
        "plain 200 answers; errors and degraded answers never): a recommendation changes only when a model "
        "version is published or the service's recent rows are read again, which the model replicas pick up "
        "every reload interval / history max age, and the TTL is at most both, so a change shows up at most "
        f"{cache.ttl_s:g} s later than without the cache. `{CACHE_HEADER}: hit` marks an answer from the "
        f"cache, `{CACHE_HEADER}: miss` one from a model call (identical concurrent requests share one call)."
    )


def _answer_response(body: bytes, cache_state: str) -> Response:
    """A recommendation already encoded (as ``JSONResponse`` would), marked hit or miss."""
    return Response(body, media_type="application/json", headers={CACHE_HEADER: cache_state})


def create_api(
    backend: RecommendationBackend,
    *,
    token: str | None = None,
    max_concurrent_batches: int = MAX_CONCURRENT_BATCHES,
    max_body_seconds: float = MAX_BODY_SECONDS,
    answer_cache: AnswerCache | None = None,
) -> FastAPI:
    """The FastAPI app of the endpoint, bound to ``backend``; ``answer_cache`` (``serve.answer_cache``)
    answers repeated questions without asking ``backend`` (None or a zero TTL: every question is asked)."""
    cache = answer_cache if answer_cache is not None and answer_cache.enabled else None
    api = FastAPI(
        title="MOrA recommendations",
        version="1",
        description=(
            "CPU, memory and replica recommendations for every service of the fleet. "
            f"Limits: {MAX_BATCH_REQUESTS} requests per batch, {MAX_HISTORY_ROWS} history rows per request, "
            f"{MAX_BODY_BYTES} bytes per body. Send `Authorization: Bearer <token>` when a token is configured."
            + _cache_description(cache)
        ),
    )
    api.router.route_class = BoundedJsonRoute
    bearer = HTTPBearer(auto_error=False, description="Required when MORA_SERVE_TOKEN is set")
    batches_running = 0

    async def documented_auth(_: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        """Declares the scheme in OpenAPI; GuardMiddleware enforces it before the body is read."""

    @api.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @api.exception_handler(HTTPException)
    async def _on_http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error_json(exc.status_code, str(exc.detail))

    @api.exception_handler(StarletteHTTPException)
    async def _on_routing_http(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's own errors (body parsing, 404, 405): a body it could not parse is named."""
        return unparseable_body_response(exc) or await http_exception_handler(request, exc)

    @api.exception_handler(ApiError)
    async def _on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_json(exc.status, exc.detail)

    @api.exception_handler(Exception)
    async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error while answering a request")
        return _error_json(500, f"internal error ({type(exc).__name__}); see the server log")

    @api.post(
        "/v1/recommendations",
        response_model=RecommendationResponse,
        responses=_ANSWER_RESPONSES,
        dependencies=[Security(documented_auth)],
        summary="Recommend CPU, memory and replicas for one service",
    )
    async def recommend(body: RecommendationRequest, request: Request) -> Response:
        key = cache_key(body) if cache is not None else None
        if cache is None or key is None:
            outcome = (await backend.recommend(body.service, [body]))[0]
            if outcome.status != 200 or outcome.recommendation is None:
                raise ApiError(outcome.status, outcome.error or "no recommendation")
            return JSONResponse(outcome.recommendation)
        raw = await request.body()  # already read: the alias of this spelling
        cached = cache.get(key)
        if cached is not None:
            cache.alias(raw, key)
            return _answer_response(cached, "hit")

        async def ask() -> ModelOutcome:
            return (await backend.recommend(body.service, [body]))[0]

        outcome, encoded = await cache.fetch(key, ask)
        if outcome.status != 200 or outcome.recommendation is None:
            raise ApiError(outcome.status, outcome.error or "no recommendation")
        if encoded is None:  # not stored (degraded, say): encoded here, as JSONResponse would
            encoded = encode_json(outcome.recommendation)
        else:
            cache.alias(raw, key)
        return _answer_response(encoded, "miss")

    async def answer_known_body(request: Request) -> Response | None:
        """A body seen moments ago, byte for byte, answered before it is parsed and validated."""
        assert cache is not None
        try:
            raw = await request.body()
        except HTTPException:  # 408 / 413 from the guard: reported as FastAPI would
            raise
        except Exception:  # anything else: FastAPI's own handling reports it
            return None
        cached = cache.by_body(raw)
        return None if cached is None else _answer_response(cached, "hit")

    @api.post(
        "/v1/recommendations:batch",
        response_model=BatchResponse,
        responses=_ANSWER_RESPONSES,
        dependencies=[Security(documented_auth)],
        summary=f"Up to {MAX_BATCH_REQUESTS} recommendations in one call, answered in order",
    )
    async def recommend_batch(body: BatchRequest) -> JSONResponse:
        nonlocal batches_running
        if batches_running >= max_concurrent_batches:  # shed, rather than queue behind them
            raise ApiError(503, f"busy: {batches_running} batches are being answered, retry shortly")
        batches_running += 1
        try:
            outcomes, hits = await batch_outcomes(body.requests)
        finally:
            batches_running -= 1
        results = [
            {
                "index": index,
                "service": request.service,
                "status": outcome.status,
                "recommendation": outcome.recommendation,
                "error": outcome.error,
            }
            for index, (request, outcome) in enumerate(zip(body.requests, outcomes, strict=True))
        ]
        if cache is None:
            return JSONResponse({"results": results})
        state = "hit" if hits == len(outcomes) else "miss"  # hit: every answer came from the cache
        return JSONResponse({"results": results}, headers={CACHE_HEADER: state})

    async def batch_outcomes(requests: Sequence[RecommendationRequest]) -> tuple[list[ModelOutcome], int]:
        """The batch's outcomes, those in the answer cache taken from it (one call for the others),
        and how many were."""
        if cache is None:
            return await backend.recommend_batch(requests), 0
        outcomes: list[ModelOutcome | None] = [None] * len(requests)
        keys = [cache_key(request) for request in requests]
        for index, key in enumerate(keys):
            cached = cache.get(key) if key is not None else None
            if cached is not None:
                outcomes[index] = ModelOutcome(200, json.loads(cached))
        hits = sum(outcome is not None for outcome in outcomes)
        asked = [index for index, outcome in enumerate(outcomes) if outcome is None]
        if asked:
            started = cache.now()
            answers = await backend.recommend_batch([requests[index] for index in asked])
            for index, answer in zip(asked, answers, strict=True):
                outcomes[index] = answer
                key = keys[index]
                if key is not None:
                    cache.put(key, answer, started)
        return [outcome for outcome in outcomes if outcome is not None], hits

    @api.get(
        "/v1/services",
        response_model=ServicesResponse,
        responses=_ERROR_RESPONSES,
        dependencies=[Security(documented_auth)],
        summary="Published services with their LATEST version, training time and metrics",
    )
    async def services() -> ServicesResponse:
        problem = await backend.registry_problem()
        if problem is not None:
            raise ApiError(503, f"model registry unavailable: {problem}")
        return ServicesResponse(services=await backend.list_services())

    @api.get(
        "/healthz",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse}},
        summary="Ready when the model registry is reachable",
    )
    async def healthz() -> JSONResponse:
        problem = await backend.registry_problem()
        if problem is None:
            return JSONResponse(HealthResponse(status="ok", registry="reachable").model_dump())
        # /healthz needs no credential: the problem (which may name the S3 endpoint) goes to the log only
        logger.error("health check: model registry unreachable: %s", problem)
        body = HealthResponse(
            status="unavailable",
            registry="unreachable",
            detail="the model registry cannot be reached (the replica's log says why)",
        )
        return JSONResponse(body.model_dump(), status_code=503)

    if cache is not None:
        for route in api.routes:
            if isinstance(route, BoundedJsonRoute) and route.path == "/v1/recommendations":
                route.early_answer = answer_known_body
    api.add_middleware(GuardMiddleware, token=token, max_body_seconds=max_body_seconds)  # type: ignore[arg-type]
    return api
