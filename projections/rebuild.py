"""Rebuilding projections from the whole log while the service keeps serving.

Each projection's own code builds fresh tables in a scratch schema (`search_path` points
there, the SQL is unqualified). Several projections are rebuilt in ONE pass over the log
(`rebuild_pass`): each page is read once, while the previous page is being applied, and
handed to every projection. When the pass reaches the head, one transaction per
projection locks its checkpoint row (live runners in every process wait on it), applies
the last few events, replaces the tables in `public` with the new ones and moves the
checkpoint. Readers see the old tables until that commit.

Folding is CPU-bound Python, so a large log is folded by several worker processes, each
taking one part of the streams (projections whose rows belong to one stream each,
`per_stream`, allow it) up to the head as it was at the start; the tail after that is
folded under the lock as above. On two cores this takes the rebuild from about 90,000 to
about 130,000 events/s (docs/BENCHMARKS.md).

The cyclic garbage collector is paused during the pass: a rebuild allocates millions of
short-lived objects without cycles, and the collector's repeated scans of them cost about
40% of the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from eventlog.store import EventStore
from projections.projection import Projection
from projections.rebuild_pass import (
    PartitionJob,
    fold_pass,
    open_scratch_connections,
    run_partition_worker,
    scratch_schema,
)

if TYPE_CHECKING:
    from projections.rebuild_pass import Reports

# Below this many events a worker process costs more (its start, its imports) than it
# saves.
PARTITIONED_FROM_EVENTS = 200_000


class RebuildProgress(msgspec.Struct, frozen=True):
    projection: str
    position: int
    head: int
    events: int
    events_per_s: float
    eta_s: float | None


ProgressCallback = Callable[[RebuildProgress], None]


class RebuildFailed(RuntimeError):
    """A worker of a partitioned rebuild failed; nothing was swapped in."""


async def rebuild(
    store: EventStore,
    dsn: str,
    projection: Projection,
    *,
    page_size: int = 50_000,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    progress_every: float = 1.0,
) -> RebuildProgress:
    """Rebuild one projection from position 0 and swap it in atomically."""
    return (
        await rebuild_all(
            store,
            dsn,
            [projection],
            page_size=page_size,
            workers=workers,
            progress=progress,
            progress_every=progress_every,
        )
    )[0]


def default_workers(head: int, projections: Sequence[Projection]) -> int:
    if head < PARTITIONED_FROM_EVENTS or not all(p.per_stream for p in projections):
        return 1
    return max(1, min(os.cpu_count() or 1, 4))


async def rebuild_all(
    store: EventStore,
    dsn: str,
    projections: Sequence[Projection],
    *,
    page_size: int = 50_000,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    progress_every: float = 1.0,
) -> list[RebuildProgress]:
    """Rebuild `projections` in one pass over the log (folded by `workers` processes,
    by default as many as pay off) and swap each in atomically."""
    started = time.perf_counter()
    head = await store.head()
    if workers is None:
        workers = default_workers(head, projections)
    if workers > 1 and not all(p.per_stream for p in projections):
        raise ValueError("a partitioned rebuild needs projections folded per stream")
    connections: list[asyncpg.Connection] = []
    setup = await asyncpg.connect(dsn)
    try:
        for projection in projections:
            schema = scratch_schema(projection)
            await setup.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await setup.execute(f"CREATE SCHEMA {schema}")
            await setup.execute(f"SET search_path = {schema}, public")
            await setup.execute(projection.ddl())
    finally:
        await setup.close()

    position, applied = 0, [0] * len(projections)
    last_report = started

    def reports() -> list[RebuildProgress]:
        elapsed = max(time.perf_counter() - started, 1e-9)
        rate = position / elapsed
        eta = (head - position) / rate if rate > 0 else None
        return [
            RebuildProgress(
                projection=p.name,
                position=position,
                head=head,
                events=applied[i],
                events_per_s=rate,
                eta_s=eta,
            )
            for i, p in enumerate(projections)
        ]

    def on_page(reached: int, counts: list[int]) -> None:
        nonlocal position, applied, last_report
        position, applied = reached, counts
        now = time.perf_counter()
        if progress is not None and now - last_report >= progress_every:
            last_report = now
            for report in reports():
                progress(report)

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        connections = await open_scratch_connections(dsn, projections)
        if workers > 1:
            position, applied = await _partitioned_pass(
                dsn, projections, workers=workers, until=head, page_size=page_size, on_page=on_page
            )
        else:
            position = await fold_pass(
                store, connections, projections, page_size=page_size, on_page=on_page
            )
        for index, (connection, projection) in enumerate(
            zip(connections, projections, strict=True)
        ):
            applied[index] += await _swap_in(store, connection, projection, position, page_size)
        head = max(head, await store.head())
        final = reports()
        if progress is not None:
            for report in final:
                progress(report)
        return final
    finally:
        if gc_was_enabled:
            gc.enable()
        for connection in connections:
            await connection.close()


async def _partitioned_pass(
    dsn: str,
    projections: Sequence[Projection],
    *,
    workers: int,
    until: int,
    page_size: int,
    on_page: Callable[[int, list[int]], None],
) -> tuple[int, list[int]]:
    """Fold the log up to `until` in `workers` processes, one part of the streams each;
    report the slowest part's position and the events applied by all."""
    # Spawned, not forked: the parent runs an event loop and holds connections.
    context = multiprocessing.get_context("spawn")
    reports: Reports = context.Queue()
    names = [p.name for p in projections]
    processes = [
        context.Process(
            target=run_partition_worker,
            args=(PartitionJob(dsn, names, (workers, index), until, page_size), reports),
            name=f"rebuild-{index}",
            daemon=True,
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    positions = [0] * workers
    counts = [[0] * len(projections) for _ in range(workers)]
    done: set[int] = set()
    try:
        while len(done) < workers:
            try:
                report = await asyncio.to_thread(reports.get, True, 0.5)
            except queue.Empty:
                dead = [p.name for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RebuildFailed(f"rebuild workers {dead} ended unexpectedly") from None
                continue
            kind, index = report[0], int(report[1])  # type: ignore[call-overload]
            if kind == "failed":
                raise RebuildFailed(f"rebuild worker {index} failed:\n{report[2]}")
            positions[index] = int(report[2])  # type: ignore[call-overload]
            if kind == "done":
                done.add(index)
            else:
                counts[index] = list(report[3])  # type: ignore[call-overload]
            totals = [sum(c[i] for c in counts) for i in range(len(projections))]
            on_page(min(positions), totals)
        return until, [sum(c[i] for c in counts) for i in range(len(projections))]
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            await asyncio.to_thread(process.join, 10)
        with contextlib.suppress(Exception):
            reports.close()


async def _swap_in(
    store: EventStore,
    connection: asyncpg.Connection,
    projection: Projection,
    position: int,
    page_size: int,
) -> int:
    """Under the checkpoint row's lock: fold the tail, replace the tables, move the
    checkpoint. Returns how many tail events were applied."""
    schema = scratch_schema(projection)
    applied = 0
    async with connection.transaction():
        await connection.fetchval(
            "SELECT position FROM public.projection_checkpoints WHERE name = $1 FOR UPDATE",
            projection.name,
        )
        # Live runners are now blocked on the checkpoint row; nobody else writes the old
        # tables. Fold the tail that arrived since the pass ended, then swap.
        while True:
            page = await store.read_all(after=position, limit=page_size, filter=projection.filter)
            if page.next_after == position:
                break
            if page.events:
                await projection.apply(connection, page.events)
            applied += len(page.events)
            position = page.next_after
        for table in projection.tables:
            await connection.execute(f"DROP TABLE IF EXISTS public.{table} CASCADE")
            await connection.execute(f"ALTER TABLE {schema}.{table} SET SCHEMA public")
        await connection.execute(
            """
            INSERT INTO public.projection_checkpoints (name, position, version)
            VALUES ($1, $2, $3)
            ON CONFLICT (name) DO UPDATE SET position = $2, version = $3, updated_at = now()
            """,
            projection.name,
            position,
            projection.version,
        )
        await connection.execute(f"DROP SCHEMA {schema} CASCADE")
    return applied
