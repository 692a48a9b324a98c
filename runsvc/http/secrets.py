"""Secrets over HTTP (admin only): set, list, delete. No endpoint ever answers a value:
values leave the service only in a claim's answer, to the executor of an attempt whose
task's env names them."""

from __future__ import annotations

from aiohttp import web

from runsvc.domain.errors import NotFound
from runsvc.http.keys import SECRETS, SERVICE
from runsvc.http.routing import Endpoint, decode_body, decode_query, json_response, principal
from runsvc.service.auth import Permission
from runsvc.wire.api import SecretGroupQuery, SecretList, SecretQuery, SetSecretRequest


async def set_secret(request: web.Request) -> web.Response:
    body = await decode_body(request, SetSecretRequest)
    await request.app[SECRETS].put(
        request.match_info["name"],
        body.group,
        body.value,
        actor=principal(request).name,
        now=request.app[SERVICE].clock(),
    )
    return web.Response(status=204)


async def list_secrets(request: web.Request) -> web.Response:
    query = decode_query(request, SecretQuery)
    found = await request.app[SECRETS].list(query.group)
    return json_response(SecretList(secrets=found), headers={"Cache-Control": "no-store"})


async def delete_secret(request: web.Request) -> web.Response:
    query = decode_query(request, SecretGroupQuery)
    name = request.match_info["name"]
    deleted = await request.app[SECRETS].delete(
        name, query.group, actor=principal(request).name, now=request.app[SERVICE].clock()
    )
    if not deleted:
        raise NotFound(f"no secret {name} in group {query.group}")
    return web.Response(status=204)


ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "PUT",
        "/api/v1/secrets/{name}",
        set_secret,
        Permission.ADMIN,
        "Set a secret (a new version); its value is never shown again",
        "secrets",
        body=SetSecretRequest,
        responses={204: None},
    ),
    Endpoint(
        "GET",
        "/api/v1/secrets",
        list_secrets,
        Permission.ADMIN,
        "List secrets: names, groups, versions, who set them and when; never values",
        "secrets",
        query=SecretQuery,
        responses={200: SecretList},
    ),
    Endpoint(
        "DELETE",
        "/api/v1/secrets/{name}",
        delete_secret,
        Permission.ADMIN,
        "Delete a secret from a group",
        "secrets",
        query=SecretGroupQuery,
        responses={204: None},
    ),
]
