"""The global log: a page of events (`GET /api/v1/events`) and the websocket subscription
(`GET /api/v1/events/ws`)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

import msgspec
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from eventlog.filter import EventFilter
from eventlog.records import RecordedEvent
from runsvc.domain.errors import BadRequest, ServiceError
from runsvc.domain.events import stream_of
from runsvc.http.keys import HUB, SETTINGS, STORE
from runsvc.http.routing import WEBSOCKET_PROTOCOL, Endpoint, decode_query, json_response
from runsvc.service.auth import Permission
from runsvc.service.event_view import event_json, event_out
from runsvc.wire.api import EventPage

log = structlog.get_logger("runsvc.http")


class OpenSockets(set[web.WebSocketResponse]):
    """The subscription sockets open in this application: what the subscriber limit counts
    and what shutdown closes. Each handler removes its own socket when it ends."""


WEBSOCKETS = web.AppKey("websockets", OpenSockets)


# Positions are PostgreSQL bigints: one out of that range is a 400, not a driver error.
Position = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class EventQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    after: Position = 0
    limit: int = 100
    run: str | None = None
    group: str | None = None
    types: str | None = None


class SubscriptionQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    after: Position = 0
    run: str | None = None
    group: str | None = None
    types: str | None = None
    token: str | None = None


class SubscriberLimit(ServiceError):
    """This process serves as many subscribers as it is configured to."""

    status = 503
    code = "unavailable"


def event_filter(run: str | None, group: str | None, types: str | None) -> EventFilter:
    if group is not None and not group.startswith("/"):
        raise BadRequest("group must be an absolute path such as /org/project")
    type_set = frozenset(t for t in (types or "").split(",") if t) or None
    return EventFilter(
        streams=frozenset({stream_of(run)}) if run else None,
        scope=group,
        types=type_set,
    )


async def list_events(request: web.Request) -> web.Response:
    query = decode_query(request, EventQuery)
    settings = request.app[SETTINGS]
    if not 1 <= query.limit <= settings.max_page_size:
        raise BadRequest(f"limit must be between 1 and {settings.max_page_size}")
    store = request.app[STORE]
    page = await store.read_all(
        after=query.after,
        limit=query.limit,
        filter=event_filter(query.run, query.group, query.types),
    )
    # Every position up to the head is committed (the log shows no gaps), so a follower
    # that starts there misses nothing written later.
    head = await store.head()
    return json_response(
        EventPage(events=[event_out(e) for e in page.events], next_after=page.next_after, head=head)
    )


class _Encoded:
    """Each event is encoded once however many subscribers it goes to."""

    def __init__(self, size: int = 4096) -> None:
        # Keyed by the event's id too: a position alone names different events in
        # different logs (a test's fresh database, a log restored elsewhere).
        self._cache: dict[tuple[int, uuid.UUID], str] = {}
        self._size = size

    def __call__(self, event: RecordedEvent) -> str:
        key = (event.position, event.event_id)
        text = self._cache.get(key)
        if text is None:
            text = event_json(event).decode()
            if len(self._cache) >= self._size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = text
        return text


_encoded = _Encoded()


async def subscribe(request: web.Request) -> web.StreamResponse:
    query = decode_query(request, SubscriptionQuery)
    filter = event_filter(query.run, query.group, query.types)
    hub = request.app[HUB]
    sockets = request.app[WEBSOCKETS]
    limit = request.app[SETTINGS].max_subscribers
    # The place is taken here, with no await between the check and the taking: counted
    # later (once the handshake is done) several connections arriving together all passed.
    if len(sockets) >= limit:
        raise SubscriberLimit(
            f"this process already serves its limit of {limit} subscribers; "
            "retry later or connect to another instance"
        )
    # No per-message deflate: every message would be compressed again for every
    # subscriber (the encoding cache cannot share it), and events are small JSON.
    ws = web.WebSocketResponse(
        heartbeat=20.0, autoping=True, compress=False, protocols=(WEBSOCKET_PROTOCOL,)
    )
    sockets.add(ws)
    try:
        await ws.prepare(request)
    except BaseException:
        sockets.discard(ws)
        raise

    async def send() -> None:
        async for event in hub.subscribe(after=query.after, filter=filter):
            await ws.send_str(_encoded(event))

    async def receive() -> None:
        # Clients have nothing to say on this socket; reading only notices their close.
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                return

    sender = asyncio.create_task(send())
    receiver = asyncio.create_task(receive())
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if sender in done and sender.exception() is not None:
            log.warning("subscription failed", error=repr(sender.exception()))
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"subscription failed")
    finally:
        for task in (sender, receiver):
            task.cancel()
        # Their outcome is settled above; here they only need to finish.
        await asyncio.gather(sender, receiver, return_exceptions=True)
        await ws.close()
        sockets.discard(ws)
    return ws


async def close_websockets(app: web.Application) -> None:
    """On shutdown: tell every subscriber we are going away (1001) so it reconnects."""
    sockets: OpenSockets = app[WEBSOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/events",
        list_events,
        Permission.READ,
        "Read a page of the global event log",
        "events",
        query=EventQuery,
        responses={200: EventPage},
    ),
    Endpoint(
        "GET",
        "/api/v1/events/ws",
        subscribe,
        Permission.READ,
        "Subscribe to events over a websocket (stored, then live)",
        "events",
        query=SubscriptionQuery,
        responses={101: None},
        bounded=False,
    ),
]
