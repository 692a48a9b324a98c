"""The HTTP platform: errors as docs/api.md says, auth and roles, limits, operations endpoints,
the event page and the websocket subscription."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import WSMsgType, web
from structlog.testing import capture_logs

from eventlog.store import NO_STREAM
from runsvc.http.keys import HUB, STORE
from runsvc.http.routing import Endpoint
from runsvc.infra.settings import Settings
from runsvc.service.auth import Permission
from tests.fixtures.service import Service, start_service
from tests.integration.test_store import META, status


async def explode(_request: web.Request) -> web.Response:
    raise RuntimeError("database password is hunter2")


BROKEN = Endpoint("GET", "/api/v1/broken", explode, Permission.READ, "Fail on purpose", "test")


@pytest.fixture
async def broken_service(service_config: Settings) -> AsyncIterator[Service]:
    """The service with one extra route made to raise."""
    async for running in start_service(service_config, [BROKEN]):
        yield running


async def append_runs(service: Service, count: int, scope: str = "/org/p") -> list[int]:
    store = service.app[STORE]
    positions: list[int] = []
    for i in range(count):
        positions += await store.append(f"run-r{i}", [status()], NO_STREAM, meta=META, scope=scope)
    return positions


async def test_unexpected_errors_are_500_without_leaking(broken_service: Service) -> None:
    """A route that raises answers 500 with exactly `internal server error`; the cause is
    logged with the request id, never sent."""
    with capture_logs() as logs:
        response = await broken_service.client.get(
            "/api/v1/broken", headers={**broken_service.auth("reader"), "X-Request-Id": "req-42"}
        )
    assert response.status == 500
    assert await response.json() == {"code": "internal", "message": "internal server error"}
    assert "hunter2" not in await response.text()
    failures = [entry for entry in logs if entry["event"] == "unexpected error"]
    assert failures
    assert failures[0]["exc_info"] is True
    assert response.headers["X-Request-Id"] == "req-42"


async def test_unknown_routes_and_methods_get_the_error_body(service: Service) -> None:
    """Unknown routes are 404 and wrong methods 405, both with the JSON error body."""
    response = await service.client.get("/api/v1/nope", headers=service.auth())
    assert response.status == 404
    body = await response.json()
    assert body["code"] == "not_found"
    assert "/api/v1/nope" in body["message"]
    response = await service.client.delete("/api/v1/events", headers=service.auth())
    assert response.status == 405
    assert (await response.json())["code"] == "method_not_allowed"


async def test_tokens_and_roles(service: Service) -> None:
    """No token or an unknown one: 401. A role that may not read: 403. Health and metrics
    need no token."""
    client = service.client
    assert (await client.get("/api/v1/events")).status == 401
    bad = await client.get("/api/v1/events", headers={"Authorization": "Bearer rsv_x_y"})
    assert bad.status == 401
    assert (await bad.json())["code"] == "unauthorized"
    forbidden = await client.get("/api/v1/events", headers=service.auth("executor"))
    assert forbidden.status == 403
    assert (await forbidden.json())["code"] == "forbidden"
    for role in ("admin", "submitter", "reader"):
        assert (await client.get("/api/v1/events", headers=service.auth(role))).status == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await client.get(path)).status == 200


async def test_body_over_limit_is_413(service_config: Settings) -> None:
    """A body over the configured limit is refused with 413 and the error body."""
    settings = msgspec.structs.replace(service_config, max_body_bytes=1000)
    async for service in start_service(settings):
        response = await service.client.post(
            "/api/v1/events", data=b"x" * 5000, headers=service.auth()
        )
        assert response.status == 413
        assert (await response.json())["code"] == "too_large"


async def test_event_page_filters_and_validates(service: Service) -> None:
    """`GET /api/v1/events` pages the log with filters; bad parameters are 400 with the
    parameter's path."""
    positions = await append_runs(service, 5)
    await service.app[STORE].append("run-other", [status()], NO_STREAM, meta=META, scope="/else")
    client = service.client
    page = await (await client.get("/api/v1/events?limit=3", headers=service.auth())).json()
    assert [e["position"] for e in page["events"]] == positions[:3]
    assert page["next_after"] == positions[2]
    # The end of the whole log, whatever the page's limit and filters.
    assert page["head"] == await service.app[STORE].head()
    assert page["head"] > positions[-1]
    event = page["events"][0]
    assert event["type"] == "task_status_changed"
    assert event["actor"] == {"kind": "system", "id": "runsvc"}
    assert event["data"]["status"] == "running"
    assert len(event["hash"]) == 64
    by_group = await client.get("/api/v1/events?group=/org", headers=service.auth())
    assert [e["position"] for e in (await by_group.json())["events"]] == positions
    by_run = await client.get("/api/v1/events?run=r2", headers=service.auth())
    assert [e["stream"] for e in (await by_run.json())["events"]] == ["run-r2"]
    bad = await client.get("/api/v1/events?limit=abc", headers=service.auth())
    assert bad.status == 400
    body = await bad.json()
    assert body["code"] == "bad_request"
    assert body["details"][0]["path"] == "query.limit"
    too_many = await client.get("/api/v1/events?limit=100000", headers=service.auth())
    assert too_many.status == 400
    unknown = await client.get("/api/v1/events?bogus=1", headers=service.auth())
    assert unknown.status == 400


async def test_websocket_streams_stored_then_live(service: Service) -> None:
    """A websocket subscriber gets the stored events after its position, then live ones,
    each once and in order; without a token the upgrade is refused with 401."""
    stored = await append_runs(service, 3)
    refused = await service.client.get("/api/v1/events/ws")
    assert refused.status == 401
    ws = await service.client.ws_connect(
        f"/api/v1/events/ws?after={stored[0]}", headers=service.auth("reader")
    )
    received = []
    for _ in range(2):
        received.append((await ws.receive_json(timeout=10))["position"])
    live = await service.app[STORE].append("run-live", [status()], NO_STREAM, meta=META, scope="/x")
    received.append((await ws.receive_json(timeout=10))["position"])
    assert received == [*stored[1:], *live]
    await ws.close()


async def test_websocket_subscriber_limit_and_shutdown(service_config: Settings) -> None:
    """Past the per-process subscriber limit a new subscription is refused with a clear
    503; on shutdown open sockets are closed with 1001 (going away)."""
    settings = msgspec.structs.replace(service_config, max_subscribers=1)
    service_iter = start_service(settings)
    service = await anext(service_iter)
    first = await service.client.ws_connect("/api/v1/events/ws", headers=service.auth())
    # Once an event has reached it, the first subscription is certainly being served.
    await service.app[STORE].append("run-w", [status()], NO_STREAM, meta=META)
    assert (await first.receive_json(timeout=10))["stream"] == "run-w"
    assert service.app[HUB].subscribers == 1
    second = await service.client.get(
        "/api/v1/events/ws",
        headers={
            **service.auth(),
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert second.status == 503
    assert "limit of 1 subscribers" in (await second.json())["message"]
    closing = asyncio.create_task(first.receive(timeout=20))
    await service.client.server.close()
    message = await closing
    assert message.type == WSMsgType.CLOSE
    assert message.data == 1001
    await service_iter.aclose()


async def test_metrics_count_requests_by_route(service: Service) -> None:
    """Requests show up in /metrics labelled by route pattern and status."""
    await service.client.get("/api/v1/events", headers=service.auth())
    await service.client.get("/api/v1/events")
    text = await (await service.client.get("/metrics")).text()
    assert 'runsvc_http_requests_total{method="GET",route="/api/v1/events",status="200"}' in text
    assert 'route="/api/v1/events",status="401"' in text
    assert "runsvc_subscribers" in text
    assert "runsvc_events_appended_total" in text


async def test_openapi_is_generated_from_the_endpoints(service: Service) -> None:
    """The OpenAPI document lists every registered route with its parameters and the
    error body, built from the code's types."""
    document = await (await service.client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    events = document["paths"]["/api/v1/events"]["get"]
    assert {p["name"] for p in events["parameters"]} >= {"after", "limit", "run", "group"}
    assert events["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ErrorBody"
    )
    assert "ErrorBody" in document["components"]["schemas"]


async def open_subscription(service: Service) -> int:
    """The status of a websocket upgrade request for the event log."""
    response = await service.client.get(
        "/api/v1/events/ws",
        headers={
            **service.auth(),
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    return response.status


async def test_websockets_arriving_together_respect_the_subscriber_limit(
    service_config: Settings,
) -> None:
    """Subscriptions opened all at once, far more than the limit: exactly the limit is
    accepted and the others refused with 503 (the place is taken before the handshake,
    not counted after it)."""
    settings = msgspec.structs.replace(service_config, max_subscribers=50)
    async for service in start_service(settings):
        statuses = await asyncio.gather(*(open_subscription(service) for _ in range(200)))
        assert sorted(statuses) == [101] * 50 + [503] * 150
