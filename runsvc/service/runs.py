"""The run commands as the API offers them: create, recreate, stop, cancel, approve, tick.

Each is "read, decide, conditional write, side effects after commit": the writer
(`runsvc.service.writer`) loads the run and appends what a pure command
(`runsvc.domain.commands`) decides; admitting the next run of a concurrency key
(`runsvc.service.slots`) happens only once the run's end has committed. A create also takes
its group's run number and, in the transaction of its events, its idempotency key
(`runsvc.service.counters`) and its concurrency slot.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from eventlog.store import NO_STREAM, EventStore
from runsvc.domain import commands
from runsvc.domain.errors import NotFound
from runsvc.domain.events import stream_of
from runsvc.domain.fold import TERMINAL_PHASES
from runsvc.domain.model import DEFAULT_MAX_FOREACH_ITEMS, Run
from runsvc.domain.requests import CreateRunRequest, RecreateRequest
from runsvc.domain.validation import validate_create
from runsvc.service import counters
from runsvc.service.slots import ConcurrencySlots
from runsvc.service.writer import BIG_RUN_TASKS, Caller, Decision, RunWriter, off_loop_if

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

Within = Callable[[asyncpg.Connection, str], Awaitable[None]]
"""Writes that commit in the transaction creating a run (given the run's id)."""


def new_run_id() -> str:
    """A ULID: 26 characters, sortable by creation time."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -5, -5))


class RunService:
    def __init__(
        self,
        store: EventStore,
        *,
        max_tasks: int = 10_000,
        max_foreach_items: int = DEFAULT_MAX_FOREACH_ITEMS,
        cache_bytes: int = 128 * 1024 * 1024,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.pool: asyncpg.Pool = store.pool
        self.max_tasks = max_tasks
        self.max_foreach_items = max_foreach_items
        self.clock = clock
        self.writer = RunWriter(store, clock=clock, cache_bytes=cache_bytes)
        self.slots = ConcurrencySlots(store, self.writer)

    async def load(self, run_id: str) -> Run:
        """The run as of the newest committed event. Raises NotFound."""
        return await self.writer.load(run_id)

    async def execute(self, run_id: str, decision: Decision, caller: Caller) -> Run:
        """Decide and append one command (see `RunWriter.execute`), then free the run's
        concurrency slot if the command ended it."""
        run = await self.writer.execute(run_id, decision, caller)
        # Outside the run's lock: admitting the next run takes that run's lock.
        await self.after_commit(run, caller)
        return run

    async def after_commit(self, run: Run, caller: Caller) -> None:
        if run.concurrency_key is not None and run.phase in TERMINAL_PHASES:
            await self.slots.release(run.concurrency_key, run.id, caller)

    async def release_slot(self, key: str, run_id: str, caller: Caller) -> None:
        await self.slots.release(key, run_id, caller)

    async def queue_position(self, run_id: str) -> int | None:
        return await self.slots.queue_position(run_id)

    # -- creating

    async def create(
        self,
        request: CreateRunRequest,
        caller: Caller,
        *,
        within: Within | None = None,
    ) -> tuple[Run, bool]:
        """Create a run; returns it and whether it is new. With an idempotency key matching
        a run that has not ended, that run is returned and nothing is appended.

        `within(connection, run_id)`, when given, runs in the transaction that creates the
        run (or finds it by its key), so what it writes commits with the run or not at all;
        if it raises, nothing is created."""
        # A run of thousands of tasks takes a good part of a second to check and plan:
        # in a worker thread (nothing else holds the request or the new run).
        big = len(request.config.tasks) >= BIG_RUN_TASKS
        await off_loop_if(big, validate_create, request, max_tasks=self.max_tasks)
        counter = await counters.next_counter(self.pool, request.group)
        run_id = new_run_id()
        now = self.clock()
        decide = functools.partial(
            off_loop_if,
            big,
            commands.create_run,
            request,
            run_id=run_id,
            counter=counter,
            now=now,
            submitted_by=caller.actor.id,
            max_foreach_items=self.max_foreach_items,
        )
        if within is None and request.idempotency_key is None and request.concurrency_key is None:
            events = await decide(admitted=True)
            positions = await self.store.append(
                stream_of(run_id), events, NO_STREAM, meta=caller.metadata(now), scope=request.group
            )
            return await self.writer.created(events, positions), True
        async with self.pool.acquire() as connection, connection.transaction():
            if request.idempotency_key is not None:
                existing = await self._idempotent_match(connection, request.idempotency_key)
                if existing is not None:
                    if within is not None:
                        await within(connection, existing.id)
                    return existing, False
                await counters.record_idempotency_key(connection, request.idempotency_key, run_id)
            admitted = True
            if request.concurrency_key is not None:
                admitted = await self.slots.take(connection, request.concurrency_key, run_id)
            events = await decide(admitted=admitted)
            positions = await self.store.append_in_transaction(
                connection,
                stream_of(run_id),
                events,
                NO_STREAM,
                meta=caller.metadata(now),
                scope=request.group,
            )
            if within is not None:
                await within(connection, run_id)
        return await self.writer.created(events, positions), True

    async def _idempotent_match(self, connection: asyncpg.Connection, key: str) -> Run | None:
        run_id = await counters.lock_idempotency_key(connection, key)
        if run_id is None:
            return None
        try:
            run = await self.writer.read_committed(connection, run_id)
        except NotFound:
            return None  # its creation never committed
        return None if run.phase in TERMINAL_PHASES else run

    async def recreate(self, run_id: str, request: RecreateRequest, caller: Caller) -> Run:
        old = await self.load(run_id)
        # Validated before anything is taken (a run number, a slot): the same rule the
        # command applies below, so a refused recreate changes nothing.
        validate_create(commands.recreation(old, request.environment), max_tasks=self.max_tasks)
        counter = await counters.next_counter(self.pool, old.group)
        new_id = new_run_id()
        now = self.clock()
        async with self.pool.acquire() as connection, connection.transaction():
            admitted = True
            if old.concurrency_key is not None:
                admitted = await self.slots.take(connection, old.concurrency_key, new_id)
            events = commands.recreate(
                old,
                mode=request.from_,
                tasks=request.tasks,
                environment=request.environment,
                run_id=new_id,
                counter=counter,
                now=now,
                admitted=admitted,
                submitted_by=caller.actor.id,
                max_foreach_items=self.max_foreach_items,
            )
            positions = await self.store.append_in_transaction(
                connection,
                stream_of(new_id),
                events,
                NO_STREAM,
                meta=caller.metadata(now),
                scope=old.group,
            )
        return await self.writer.created(events, positions)

    # -- the other commands

    async def stop(self, run_id: str, caller: Caller) -> Run:
        return await self.execute(run_id, commands.request_stop, caller)

    async def cancel(self, run_id: str, caller: Caller) -> Run:
        return await self.execute(run_id, commands.cancel, caller)

    async def approve(self, run_id: str, task: str, comment: str | None, caller: Caller) -> Run:
        return await self.execute(
            run_id,
            lambda run, now: commands.approve(
                run,
                task,
                approver=caller.actor.id,
                approver_role=caller.role,
                comment=comment,
                now=now,
            ),
            caller,
        )

    async def tick(self, run_id: str, caller: Caller) -> Run:
        return await self.execute(run_id, commands.tick, caller)
