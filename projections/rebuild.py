"""Rebuilding a projection from the whole log while the service keeps serving.

The projection's own code builds fresh tables in a scratch schema (`search_path` points
there, the SQL is unqualified), reading the log in large pages. When it has caught up, one
transaction locks the projection's checkpoint row (live runners in every process wait on
it), applies the last few events, replaces the tables in `public` with the new ones and
moves the checkpoint. Readers see the old tables until that commit and the new ones after.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg
import msgspec

from eventlog.store import EventStore
from projections.projection import Projection


class RebuildProgress(msgspec.Struct, frozen=True):
    projection: str
    position: int
    head: int
    events: int
    events_per_s: float
    eta_s: float | None


ProgressCallback = Callable[[RebuildProgress], None]


async def rebuild(
    store: EventStore,
    dsn: str,
    projection: Projection,
    *,
    page_size: int = 20_000,
    progress: ProgressCallback | None = None,
    progress_every: float = 1.0,
) -> RebuildProgress:
    """Rebuild `projection` from position 0 and swap it in atomically."""
    schema = f"rebuild_{projection.name}"
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await connection.execute(f"CREATE SCHEMA {schema}")
        await connection.execute(f"SET search_path = {schema}, public")
        await connection.execute(projection.ddl())

        started = time.perf_counter()
        last_report = started
        position = events = 0
        head = await store.head()

        def report() -> RebuildProgress:
            elapsed = max(time.perf_counter() - started, 1e-9)
            rate = position / elapsed if position else 0.0
            eta = (head - position) / rate if rate > 0 else None
            return RebuildProgress(
                projection=projection.name,
                position=position,
                head=head,
                events=events,
                events_per_s=rate,
                eta_s=eta,
            )

        while True:
            page = await store.read_all(after=position, limit=page_size, filter=projection.filter)
            if page.next_after == position:
                break
            if page.events:
                async with connection.transaction():
                    await projection.apply(connection, page.events)
            position = page.next_after
            events += len(page.events)
            if position >= head:
                head = await store.head()
            now = time.perf_counter()
            if progress is not None and now - last_report >= progress_every:
                last_report = now
                progress(report())

        async with connection.transaction():
            await connection.fetchval(
                "SELECT position FROM public.projection_checkpoints WHERE name = $1 FOR UPDATE",
                projection.name,
            )
            # Live runners are now blocked on the checkpoint row; nobody else writes the
            # old tables. Fold the tail that arrived since the last page, then swap.
            while True:
                page = await store.read_all(
                    after=position, limit=page_size, filter=projection.filter
                )
                if page.next_after == position:
                    break
                if page.events:
                    await projection.apply(connection, page.events)
                events += len(page.events)
                position = page.next_after
            for table in projection.tables:
                await connection.execute(f"DROP TABLE IF EXISTS public.{table} CASCADE")
                await connection.execute(f"ALTER TABLE {schema}.{table} SET SCHEMA public")
            await connection.execute(
                """
                INSERT INTO public.projection_checkpoints (name, position, version)
                VALUES ($1, $2, $3)
                ON CONFLICT (name) DO UPDATE
                    SET position = $2, version = $3, updated_at = now()
                """,
                projection.name,
                position,
                projection.version,
            )
            await connection.execute(f"DROP SCHEMA {schema} CASCADE")
        head = max(head, position)
        final = report()
        if progress is not None:
            progress(final)
        return final
    finally:
        await connection.close()
