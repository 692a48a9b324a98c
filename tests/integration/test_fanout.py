"""The live fan-out hub: one reader, many filtered subscribers, slow ones served from
storage without loss."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

from eventlog.fanout import EventHub, _scope_prefixes
from eventlog.filter import EventFilter
from eventlog.records import RecordedEvent
from eventlog.store import NO_STREAM, EventStore
from tests.integration.test_store import META, status


async def collect(events: AsyncIterable[RecordedEvent], count: int) -> list[int]:
    taken: list[int] = []
    if count == 0:
        return taken
    async with asyncio.timeout(60):
        async for event in events:
            taken.append(event.position)
            if len(taken) == count:
                break
    return taken


async def expected_positions(store: EventStore, filter: EventFilter) -> list[int]:
    positions: list[int] = []
    after = 0
    while True:
        page = await store.read_all(after=after, limit=1000, filter=filter)
        positions += [e.position for e in page.events]
        if page.next_after == after:
            return positions
        after = page.next_after


async def write_runs(store: EventStore, writer: int, runs: int, events_per_run: int) -> None:
    for run in range(runs):
        stream = f"run-{writer}-{run}"
        scope = f"/org/team{writer % 3}/repo{run % 2}"
        for version in range(events_per_run):
            await store.append(
                stream, [status(f"t{version}")], version or NO_STREAM, meta=META, scope=scope
            )


def test_scope_prefixes() -> None:
    """An event's scope falls under every ancestor path, the root included."""
    assert _scope_prefixes("/a/b/c") == ["/", "/a", "/a/b", "/a/b/c"]
    assert _scope_prefixes("/") == ["/"]


async def follow_until(
    events: AsyncIterable[RecordedEvent], total: asyncio.Future[int]
) -> list[int]:
    """Positions a live subscription yields, until it has yielded `total` (known only once
    the writers are done) events."""
    taken: list[int] = []
    iterator = aiter(events)
    async with asyncio.timeout(60):
        while not (total.done() and len(taken) >= total.result()):
            following = asyncio.ensure_future(anext(iterator))
            await asyncio.wait({following, total}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done() and len(taken) >= total.result():
                following.cancel()
                break
            # Either it yielded, or more events are still due: wait for this one.
            taken.append((await following).position)
    return taken


FILTERS = [
    EventFilter(),
    EventFilter(scope="/org"),
    EventFilter(scope="/org/team1"),
    EventFilter(scope="/org/team2/repo1"),
    EventFilter(streams=frozenset({"run-3-1"})),
    EventFilter(streams=frozenset({"run-0-0", "run-5-2"})),
    EventFilter(types=frozenset({"task_status_changed"}), scope="/org/team0"),
    EventFilter(stream_prefix="run-7-"),
]


async def test_filtered_subscribers_get_exactly_their_events(store: EventStore) -> None:
    """Subscribers with different filters, following live while 8 writers append, each
    receive exactly the matching events, once each, in order; subscribers that resume
    after a position get exactly what follows it."""
    hub = EventHub(store, buffer=10_000)
    await hub.start()
    try:
        totals = [asyncio.get_running_loop().create_future() for _ in FILTERS]
        followers = [
            asyncio.create_task(follow_until(hub.subscribe(after=0, filter=f), t))
            for f, t in zip(FILTERS, totals, strict=True)
        ]
        await asyncio.gather(*(write_runs(store, w, runs=3, events_per_run=4) for w in range(8)))
        expected = [await expected_positions(store, f) for f in FILTERS]
        for total, positions in zip(totals, expected, strict=True):
            total.set_result(len(positions))
        assert len(expected[0]) == 8 * 3 * 4
        assert all(expected)
        assert await asyncio.gather(*followers) == expected

        for filter, positions in zip(FILTERS, expected, strict=True):
            resumed = hub.subscribe(after=positions[0], filter=filter)
            assert await collect(resumed, len(positions) - 1) == positions[1:]
    finally:
        await hub.close()


async def test_stalled_subscriber_neither_blocks_others_nor_loses_events(
    store: EventStore,
) -> None:
    """A subscriber that stops reading overflows its small buffer; the others receive all
    events meanwhile; once it reads again it gets everything, in order, once each."""
    hub = EventHub(store, buffer=5)
    await hub.start()
    try:
        # Subscribed where the hub has read to, the subscriber is on the live feed at once
        # (from further back it would read storage first, and a stall there overflows
        # nothing, which made this test fail under load).
        await store.append("run-zero", [status()], NO_STREAM, meta=META)
        head = await store.head()
        for _ in range(300):  # the hub reads what was appended; 30 s at most
            if hub.position >= head:
                break
            await asyncio.sleep(0.1)
        stalled: AsyncIterator[RecordedEvent] = aiter(hub.subscribe(after=head))
        first = await anext_with_writes(stalled, store)
        healthy = asyncio.create_task(collect(hub.subscribe(after=head), 101))
        for i in range(100):
            await store.append(f"run-x{i}", [status()], NO_STREAM, meta=META)
        received = await healthy
        assert len(received) == 101
        assert hub.overflows >= 1
        rest = await collect(stalled, 100)
        assert [first, *rest] == received
    finally:
        await hub.close()


async def anext_with_writes(subscription: AsyncIterator[RecordedEvent], store: EventStore) -> int:
    """The subscription's first event, written after the subscription started waiting."""
    waiting = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)  # the subscription starts and joins the live feed
    await store.append("run-first", [status()], NO_STREAM, meta=META)
    async with asyncio.timeout(30):
        return (await waiting).position
