"""Token management over HTTP (admin only): create, list, revoke."""

from __future__ import annotations

from aiohttp import web

from runsvc.domain.errors import NotFound
from runsvc.http.keys import SERVICE, VERIFIER
from runsvc.http.routing import Endpoint, decode_body, json_response, principal
from runsvc.service.auth import Permission
from runsvc.service.tokens import issue, list_tokens, revoke
from runsvc.wire.api import Caller, CreatedToken, CreateTokenRequest, TokenList


async def create_token_handler(request: web.Request) -> web.Response:
    body = await decode_body(request, CreateTokenRequest)
    service = request.app[SERVICE]
    issued = await issue(service.pool, body, now=service.clock())
    created = CreatedToken(
        token=issued.token,
        id=issued.id,
        name=issued.name,
        role=issued.role,
        labels=issued.labels,
        expires_at=issued.expires_at,
    )
    return json_response(created, status=201, headers={"Cache-Control": "no-store"})


async def list_tokens_handler(request: web.Request) -> web.Response:
    return json_response(TokenList(tokens=await list_tokens(request.app[SERVICE].pool)))


async def whoami(request: web.Request) -> web.Response:
    who = principal(request)
    permissions = [p.value for p in Permission if p is not Permission.OPEN and who.may(p)]
    return json_response(Caller(name=who.name, role=who.role, permissions=permissions))


async def revoke_token_handler(request: web.Request) -> web.Response:
    token_id = request.match_info["id"]
    outcome = await revoke(request.app[SERVICE].pool, token_id)
    if outcome is None:
        raise NotFound(f"no token {token_id}")
    # This process forgets it now; the others when the announcement reaches them.
    request.app[VERIFIER].forget(token_id)
    return web.Response(status=204)


ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "GET",
        "/api/v1/whoami",
        whoami,
        Permission.READ,
        "Who the token is: its name, role and permissions",
        "tokens",
        responses={200: Caller},
    ),
    Endpoint(
        "POST",
        "/api/v1/tokens",
        create_token_handler,
        Permission.ADMIN,
        "Create a token (its secret is shown this once)",
        "tokens",
        body=CreateTokenRequest,
        responses={201: CreatedToken},
    ),
    Endpoint(
        "GET",
        "/api/v1/tokens",
        list_tokens_handler,
        Permission.ADMIN,
        "List tokens (never their secrets)",
        "tokens",
        responses={200: TokenList},
    ),
    Endpoint(
        "DELETE",
        "/api/v1/tokens/{id}",
        revoke_token_handler,
        Permission.ADMIN,
        "Revoke a token, at once in every process",
        "tokens",
        responses={204: None},
    ),
]
