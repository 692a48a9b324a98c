"""Every endpoint × every role, against docs/api.md's auth section.

The endpoints come from the application's own table (`all_endpoints()`), so an endpoint
added later is checked without touching this file. What each role may do is written here
from docs/api.md, independently of `runsvc.auth.GRANTS`, so a wrong grant or a wrongly declared
permission shows up as a failing cell of the matrix.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import WSServerHandshakeError

from runsvc.app import all_endpoints
from runsvc.http.routing import Endpoint
from runsvc.service.auth import ROLES, Permission
from runsvc.wire.executor import CLAIM_PATH
from tests.fixtures.service import Service

OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/ui/", "/ui/{path:.+}"}
)

# docs/api.md: admin everything (tokens only admin); submitter create and act on runs, and
# read; reader read and subscribe; executor the executor endpoints only.
MAY: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission) - {Permission.OPEN},
    "submitter": frozenset({Permission.SUBMIT, Permission.READ}),
    "reader": frozenset({Permission.READ}),
    "executor": frozenset({Permission.EXECUTE}),
}

# Placeholders for path parameters: after the auth check they lead to 404s and 400s,
# which is all an allowed role needs to show.
PLACEHOLDERS = {"id": "NO-SUCH-RUN", "task": "t", "lease": "no-lease", "task_id": "no-task"}
PLACEHOLDERS["name"] = "NO_SUCH_SECRET"
PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")

# A claim with the default wait would be held open for 20 s by the roles that may claim.
BODIES: dict[str, Any] = {CLAIM_PATH: {"executor": "roles-test", "wait": "0s"}}

UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}

UNKNOWN_TOKENS = {
    "unknown": "rsv_000000000000_not-a-secret-anyone-issued",
    "malformed": "not-a-runsvc-token",
}


def endpoint_class(endpoint: Endpoint) -> Permission:
    """The class docs/api.md puts an endpoint in, judged from its method and path alone."""
    path = endpoint.path
    if path in OPEN_PATHS:
        return Permission.OPEN
    if path.startswith("/api/v1/executor/"):
        return Permission.EXECUTE
    if path.startswith(("/api/v1/tokens", "/api/v1/secrets")):
        return Permission.ADMIN  # "Admin only", whatever the method
    if endpoint.method == "GET":
        return Permission.READ
    if path.startswith("/api/v1/simulations"):
        # A preview that writes nothing: readers may simulate.
        return Permission.READ
    if path.startswith(("/api/v1/runs", "/api/v1/schedules")):
        return Permission.SUBMIT
    if path.startswith("/api/v1/webhooks"):
        return Permission.SUBMIT  # managing webhooks; reading them is a GET
    raise AssertionError(f"classify {endpoint.method} {path} against docs/api.md in this test")


def concrete(path: str) -> str:
    return PARAM.sub(lambda m: "a.txt" if m.group(1) == "path" else PLACEHOLDERS[m.group(1)], path)


def is_websocket(endpoint: Endpoint) -> bool:
    return 101 in endpoint.responses


async def call(service: Service, endpoint: Endpoint, token: str | None) -> tuple[int, Any]:
    """One request as `token` would make it: the status and the JSON body, if any."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    path = concrete(endpoint.path)
    if is_websocket(endpoint):
        try:
            ws = await service.client.ws_connect(path, headers=headers)
        except WSServerHandshakeError:
            # Refused: ask again as a plain request with the upgrade headers, whose
            # refusal carries the error body a websocket client does not expose.
            headers.update(UPGRADE)
        else:
            await ws.close()
            return 101, None
    kwargs: dict[str, Any] = {"headers": headers}
    if endpoint.method in ("POST", "PUT"):
        if endpoint.body_content_type == "application/json":
            kwargs["json"] = BODIES.get(endpoint.path, {})
        else:
            kwargs["data"] = b"some bytes"
    async with service.client.request(endpoint.method, path, **kwargs) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body


def judge(endpoint: Endpoint, who: str, status: int, body: Any) -> str | None:
    """What is wrong with this answer to `who`, or None."""
    cls = endpoint_class(endpoint)
    if cls is Permission.OPEN or cls in MAY.get(who, ()):
        return f"{status}, expected to be let through" if status in (401, 403, 500) else None
    expected, code = (403, "forbidden") if who in MAY else (401, "unauthorized")
    if status != expected:
        return f"{status}, expected {expected}"
    if not (isinstance(body, dict) and body.get("code") == code and body.get("message")):
        return f"{status} without the error body: {body!r}"
    return None


async def test_every_role_against_every_endpoint(service: Service) -> None:
    """No token or an unknown one gets 401 on every protected endpoint; a role that may
    not use an endpoint gets 403 with the error body; a role that may is let through (any
    status but 401/403 and no 500); open endpoints answer anyone. All cells are checked
    before failing, so a failure lists every wrong cell."""
    endpoints = all_endpoints()
    assert any(is_websocket(e) for e in endpoints)
    assert {endpoint_class(e) for e in endpoints} == set(Permission)
    wrong: list[str] = []
    for endpoint in endpoints:
        cls = endpoint_class(endpoint)
        name = f"{endpoint.method} {endpoint.path}"
        if endpoint.permission is not cls:
            wrong.append(f"{name}: declared {endpoint.permission}, docs/api.md says {cls}")
        callers: dict[str, str | None] = {"no token": None, **UNKNOWN_TOKENS}
        callers.update({role: service.tokens[role] for role in ROLES})
        for who, token in callers.items():
            status, body = await call(service, endpoint, token)
            problem = judge(endpoint, who, status, body)
            if problem:
                wrong.append(f"{name} as {who}: {problem}")
    assert not wrong, "\n".join(wrong)


async def test_websocket_token_as_a_query_parameter(service: Service) -> None:
    """Browsers cannot set headers on an upgrade, so the subscription takes the token as
    `?token=`, with the same role checks; other endpoints ignore that parameter."""
    ws = await service.client.ws_connect(f"/api/v1/events/ws?token={service.tokens['reader']}")
    await ws.close()
    for token, status in ((service.tokens["executor"], 403), (UNKNOWN_TOKENS["unknown"], 401)):
        with pytest.raises(WSServerHandshakeError) as refused:
            await service.client.ws_connect(f"/api/v1/events/ws?token={token}")
        assert refused.value.status == status
    page = await service.client.get(f"/api/v1/events?token={service.tokens['reader']}")
    assert page.status == 401
    assert (await page.json())["code"] == "unauthorized"


async def test_websocket_token_as_a_subprotocol(service: Service) -> None:
    """A browser can keep the token out of the URL by offering it as a subprotocol
    `bearer.<token>` beside `runsvc`: the same role checks apply, and the server picks
    `runsvc`, never echoing the token back. Other endpoints ignore the header."""
    reader = service.tokens["reader"]
    ws = await service.client.ws_connect(
        "/api/v1/events/ws", protocols=("runsvc", f"bearer.{reader}")
    )
    assert ws.protocol == "runsvc"
    await ws.close()
    for token, status in ((service.tokens["executor"], 403), (UNKNOWN_TOKENS["unknown"], 401)):
        with pytest.raises(WSServerHandshakeError) as refused:
            await service.client.ws_connect(
                "/api/v1/events/ws", protocols=("runsvc", f"bearer.{token}")
            )
        assert refused.value.status == status
    page = await service.client.get(
        "/api/v1/events", headers={"Sec-WebSocket-Protocol": f"runsvc, bearer.{reader}"}
    )
    assert page.status == 401
