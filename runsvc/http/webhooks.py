"""Webhooks over HTTP: create, list, show, delete, resume, and their recent deliveries.
Submitters and admins manage them; readers read. No answer carries a webhook's secret."""

from __future__ import annotations

import msgspec
from aiohttp import web

from runsvc.domain.errors import BadRequest, NotFound
from runsvc.http.keys import SERVICE, SETTINGS, STORE
from runsvc.http.routing import Endpoint, decode_body, decode_query, json_response, principal
from runsvc.service import webhooks
from runsvc.service.auth import Permission
from runsvc.wire.webhooks import (
    CreateWebhookRequest,
    DeliveryList,
    Webhook,
    WebhookLag,
    WebhookList,
)

MAX_DELIVERIES = 500


class DeliveriesQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    limit: int = 50


async def _shown(request: web.Request, row: webhooks.WebhookRow, head: int) -> Webhook:
    service = request.app[SERVICE]
    events, seconds = await webhooks.lag_of(request.app[STORE], row, head=head, now=service.clock())
    return Webhook(
        id=row.id,
        url=row.url,
        group=row.group,
        types=row.types,
        created_by=row.created_by,
        created_at=row.created_at,
        state="failing" if row.state == "failing" else "active",
        position=row.position,
        lag=WebhookLag(events=events, seconds=round(seconds, 3)),
        attempts=row.attempts,
        last_error=row.last_error,
        failing_since=row.failing_since,
        last_delivered_at=row.last_delivered_at,
        lease=row.lease,
    )


def _own_addresses(request: web.Request) -> list[tuple[str, int]]:
    """Where this service listens: its setting, and the address this request came in on
    (a port chosen at start, a proxy's forwarding target)."""
    settings = request.app[SETTINGS]
    own = [(settings.host, settings.port)]
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        own.append((str(sockname[0]), int(sockname[1])))
    return own


async def create_webhook(request: web.Request) -> web.Response:
    body = await decode_body(request, CreateWebhookRequest)
    store = request.app[STORE]
    head = await store.head()
    types = await webhooks.check_request(body, head=head, own=_own_addresses(request))
    service = request.app[SERVICE]
    row = await webhooks.create(
        service.pool,
        body,
        types,
        created_by=principal(request).name,
        position=head if body.after is None else body.after,
        now=service.clock(),
    )
    return json_response(
        await _shown(request, row, head),
        status=201,
        headers={"Location": f"/api/v1/webhooks/{row.id}"},
    )


async def list_webhooks(request: web.Request) -> web.Response:
    rows = await webhooks.list_all(request.app[SERVICE].pool)
    head = await request.app[STORE].head()
    return json_response(WebhookList(webhooks=[await _shown(request, r, head) for r in rows]))


async def _found(request: web.Request) -> webhooks.WebhookRow:
    webhook_id = request.match_info["id"]
    row = await webhooks.get(request.app[SERVICE].pool, webhook_id)
    if row is None:
        raise NotFound(f"no webhook {webhook_id}")
    return row


async def show_webhook(request: web.Request) -> web.Response:
    row = await _found(request)
    return json_response(await _shown(request, row, await request.app[STORE].head()))


async def delete_webhook(request: web.Request) -> web.Response:
    webhook_id = request.match_info["id"]
    if not await webhooks.delete(request.app[SERVICE].pool, webhook_id):
        raise NotFound(f"no webhook {webhook_id}")
    return web.Response(status=204)


async def resume_webhook(request: web.Request) -> web.Response:
    webhook_id = request.match_info["id"]
    row = await webhooks.resume(request.app[SERVICE].pool, webhook_id)
    if row is None:
        raise NotFound(f"no webhook {webhook_id}")
    return json_response(await _shown(request, row, await request.app[STORE].head()))


async def list_deliveries(request: web.Request) -> web.Response:
    query = decode_query(request, DeliveriesQuery)
    if not 1 <= query.limit <= MAX_DELIVERIES:
        raise BadRequest(f"limit must be between 1 and {MAX_DELIVERIES}")
    row = await _found(request)
    found = await webhooks.deliveries(request.app[SERVICE].pool, row.id, query.limit)
    return json_response(DeliveryList(deliveries=found))


ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST",
        "/api/v1/webhooks",
        create_webhook,
        Permission.SUBMIT,
        "Create a webhook: matching events from now on are POSTed to its URL",
        "webhooks",
        body=CreateWebhookRequest,
        responses={201: Webhook},
    ),
    Endpoint(
        "GET",
        "/api/v1/webhooks",
        list_webhooks,
        Permission.READ,
        "List webhooks (never their secrets)",
        "webhooks",
        responses={200: WebhookList},
    ),
    Endpoint(
        "GET",
        "/api/v1/webhooks/{id}",
        show_webhook,
        Permission.READ,
        "One webhook: its state, checkpoint, lag and last error",
        "webhooks",
        responses={200: Webhook},
    ),
    Endpoint(
        "DELETE",
        "/api/v1/webhooks/{id}",
        delete_webhook,
        Permission.SUBMIT,
        "Delete a webhook and its delivery records",
        "webhooks",
        responses={204: None},
    ),
    Endpoint(
        "POST",
        "/api/v1/webhooks/{id}/resume",
        resume_webhook,
        Permission.SUBMIT,
        "Resume a failing webhook from the event it could not deliver",
        "webhooks",
        responses={200: Webhook},
    ),
    Endpoint(
        "GET",
        "/api/v1/webhooks/{id}/deliveries",
        list_deliveries,
        Permission.READ,
        "A webhook's recent delivery attempts, newest first",
        "webhooks",
        query=DeliveriesQuery,
        responses={200: DeliveryList},
    ),
]
