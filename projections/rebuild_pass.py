"""One pass of a rebuild: the log read page by page and folded into scratch tables.

Each page is read once and handed to every projection (each filtered in memory from what
the page's SQL already narrowed), while the next page is being read. A pass runs either in
the rebuilding process or, for a partitioned rebuild, in worker processes that each fold
one part of the streams (`EventFilter.partition`) up to a fixed position.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing.queues
import os
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
import msgspec

from eventlog.filter import EventFilter
from eventlog.records import RecordedEvent
from eventlog.store import EventStore, ReadPage
from projections.projection import Projection

PageCallback = Callable[[int, list[int]], None]
"""Called after each page with the position reached and the events applied so far, per
projection."""


def scratch_schema(projection: Projection) -> str:
    return f"rebuild_{projection.name}"


def page_filter(
    projections: Sequence[Projection], partition: tuple[int, int] | None = None
) -> EventFilter | None:
    """What every projection reads: the shared stream prefix, when there is one, so the
    database leaves out what none of them wants; and the part of the streams, if any."""
    prefixes = {p.filter.stream_prefix if p.filter is not None else None for p in projections}
    prefix = prefixes.pop() if len(prefixes) == 1 else None
    if prefix is None and partition is None:
        return None
    return EventFilter(stream_prefix=prefix, partition=partition)


def _selector(
    projection: Projection, read_with: EventFilter | None
) -> Callable[[list[RecordedEvent]], list[RecordedEvent]]:
    """The projection's events out of a page read with `read_with`. This runs for every
    event of the log, so the common shapes (nothing left to check, or only event types)
    skip the general filter's method call per event."""
    wanted = msgspec.structs.replace(
        projection.filter or EventFilter(),
        partition=read_with.partition if read_with is not None else None,
    )
    if wanted.is_empty() or wanted == read_with:
        return lambda events: events
    if wanted.types is not None and msgspec.structs.replace(wanted, types=None) == read_with:
        types = wanted.types
        return lambda events: [e for e in events if e.type in types]
    return lambda events: [e for e in events if wanted.matches(e)]


async def open_scratch_connections(
    dsn: str, projections: Sequence[Projection]
) -> list[asyncpg.Connection]:
    """One connection per projection, its unqualified SQL pointed at its scratch schema."""
    connections = []
    for projection in projections:
        connection = await asyncpg.connect(dsn)
        await connection.execute(f"SET search_path = {scratch_schema(projection)}, public")
        connections.append(connection)
    return connections


async def fold_pass(
    store: EventStore,
    connections: Sequence[asyncpg.Connection],
    projections: Sequence[Projection],
    *,
    page_size: int,
    partition: tuple[int, int] | None = None,
    until: int | None = None,
    on_page: PageCallback | None = None,
) -> int:
    """Fold the log from the start into the scratch tables, one transaction per page and
    projection, until a page comes back empty or, with `until`, up to that position
    exactly. Returns the position reached."""
    read_with = page_filter(projections, partition)
    selectors = [_selector(p, read_with) for p in projections]
    applied = [0] * len(projections)

    async def apply_one(index: int, events: list[RecordedEvent]) -> None:
        chosen = selectors[index](events)
        if chosen:
            async with connections[index].transaction():
                await projections[index].apply(connections[index], chosen)
        applied[index] += len(chosen)

    def read(after: int) -> asyncio.Future[ReadPage]:
        return asyncio.ensure_future(store.read_all(after=after, limit=page_size, filter=read_with))

    position = 0
    reading = read(0)
    while True:
        page = await reading
        if page.next_after == position:
            break
        events, reached = page.events, page.next_after
        if until is not None and reached >= until:
            events = [e for e in events if e.position <= until]
            reached = until
        else:
            reading = read(reached)  # the next page arrives while this one is folded
        # Side by side: one projection folds while another waits on its writes.
        await asyncio.gather(*(apply_one(i, events) for i in range(len(projections))))
        position = reached
        if on_page is not None:
            on_page(position, list(applied))
        if until is not None and position >= until:
            break
    return position


class PartitionJob(msgspec.Struct, frozen=True):
    """What one worker process of a partitioned rebuild folds."""

    dsn: str
    projections: list[str]
    partition: tuple[int, int]
    until: int
    page_size: int


if TYPE_CHECKING:  # the queue's type is not subscriptable at run time
    Reports: TypeAlias = multiprocessing.queues.Queue[tuple[object, ...]]


def run_partition_worker(job: PartitionJob, reports: Reports) -> None:
    """A worker process's entry: fold one part of the streams up to `job.until`,
    reporting ("page", index, position, applied) as it goes, then ("done", index,
    position) or ("failed", index, traceback)."""
    index = job.partition[1]
    try:
        asyncio.run(_partition_pass(job, reports))
    except BaseException:
        reports.put(("failed", index, traceback.format_exc()))
        os._exit(1)


async def _partition_pass(job: PartitionJob, reports: Reports) -> None:
    from projections.registry import projection_named

    gc.disable()  # see rebuild.py: the pass allocates millions of objects without cycles
    projections = [projection_named(name) for name in job.projections]
    index = job.partition[1]
    pool = await asyncpg.create_pool(job.dsn, min_size=1, max_size=2)
    connections = await open_scratch_connections(job.dsn, projections)
    try:
        position = await fold_pass(
            EventStore(pool, dsn=job.dsn),
            connections,
            projections,
            page_size=job.page_size,
            partition=job.partition,
            until=job.until,
            on_page=lambda at, applied: reports.put(("page", index, at, applied)),
        )
        reports.put(("done", index, position))
    finally:
        for connection in connections:
            await connection.close()
        await pool.close()
