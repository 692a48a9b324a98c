"""Endpoints declared once: the same declaration registers the route, guards it with its
permission, decodes its input and documents it in /openapi.json."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from runsvc.domain.errors import BadRequest, Forbidden, Problem, Unauthorized, Unavailable
from runsvc.domain.suggest import unknown_field_hint
from runsvc.http.keys import AUTH_LIMITER, SETTINGS, VERIFIER
from runsvc.infra.deadline import NoAnswer, finish_within
from runsvc.service.auth import Permission, Principal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

PRINCIPAL = web.RequestKey("principal", Principal)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    permission: Permission
    summary: str
    tag: str
    body: type | None = None
    query: type | None = None
    responses: dict[int, type | None] = field(default_factory=dict)
    body_content_type: str = "application/json"
    response_content_type: str = "application/json"
    # Whether the request timeout applies. Long polls, websockets and streamed bodies run
    # as long as their own limits allow (a claim's wait, a log being followed, a large
    # download), so they opt out.
    bounded: bool = True


def register(app: web.Application, endpoints: Sequence[Endpoint]) -> None:
    for endpoint in endpoints:
        app.router.add_route(endpoint.method, endpoint.path, _guarded(endpoint))


def _guarded(endpoint: Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not endpoint.bounded:
            return await serve(request)
        limit = request.app[SETTINGS].request_timeout_s
        try:
            return await finish_within(limit, serve(request))
        except NoAnswer:
            raise Unavailable(
                f"no answer within {limit:g} s: the database or object storage is slow or "
                "not answering; try again (an `idempotency_key` makes a retried create safe)"
            ) from None

    async def serve(request: web.Request) -> web.StreamResponse:
        refuse_nul(request)
        if endpoint.permission is not Permission.OPEN:
            principal = await _authenticate(request)
            if not principal.may(endpoint.permission):
                raise Forbidden(
                    f"the {principal.role} role may not {endpoint.summary[:1].lower()}"
                    f"{endpoint.summary[1:]}"
                )
            request[PRINCIPAL] = principal
        return await endpoint.handler(request)

    handler.__name__ = endpoint.handler.__name__
    return handler


async def _authenticate(request: web.Request) -> Principal:
    """The request's principal. An address over the failed-authentication limit gets
    its tokens checked only when they were verified recently."""
    verifier, limiter = request.app[VERIFIER], request.app[AUTH_LIMITER]
    token = bearer_token(request)
    address = request.remote or ""
    if not verifier.known(token):
        limiter.check(address)
    try:
        return await verifier.verify(token)
    except Unauthorized:
        # Only well-formed tokens are guesses worth braking: a missing or malformed one is
        # refused without looking anything up.
        if verifier.well_formed(token):
            limiter.failed(address)
        raise


_NUL = "\x00"
_NUL_MESSAGE = "NUL characters are not allowed"


def refuse_nul(request: web.Request) -> None:
    """PostgreSQL text cannot hold NUL, so an id, a token or a filter containing one
    names nothing: a 400 here, before anything reaches the database (checked ahead of
    the token, which a websocket may pass as a parameter)."""
    if _NUL in request.path:
        raise BadRequest(f"invalid path: {_NUL_MESSAGE}")
    for name, value in request.query.items():
        if _NUL in name or _NUL in value:
            problem = Problem(path=f"query.{name}".replace(_NUL, ""), message=_NUL_MESSAGE)
            raise BadRequest(f"invalid query parameters: {_NUL_MESSAGE}", [problem])


def _nul_at(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in decoded JSON that holds a NUL."""
    if isinstance(value, str):
        return path if _NUL in value else None
    if isinstance(value, dict):
        children = [(f"{path}.{key}", key, item) for key, item in value.items()]
    elif isinstance(value, list):
        children = [(f"{path}[{i}]", "", item) for i, item in enumerate(value)]
    else:
        return None
    for child, key, item in children:
        found = path if _NUL in key else _nul_at(item, child)
        if found is not None:
            return found
    return None


# Browsers cannot set headers on a websocket upgrade except the subprotocols they offer,
# so a browser offers `runsvc` (which the server picks) and `bearer.<token>` (never
# echoed back). Tokens are `rsv_` and URL-safe base64: every character is allowed there.
WEBSOCKET_PROTOCOL = "runsvc"
_BEARER_PROTOCOL = "bearer."


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return _websocket_token(request)
    return None


def _websocket_token(request: web.Request) -> str | None:
    """The token a websocket upgrade offers as a subprotocol or, as the first version of
    the API had it, as the `token` query parameter (kept for its clients; a URL ends up
    in proxies' logs, so new clients should not use it)."""
    for offered in request.headers.getall("Sec-WebSocket-Protocol", []):
        for protocol in (p.strip() for p in offered.split(",")):
            if protocol.startswith(_BEARER_PROTOCOL) and len(protocol) > len(_BEARER_PROTOCOL):
                return protocol[len(_BEARER_PROTOCOL) :]
    return request.query.get("token")


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


_PATH = re.compile(r" - at `\$(.*)`$")


def problem_from(
    exc: msgspec.ValidationError | msgspec.DecodeError, root: str, type_: type[Any] | None = None
) -> Problem:
    """msgspec's message and its `$.a.b[0]` path as a Problem, the path put under `root`;
    an unknown field of `type_` gets the field probably meant."""
    text = str(exc)
    suffix = ""
    match = _PATH.search(text)
    if match:
        suffix = match.group(1)
        text = text[: match.start()]
    if type_ is not None:
        text += unknown_field_hint(text, type_, suffix)
    return Problem(path=(root + suffix).lstrip(".") or root or "body", message=text)


async def decode_body(request: web.Request, type_: type[T]) -> T:
    """The JSON body as `type_`; a 400 with the offending path when it does not fit."""
    raw = await request.read()
    if not raw:
        raise BadRequest("a JSON body is required")
    try:
        decoded = msgspec.json.decode(raw, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        problem = problem_from(exc, "", type_)
        raise BadRequest(f"invalid request body: {problem.message}", [problem]) from exc
    # JSON can carry NUL only as the escape; PostgreSQL text cannot hold it at all.
    if b"\\u0000" in raw:
        path = _nul_at(msgspec.json.decode(raw), "")
        if path is not None:
            problem = Problem(path=path.lstrip(".") or "body", message=_NUL_MESSAGE)
            raise BadRequest(f"invalid request body: {_NUL_MESSAGE}", [problem])
    return decoded


def decode_query(request: web.Request, type_: type[T]) -> T:
    """Query parameters as `type_` (numbers parsed from strings); 400 when they do not fit.
    Each parameter is given once: a repeat is refused rather than all but one dropped
    (lists, like `types`, are comma-separated)."""
    for name in request.query:
        if len(request.query.getall(name)) > 1:
            problem = Problem(path=f"query.{name}", message="given more than once")
            raise BadRequest(f"invalid query parameters: {name} given more than once", [problem])
    try:
        return msgspec.convert(dict(request.query), type_, strict=False)
    except msgspec.ValidationError as exc:
        problem = problem_from(exc, "query")
        raise BadRequest(f"invalid query parameters: {problem.message}", [problem]) from exc


_encoder = msgspec.json.Encoder()


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_encoder.encode(body), status=status, headers=headers, content_type="application/json"
    )
