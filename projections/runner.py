"""The checkpointed projection runner.

It reads events after its projection's checkpoint in batches, applies them, and writes the
read tables and the new checkpoint in ONE transaction, so a crash at any point repeats no
effect and loses none. It catches up, then follows the log live, woken by the event store's
listener.

Several service processes may run the same projection: every batch transaction first locks
the projection's checkpoint row and checks that it is still where this runner read from.
If another process got there first, this runner drops its batch and continues from the
other's checkpoint. So each batch is applied exactly once, by whichever process wins the
row lock; the loser only wasted a read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import asyncpg
import structlog

from eventlog.appender import CONNECTION_ERRORS
from eventlog.records import RecordedEvent
from eventlog.store import EventStore
from projections.projection import Projection

log = structlog.get_logger("runsvc.projections")


async def checkpoint_of(pool: asyncpg.Pool, name: str) -> int | None:
    """The log position projection `name` has applied, or None before its first start."""
    position: int | None = await pool.fetchval(
        "SELECT position FROM projection_checkpoints WHERE name = $1", name
    )
    return position


async def ensure_tables(connection: asyncpg.Connection, projection: Projection) -> bool:
    """Create the projection's tables and checkpoint if missing. When the stored version
    differs from the code's, drop the tables and start over from position 0 (a rebuild
    in place). Returns True when the projection starts from scratch."""
    async with connection.transaction():
        # Serialises concurrent starts of the same projection in several processes.
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('projection:' || $1))", projection.name
        )
        row = await connection.fetchrow(
            "SELECT version FROM projection_checkpoints WHERE name = $1", projection.name
        )
        if row is not None and row["version"] == projection.version:
            return False
        for table in projection.tables:
            await connection.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        await connection.execute(projection.ddl())
        await connection.execute(
            """
            INSERT INTO projection_checkpoints (name, position, version) VALUES ($1, 0, $2)
            ON CONFLICT (name) DO UPDATE SET position = 0, version = $2, updated_at = now()
            """,
            projection.name,
            projection.version,
        )
        if row is not None:
            log.warning(
                "projection version changed; rebuilding from the log",
                projection=projection.name,
                stored=row["version"],
                code=projection.version,
            )
        return True


class ProjectionRunner:
    """Keeps one projection up to date with the log."""

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        *,
        batch_size: int = 2000,
        on_batch: Callable[[int], None] | None = None,
        on_applied: Callable[[Sequence[RecordedEvent] | None], None] | None = None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.batch_size = batch_size
        self.position = 0
        self.events_applied = 0
        self._on_batch = on_batch
        # Told after each commit what changed: the events applied, or None when another
        # process applied the range (what it touched is unknown here).
        self._on_applied = on_applied
        self._caught_up = asyncio.Event()
        self._stepping = asyncio.Lock()

    @property
    def lag(self) -> int:
        """Positions between the newest event the process knows of and the checkpoint."""
        return max(0, self.store.notifier.head - self.position)

    async def start(self) -> None:
        async with self.store.pool.acquire() as connection:
            await ensure_tables(connection, self.projection)
            self.position = await self._stored_position(connection)

    async def run(self) -> None:
        """Catch up, then follow live; never returns (cancel it to stop)."""
        delay = 0.05
        while True:
            try:
                applied = await self.step()
            except CONNECTION_ERRORS as exc:
                log.warning(
                    "projection batch failed; retrying", projection=self.name, error=str(exc)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            if applied == 0 and self.position >= self.store.notifier.head:
                self._caught_up.set()
                await self.store.notifier.wait_beyond(self.position)

    async def catch_up(self) -> None:
        """Apply batches until the checkpoint reaches the head as it is now."""
        head = await self.store.head()
        while self.position < head:
            await self.step()

    async def wait_caught_up(self) -> None:
        await self._caught_up.wait()

    @property
    def name(self) -> str:
        return self.projection.name

    async def step(self) -> int:
        """Apply the next batch; return how many events it held (0 when none was new or
        another process applied it first)."""
        # One step at a time in this process (the live loop and a catch_up may both call
        # it): two would find each other's range applied and report it as applied by
        # someone unknown, which empties the view cache.
        async with self._stepping:
            return await self._step()

    async def _step(self) -> int:
        start = self.position
        page = await self.store.read_all(
            after=start, limit=self.batch_size, filter=self.projection.filter
        )
        if page.next_after == start:
            return 0
        async with self.store.pool.acquire() as connection, connection.transaction():
            current = await connection.fetchval(
                "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
                self.projection.name,
            )
            if current != start:
                # Another process applied this range (or a rebuild swapped tables in).
                self.position = int(current)
                skipped = True
            else:
                skipped = False
            if not skipped:
                if page.events:
                    await self.projection.apply(connection, page.events)
                await connection.execute(
                    "UPDATE projection_checkpoints SET position = $2, updated_at = now() "
                    "WHERE name = $1",
                    self.projection.name,
                    page.next_after,
                )
        if skipped:
            if self._on_applied is not None:
                self._on_applied(None)
            return 0
        if self._on_applied is not None and page.events:
            self._on_applied(page.events)
        self.position = page.next_after
        self.events_applied += len(page.events)
        if self._on_batch is not None:
            self._on_batch(len(page.events))
        return len(page.events)

    async def _stored_position(self, connection: asyncpg.Connection) -> int:
        position = await connection.fetchval(
            "SELECT position FROM projection_checkpoints WHERE name = $1", self.projection.name
        )
        return int(position or 0)


async def run_forever(runner: ProjectionRunner) -> None:
    """`runner.run()` for a background task: logs the unexpected and keeps going."""
    while True:
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("projection runner crashed; restarting", projection=runner.name)
            await asyncio.sleep(1.0)
