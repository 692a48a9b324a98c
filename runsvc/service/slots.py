"""Concurrency keys: at most one active run per key, the others queued in creation order.

A run takes its place in the transaction that creates it; when it ends, its slot is freed
and the oldest queued run is admitted, in one transaction with the admitting events. A
crash between a run's end and that release leaves a slot held by an ended run; the timer
loop's `release_ended` repairs it.

This module holds the SQL of `concurrency_slots`."""

from __future__ import annotations

import asyncpg
import structlog

from eventlog.store import EventStore
from projections.run_state import ended_runs
from runsvc.domain import commands
from runsvc.domain.errors import NotFound
from runsvc.domain.events import stream_of
from runsvc.domain.fold import TERMINAL_PHASES
from runsvc.service.writer import Caller, RunWriter

log = structlog.get_logger("runsvc.service")


class ConcurrencySlots:
    def __init__(self, store: EventStore, writer: RunWriter) -> None:
        self.store = store
        self.pool: asyncpg.Pool = store.pool
        self.writer = writer

    async def take(self, connection: asyncpg.Connection, key: str, run_id: str) -> bool:
        """Queue `run_id` on concurrency key `key`; True when it may start right away."""
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('concurrency:' || $1))", key
        )
        active = await connection.fetchval(
            "SELECT run_id FROM concurrency_slots WHERE key = $1 AND active", key
        )
        if active is not None and not await self._still_active(connection, active):
            await connection.execute("DELETE FROM concurrency_slots WHERE run_id = $1", active)
            active = None
        await connection.execute(
            "INSERT INTO concurrency_slots (run_id, key, active) VALUES ($1, $2, $3)",
            run_id,
            key,
            active is None,
        )
        return active is None

    async def _still_active(self, connection: asyncpg.Connection, run_id: str) -> bool:
        try:
            run = await self.writer.read_committed(connection, run_id)
            return run.phase not in TERMINAL_PHASES
        except NotFound:
            return False

    async def release(self, key: str, run_id: str, caller: Caller) -> None:
        """`run_id` has ended: free its place on `key` and admit the oldest queued run."""
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtext('concurrency:' || $1))", key
            )
            await connection.execute("DELETE FROM concurrency_slots WHERE run_id = $1", run_id)
            if await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM concurrency_slots WHERE key = $1 AND active)", key
            ):
                return
            while True:
                next_id = await connection.fetchval(
                    "SELECT run_id FROM concurrency_slots WHERE key = $1 AND NOT active "
                    "ORDER BY seq LIMIT 1",
                    key,
                )
                if next_id is None:
                    return
                try:
                    queued = await self.writer.read_committed(connection, next_id)
                except NotFound:
                    queued = None
                if queued is None or queued.phase != "queued":
                    await connection.execute(
                        "DELETE FROM concurrency_slots WHERE run_id = $1", next_id
                    )
                    continue
                now = self.writer.clock()
                events = commands.admit(queued, now)
                await self.store.append_in_transaction(
                    connection,
                    stream_of(next_id),
                    events,
                    queued.version,
                    meta=caller.metadata(now),
                    scope=queued.group,
                )
                await connection.execute(
                    "UPDATE concurrency_slots SET active = true WHERE run_id = $1", next_id
                )
                self.writer.forget(next_id)
                log.info("run admitted", run_id=next_id, concurrency_key=key)
                return

    async def release_ended(self, caller: Caller) -> None:
        """Free the slots of runs that ended without releasing them (a crash in between)."""
        rows = await self.pool.fetch("SELECT key, run_id FROM concurrency_slots")
        ended = await ended_runs(self.pool, [row["run_id"] for row in rows])
        for row in rows:
            if row["run_id"] in ended:
                await self.release(row["key"], row["run_id"], caller)

    async def queue_position(self, run_id: str) -> int | None:
        """1 for the next run to start on its concurrency key, 2 after it, …"""
        position = await self.pool.fetchval(
            """
            SELECT count(*) + 1 FROM concurrency_slots q, concurrency_slots me
            WHERE me.run_id = $1 AND NOT me.active AND q.key = me.key AND NOT q.active
              AND q.seq < me.seq
            """,
            run_id,
        )
        exists = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM concurrency_slots WHERE run_id = $1 AND NOT active)",
            run_id,
        )
        return int(position) if exists else None
