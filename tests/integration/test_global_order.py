"""Global order and subscriptions under concurrency: readers paging by position and
subscribers following live never miss, duplicate or reorder a committed event."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import asyncpg

from eventlog.filter import EventFilter
from eventlog.postgres import create_pool
from eventlog.records import RecordedEvent
from eventlog.store import NO_STREAM, EventStore
from tests.integration.test_store import META, status


async def take(events: AsyncIterator[RecordedEvent], count: int) -> list[RecordedEvent]:
    """The next `count` events of a subscription, failing the test rather than hanging."""
    taken: list[RecordedEvent] = []
    async with asyncio.timeout(60):
        async for event in events:
            taken.append(event)
            if len(taken) == count:
                break
    return taken


async def all_positions(pool: asyncpg.Pool) -> list[int]:
    return [r[0] for r in await pool.fetch("SELECT position FROM events ORDER BY position")]


async def test_concurrent_writers_on_two_pools_never_leave_gaps(
    store: EventStore, database_dsn: str
) -> None:
    """8 writers spread over two stores with their own pools (as two service processes),
    random batch sizes, while one reader pages with read_all and one subscriber follows:
    both see every committed event exactly once, in strictly increasing position order."""
    other_pool = await create_pool(database_dsn, max_size=8)
    other = EventStore(other_pool, dsn=database_dsn)
    await other.start()
    rng = random.Random(7)
    plan = [[rng.randint(1, 12) for _ in range(40)] for _ in range(8)]
    total = sum(sum(batches) for batches in plan)
    writers_done = asyncio.Event()

    async def writer(index: int, target: EventStore) -> None:
        version = NO_STREAM
        for size in plan[index]:
            await target.append(
                f"run-w{index}", [status(f"t{i}") for i in range(size)], version, meta=META
            )
            version += size

    async def pager() -> list[int]:
        seen: list[int] = []
        after = 0
        while True:
            page = await store.read_all(after=after, limit=rng.randint(1, 50))
            seen += [e.position for e in page.events]
            after = page.next_after
            if writers_done.is_set() and len(seen) == total:
                return seen
            await asyncio.sleep(0)

    subscription = store.subscribe(after=0)
    following = asyncio.create_task(take(subscription, total))
    paging = asyncio.create_task(pager())
    try:
        await asyncio.gather(
            *(writer(i, store if i % 2 else other) for i in range(8)),
        )
        writers_done.set()
        paged = await asyncio.wait_for(paging, 60)
        followed = [e.position for e in await following]
    finally:
        await other.close()
        await other_pool.close()

    committed = await all_positions(store.pool)
    assert len(committed) == total
    assert paged == committed
    assert followed == committed


async def test_subscription_hands_over_from_stored_to_live(store: EventStore) -> None:
    """Stored events first, then live ones, with no gap and no duplicate at the switch; a
    new subscription after a position starts right after it."""
    for i in range(30):
        await store.append(f"run-s{i}", [status()], NO_STREAM, meta=META)
    subscription = store.subscribe(after=0, page_size=7)
    first = await take(subscription, 30)

    async def live_writer() -> None:
        for i in range(30, 60):
            await store.append(f"run-s{i}", [status()], NO_STREAM, meta=META)

    writing = asyncio.create_task(live_writer())
    rest = await take(subscription, 30)
    await writing
    positions = [e.position for e in first + rest]
    assert positions == await all_positions(store.pool)

    resumed = await take(store.subscribe(after=positions[41]), 18)
    assert [e.position for e in resumed] == positions[42:]


async def test_subscription_survives_killed_connections(store: EventStore) -> None:
    """Every backend, the LISTEN connection included, is terminated repeatedly while a
    subscriber follows live appends: it receives every event exactly once, in order."""
    admin = await asyncpg.connect(store.notifier._dsn)
    subscription = store.subscribe(after=0)
    following = asyncio.create_task(take(subscription, 120))

    async def kill_all() -> None:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    try:
        for i in range(120):
            await store.append(f"run-d{i}", [status()], NO_STREAM, meta=META)
            if i % 30 == 10:
                await kill_all()
        received = await following
    finally:
        await admin.close()
    assert [e.position for e in received] == await all_positions(store.pool)
    assert store.notifier.reconnects >= 1


async def test_filtered_subscription_delivers_only_matches(store: EventStore) -> None:
    """A subscription filtered by scope gets exactly the matching events, in order, even
    when they are sparse among others."""
    expected = []
    for i in range(200):
        scope = "/team/a" if i % 17 == 0 else "/team/b"
        positions = await store.append(f"run-f{i}", [status()], NO_STREAM, meta=META, scope=scope)
        if scope == "/team/a":
            expected += positions
    received = await take(store.subscribe(filter=EventFilter(scope="/team/a")), len(expected))
    assert [e.position for e in received] == expected
