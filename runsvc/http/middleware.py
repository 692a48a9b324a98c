"""The request pipeline: request id and log context, metrics, and the one place where
errors become responses."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import structlog
from aiohttp import web

from eventlog.appender import CONNECTION_ERRORS
from eventlog.errors import PayloadTooLarge, StoreUnavailable
from runsvc.domain.errors import ServiceError
from runsvc.http.keys import IN_FLIGHT, SETTINGS
from runsvc.http.metrics import METRICS
from runsvc.http.routing import Handler, json_response
from runsvc.infra.logs import Throttled
from runsvc.wire.api import ErrorBody, Problem

log = structlog.get_logger("runsvc.http")
_unavailable_log = Throttled("runsvc.http")
RETRY_AFTER_S = 5
"""What a 503 asks clients to wait before they try again."""
# The database is down, restarting or unreachable: the request may well work later.
_UNAVAILABLE: tuple[type[BaseException], ...] = (StoreUnavailable, *CONNECTION_ERRORS)

REQUEST_ID = web.RequestKey("request_id", str)


@web.middleware
async def track_in_flight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests in progress per connection, so the connection cap can tell the
    idle connections (see runsvc.http.serving)."""
    counts = request.app[IN_FLIGHT]
    key = id(request.transport)
    counts[key] += 1
    try:
        return await handler(request)
    finally:
        counts[key] -= 1
        if counts[key] <= 0:
            del counts[key]


_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def error_response(
    status: int, code: str, message: str, details: list[Problem] | None = None
) -> web.Response:
    return json_response(
        ErrorBody(code=code, message=message, details=details or []), status=status
    )


def route_label(request: web.Request) -> str:
    """The matched route's pattern, never the raw path: metric labels stay bounded."""
    route = request.match_info.route
    resource = route.resource
    if resource is None or request.match_info.http_exception is not None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    supplied = request.headers.get("X-Request-Id", "")
    request_id = supplied if _SAFE_REQUEST_ID.match(supplied) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        return response
    finally:
        request.app[METRICS].http.observe(
            request.method, route_label(request), status, time.perf_counter() - started
        )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Typed domain errors -> their status and the API error body; aiohttp's own HTTP
    errors (unknown route, body too large) -> the same body; anything else -> 500 with a
    fixed message, the cause logged with the request id and never sent."""
    try:
        return await handler(request)
    except ServiceError as exc:
        details = [Problem(path=p.path, message=p.message) for p in getattr(exc, "details", [])]
        response = error_response(exc.status, exc.code, exc.message, details)
        retry_after = getattr(exc, "retry_after", RETRY_AFTER_S if exc.status == 503 else None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "error")
        message = {
            404: f"no route for {request.method} {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
            413: "request body is over the configured limit",
        }.get(exc.status, exc.reason)
        response = error_response(exc.status, code, message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except PayloadTooLarge as exc:
        # The request fit the body limit but one event it would record does not.
        return error_response(413, "too_large", f"too large to record: {exc}")
    except _UNAVAILABLE as exc:
        _unavailable_log.warning(
            "database unavailable", method=request.method, path=request.path, error=repr(exc)
        )
        response = error_response(503, "unavailable", "the database is unavailable; try again")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response
    except Exception:
        log.exception("unexpected error", method=request.method, path=request.path)
        return error_response(500, "internal", "internal server error")


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse an announced over-limit body before reading any of it. Artifact uploads are
    streamed to object storage, never held, so the limit does not apply to them."""
    if request.method == "PUT" and "/artifacts/" in request.path:
        return await handler(request)
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return error_response(413, "too_large", f"request body is over the limit of {limit} bytes")
    return await handler(request)
