"""Websocket subscriptions under load, end to end over HTTP: many subscribers with
different filters while several writers create and advance runs through the API. Each
subscriber gets exactly the events its filter matches, once each and in order; one that
stops reading neither holds up the others nor loses anything; one that reconnects with its
last position misses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import WSMsgType

from eventlog.records import RecordedEvent
from runsvc.http.keys import HUB, STORE
from runsvc.infra.settings import Settings
from tests.fixtures.service import Service, start_service

GROUPS = ("/org/a/x", "/org/a/y", "/org/b/x")
WRITERS = 8
RUNS_PER_WRITER = 3
# Between the server's hub and a client that stopped reading there are megabytes of
# buffers: the client library's queue (~0.5 MB before it stops reading the socket) and the
# kernel's send buffer, which Linux grows to 4 MB on loopback. A run with annotations this
# large is a run_created event of about 0.9 MB; each writer adds one (in /bulk, which most
# filters exclude, to keep the bytes moved small), and more follow until the stalled
# subscriber is seen to overflow.
BULK = "x" * 900_000
MAX_EXTRA_BULK = 16
# The hub's per-subscriber queue: small, so a stalled subscriber overflows soon once its
# socket stops taking data.
HUB_BUFFER = 8

CONFIG: dict[str, Any] = {
    "tasks": [
        {"name": "gate1", "run": "true", "approval": True},
        {"name": "gate2", "run": "true", "approval": True},
        {"name": "build", "run": "make", "depends": ["gate1"]},
    ]
}

SubscriptionQuery = dict[str, str]


@dataclass
class Subscriber:
    """What one websocket subscriber asked for and what it has received so far."""

    query: SubscriptionQuery
    received: list[dict[str, Any]] = field(default_factory=list)
    wanted: int | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, event: dict[str, Any]) -> None:
        self.received.append(event)
        self._check()

    def expect(self, count: int) -> None:
        self.wanted = count
        self._check()

    def _check(self) -> None:
        if self.wanted is not None and len(self.received) >= self.wanted:
            self.complete.set()

    @property
    def last_position(self) -> int:
        return int(self.received[-1]["position"]) if self.received else 0


def matches(query: SubscriptionQuery, event: RecordedEvent) -> bool:
    """docs/api.md's subscription filter, written out independently of the server's."""
    if event.position <= int(query.get("after", "0")):
        return False
    if "run" in query and event.stream != f"run-{query['run']}":
        return False
    if "types" in query and event.type not in query["types"].split(","):
        return False
    if "group" in query:
        base = query["group"].rstrip("/")
        return event.scope is not None and (
            event.scope == query["group"] or event.scope.startswith(base + "/")
        )
    return True


async def whole_log(service: Service) -> list[RecordedEvent]:
    store = service.app[STORE]
    events: list[RecordedEvent] = []
    after = 0
    while True:
        page = await store.read_all(after=after, limit=1000)
        events += page.events
        if not page.events:
            return events
        after = page.next_after


async def read_into(ws: aiohttp.ClientWebSocketResponse, subscriber: Subscriber) -> None:
    """Every text message into the subscriber, until the socket closes."""
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            subscriber.take(json.loads(message.data))


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` until it holds; fail after a generous deadline."""
    deadline = asyncio.get_running_loop().time() + 60
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.02)


def small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket with the smallest receive buffer the kernel allows, set before
    connecting so the advertised window stays small: a client that stops reading then
    pushes back on the server after a few kilobytes instead of megabytes."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


class Api:
    """The writers' side: runs created and advanced through the HTTP API."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def create(self, group: str, name: str, padding: str = "") -> dict[str, Any]:
        response = await self.service.client.post(
            "/api/v1/runs",
            json={
                "group": group,
                "name": name,
                "config": CONFIG,
                "annotations": {"padding": padding},
            },
            headers=self.service.auth("submitter"),
        )
        assert response.status == 201, await response.text()
        run: dict[str, Any] = await response.json()
        return run

    async def act(self, run_id: str, action: str, role: str = "submitter") -> None:
        response = await self.service.client.post(
            f"/api/v1/runs/{run_id}/{action}", headers=self.service.auth(role)
        )
        assert response.status == 204, await response.text()

    async def advance(self, run_id: str) -> None:
        """Both gates approved, then the run stopped: several events without executors."""
        await self.act(run_id, "tasks/gate1/approve")
        await self.act(run_id, "tasks/gate2/approve", role="admin")
        await self.act(run_id, "stop")


@pytest.fixture
async def service(service_config: Settings) -> AsyncIterator[Service]:
    """The service with a tiny per-subscriber buffer, so that a stalled subscriber
    overflows it."""
    small = msgspec.structs.replace(service_config, subscriber_buffer=HUB_BUFFER)
    async for running in start_service(small):
        yield running


async def test_fifty_subscribers_eight_writers(service: Service) -> None:
    """50 websocket subscribers (unfiltered, by run, by group prefix, by event types,
    combinations, some starting at a past position) while 8 writers create and advance
    runs: each receives exactly the events of the log its filter matches, once each, in
    strictly increasing positions. A subscriber that reads nothing while the writers run
    overflows its server-side buffer and leaves the live feed, yet everyone else receives
    up to the last event meanwhile, and once it reads it gets everything. A subscriber
    that disconnects mid-way and reconnects with its last position misses nothing and
    sees nothing twice."""
    api = Api(service)
    hub = service.app[HUB]
    store = service.app[STORE]

    seeds = [(await api.create(group, f"seed{i}"))["id"] for i, group in enumerate(GROUPS)]
    await api.act(seeds[0], "tasks/gate2/approve")
    seeded = await store.head()
    middle = str(seeded // 2)

    variants: list[SubscriptionQuery] = [
        {},
        {"after": middle},
        {"after": str(seeded)},
        {"group": "/org"},
        {"group": "/org/"},
        {"group": "/org/a"},
        {"group": "/org/a/x"},
        {"group": "/org/a/y", "after": middle},
        {"group": "/org/b"},
        {"group": "/org/b/x", "after": str(seeded)},
        {"group": "/org/c"},
        {"group": "/org", "types": "run_created"},
        {"types": "task_approved,run_stop_requested"},
        {"types": "run_phase_changed,run_result_changed,run_stop_requested"},
        {"types": "task_approved", "after": str(seeded)},
        {"group": "/org/a", "types": "task_status_changed"},
        {"group": "/org/a", "types": "task_approved,task_status_changed", "after": middle},
        {"run": seeds[0]},
        {"run": seeds[1], "types": "task_approved"},
        {"run": seeds[2], "after": middle},
        {"run": seeds[0], "group": "/org/a"},
        {"run": seeds[0], "group": "/org/b"},
        {"run": "NO-SUCH-RUN"},
        {"run": seeds[1], "types": "run_stop_requested,run_phase_changed"},
    ]
    # Filters that match nothing here: they must receive nothing.
    empty = [{"group": "/org/c"}, {"run": seeds[0], "group": "/org/b"}, {"run": "NO-SUCH-RUN"}]
    # The one that stalls is the only subscriber to the root scope, so its place in the
    # hub's scope index shows whether it is on the live feed.
    stalled = Subscriber({"group": "/"})
    reconnecting = Subscriber({"group": "/org/a"})
    steady = [Subscriber(dict(variants[i % len(variants)])) for i in range(48)]
    subscribers = [*steady, reconnecting, stalled]
    assert len(subscribers) == 50

    async def stalled_is_live() -> bool:
        # The hub's private index is the one place that shows it; a test may look.
        return "/" in hub._by_scope

    async with contextlib.AsyncExitStack() as stack:
        readers: list[asyncio.Task[None]] = []

        async def stop_readers() -> None:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

        stack.push_async_callback(stop_readers)

        async def connect(
            subscriber: Subscriber, after: int | None = None
        ) -> aiohttp.ClientWebSocketResponse:
            query = subscriber.query if after is None else {**subscriber.query, "after": str(after)}
            ws = await service.client.ws_connect(
                "/api/v1/events/ws", params=query, headers=service.auth("reader")
            )
            stack.push_async_callback(ws.close)
            return ws

        for subscriber in steady:
            readers.append(asyncio.create_task(read_into(await connect(subscriber), subscriber)))
        first_leg = await connect(reconnecting)
        # The stalled subscriber has its own session: a socket with a tiny receive buffer.
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(socket_factory=small_receive_buffer)
            )
        )
        stalled_ws = await session.ws_connect(
            service.client.make_url("/api/v1/events/ws").with_query(stalled.query),
            headers=service.auth("reader"),
        )
        stack.push_async_callback(stalled_ws.close)
        await until(stalled_is_live, "the stalled subscriber is on the live feed")

        writers_done = asyncio.Event()
        hung_up_after: list[int] = []

        async def writer(number: int) -> None:
            if number < len(seeds):
                await api.act(seeds[number], "tasks/gate1/approve")
            await api.create(f"/bulk/{number}", "bulk", padding=BULK)
            for k in range(RUNS_PER_WRITER):
                run = await api.create(GROUPS[(number + k) % len(GROUPS)], f"w{number}-{k}")
                await api.advance(run["id"])

        async def reconnect_mid_way() -> None:
            """Read until the writers' events arrive, hang up, let the writers get
            ahead, resume from the last position read."""
            async for message in first_leg:
                if message.type is WSMsgType.TEXT:
                    reconnecting.take(json.loads(message.data))
                if reconnecting.last_position > seeded:
                    break
            await first_leg.close()
            hung_up_after.append(reconnecting.last_position)
            gone_at = await store.head()

            async def writers_moved_on() -> bool:
                return writers_done.is_set() or await store.head() >= gone_at + 20

            await until(writers_moved_on, "the writers appended more events")
            await read_into(await connect(reconnecting, reconnecting.last_position), reconnecting)

        readers.append(asyncio.create_task(reconnect_mid_way()))
        await asyncio.gather(*(writer(n) for n in range(WRITERS)))
        writers_done.set()
        # How much the buffers in between hold depends on the kernel: add bulk until the
        # stalled subscriber has overflowed and left the live feed.
        for extra in range(MAX_EXTRA_BULK + 1):
            if not await stalled_is_live():
                break
            assert extra < MAX_EXTRA_BULK, "the stalled subscriber never overflowed"
            created = await api.create("/bulk/extra", "bulk", padding=BULK)

            async def dispatched(position: int = created["position"]) -> bool:
                return hub.position >= position

            await until(dispatched, "the hub dispatched the new run")
        # Last, every seed run is stopped: the newest events of the log, which most
        # filters above match.
        for seed in seeds:
            await api.act(seed, "stop")

        log = await whole_log(service)
        assert log[-1].position == await store.head()
        for subscriber in subscribers:
            subscriber.expect(sum(matches(subscriber.query, e) for e in log))
        try:
            async with asyncio.timeout(60):
                for subscriber in [*steady, reconnecting]:
                    await subscriber.complete.wait()
        except TimeoutError:
            raise AssertionError("a reading subscriber did not receive its events") from None

        # Everyone else has everything while the stalled subscriber has read nothing and
        # is still off the live feed; the hub counted its overflow.
        assert stalled.received == []
        assert not await stalled_is_live()
        assert hub.overflows >= 1
        metrics = await (await service.client.get("/metrics")).text()
        counted = re.search(r"^runsvc_subscriber_overflows(?:_total)? (\S+)$", metrics, re.M)
        assert counted is not None
        assert float(counted.group(1)) == hub.overflows
        readers.append(asyncio.create_task(read_into(stalled_ws, stalled)))
        try:
            async with asyncio.timeout(60):
                await stalled.complete.wait()
        except TimeoutError:
            raise AssertionError("the stalled subscriber never caught up") from None

    for subscriber in subscribers:
        expected = [e.position for e in log if matches(subscriber.query, e)]
        got = [e["position"] for e in subscriber.received]
        assert got == expected, f"{subscriber.query}: got {got}, expected {expected}"
        assert bool(got) == (subscriber.query not in empty), subscriber.query
    assert len(stalled.received) == len(log)
    # It hung up once the writers had started and before they were done.
    assert seeded < hung_up_after[0] < log[-1].position
