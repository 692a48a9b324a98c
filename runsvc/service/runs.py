"""The command side: load a run, let a pure command decide, append with the expected
version, and retry on a version conflict by loading and deciding again. Side effects
(admitting the next run of a concurrency key) happen after the commit.

Runs are loaded from an in-process cache, else from the run_state projection's stored
state, else from the stream; in each case only the events after what was loaded are read.
Commands on one run are serialised within the process (a lock per run), so the cache is
never applied twice; across processes the version check decides.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import structlog

from eventlog.errors import StreamNotFound, VersionConflict
from eventlog.records import Metadata
from eventlog.store import NO_STREAM, EventStore
from runsvc.domain import commands
from runsvc.domain.codec import decode_run
from runsvc.domain.errors import Conflict, NotFound, ServiceError
from runsvc.domain.events import Actor, Event
from runsvc.domain.fold import TERMINAL_PHASES, apply, apply_event
from runsvc.domain.model import Run
from runsvc.domain.requests import CreateRunRequest, RecreateRequest
from runsvc.domain.validation import validate_create

log = structlog.get_logger("runsvc.service")

Decision = Callable[[Run, datetime], list[Event]]
_ATTEMPTS = 8
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_run_id() -> str:
    """A ULID: 26 characters, sortable by creation time."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -5, -5))


def stream_of(run_id: str) -> str:
    return f"run-{run_id}"


class _Pending:
    __slots__ = ("caller", "decision", "future")

    def __init__(self, decision: Decision, caller: Caller, future: asyncio.Future[Run]) -> None:
        self.decision = decision
        self.caller = caller
        self.future = future


class Caller:
    """Who issues a command and under which request: becomes the events' metadata."""

    def __init__(self, actor: Actor, request_id: str | None = None) -> None:
        self.actor = actor
        self.request_id = request_id

    def metadata(self, now: datetime) -> Metadata:
        return Metadata(actor=self.actor, recorded_at=now, request_id=self.request_id)


class RunService:
    def __init__(
        self,
        store: EventStore,
        *,
        max_tasks: int = 10_000,
        cache_size: int = 5000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.pool: asyncpg.Pool = store.pool
        self.max_tasks = max_tasks
        self.clock = clock
        self._cache: OrderedDict[str, Run] = OrderedDict()
        self._cache_size = cache_size
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._pending: dict[str, list[_Pending]] = {}
        self._writing: set[str] = set()

    # -- reading

    async def load(self, run_id: str) -> Run:
        """The run as of the newest committed event. Raises NotFound."""
        async with self._serialised(run_id):
            return await self._load(run_id)

    async def _load(self, run_id: str) -> Run:
        run = self._cache.get(run_id)
        if run is None:
            state = await self.pool.fetchval(
                "SELECT state FROM run_state WHERE run_id = $1", run_id
            )
            run = decode_run(bytes(state)) if state is not None else None
        try:
            tail = await self.store.read_stream(
                stream_of(run_id), from_version=(run.version if run else 0) + 1
            )
        except StreamNotFound:
            raise NotFound(f"no run {run_id}") from None
        for recorded in tail:
            run = apply(run, recorded)
        assert run is not None
        self._remember(run)
        return run

    def _remember(self, run: Run) -> None:
        self._cache[run.id] = run
        self._cache.move_to_end(run.id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    @asynccontextmanager
    async def _serialised(self, run_id: str) -> AsyncIterator[None]:
        """One command (or load) at a time per run in this process, so the cached run is
        never folded twice. The lock is dropped when nobody holds or waits for it."""
        lock, users = self._locks.get(run_id, (asyncio.Lock(), 0))
        self._locks[run_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[run_id]
            if users == 1:
                del self._locks[run_id]
            else:
                self._locks[run_id] = (lock, users - 1)

    # -- the command loop

    async def execute(self, run_id: str, decision: Decision, caller: Caller) -> Run:
        """Load, decide, append with the expected version; on a conflict, again.

        Commands that arrive for a run while another is being written are coalesced: the
        next writer decides them one after the other on the same loaded run (each sees the
        ones before it) and appends them together, so a busy run (dozens of executors
        claiming and reporting its tasks) costs one load and one transaction per batch,
        not per command. Each command still succeeds or fails on its own."""
        future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(run_id, []).append(_Pending(decision, caller, future))
        if run_id not in self._writing:
            self._writing.add(run_id)
            try:
                await self._write_pending(run_id)
            finally:
                self._writing.discard(run_id)
        run = await future
        # Outside the run's lock: admitting the next run takes that run's lock.
        await self.after_commit(run, caller)
        return run

    async def _write_pending(self, run_id: str) -> None:
        async with self._serialised(run_id):
            while batch := self._pending.pop(run_id, []):
                try:
                    await self._write_batch(run_id, batch)
                except BaseException as exc:
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise

    async def _write_batch(self, run_id: str, batch: list[_Pending]) -> None:
        for _ in range(_ATTEMPTS):
            run = await self._load(run_id)
            now = self.clock()
            decided: list[tuple[_Pending, list[Event]]] = []
            with run.journal():  # each decision sees the ones before it; then undone
                for pending in batch:
                    try:
                        events = pending.decision(run, now)
                    except ServiceError as exc:
                        pending.future.set_exception(exc)
                        continue
                    for event in events:
                        apply_event(run, event, version=run.version + 1)
                    decided.append((pending, events))
            events = [event for _, decided_events in decided for event in decided_events]
            if events:
                # One append for the whole batch: it commits or conflicts as a whole, and
                # every event keeps its own caller's metadata.
                metas = [
                    pending.caller.metadata(now)
                    for pending, decided_events in decided
                    for _ in decided_events
                ]
                try:
                    positions = await self.store.append(
                        stream_of(run_id), events, run.version, meta=metas, scope=run.group
                    )
                except VersionConflict:
                    self._cache.pop(run_id, None)
                    batch = [pending for pending, _ in decided]
                    continue
                self._applied(run, events, positions)
            for pending, _ in decided:
                pending.future.set_result(run)
            return
        for pending in batch:
            pending.future.set_exception(Conflict(f"run {run_id} is changing too fast; try again"))

    def _applied(self, run: Run, events: list[Event], positions: list[int]) -> None:
        for event in events:
            apply_event(run, event, version=run.version + 1)
        run.position = positions[-1]
        self._remember(run)

    async def after_commit(self, run: Run, caller: Caller) -> None:
        if run.concurrency_key is not None and run.phase in TERMINAL_PHASES:
            await self.release_slot(run.concurrency_key, run.id, caller)

    # -- creating

    async def _next_counter(self, group: str) -> int:
        """The group's next run number (runs of a group are numbered 1, 2, 3, ...)."""
        counter: int = await self.pool.fetchval(
            """
            INSERT INTO group_counters (group_path, counter) VALUES ($1, 1)
            ON CONFLICT (group_path) DO UPDATE SET counter = group_counters.counter + 1
            RETURNING counter
            """,
            group,
        )
        return counter

    async def create(self, request: CreateRunRequest, caller: Caller) -> tuple[Run, bool]:
        """Create a run; returns it and whether it is new. With an idempotency key matching
        a run that has not ended, that run is returned and nothing is appended."""
        validate_create(request, max_tasks=self.max_tasks)
        counter = await self._next_counter(request.group)
        run_id = new_run_id()
        now = self.clock()
        if request.idempotency_key is None and request.concurrency_key is None:
            events = commands.create_run(
                request, run_id=run_id, counter=counter, now=now, admitted=True
            )
            positions = await self.store.append(
                stream_of(run_id), events, NO_STREAM, meta=caller.metadata(now), scope=request.group
            )
            return self._created(events, positions), True
        async with self.pool.acquire() as connection, connection.transaction():
            if request.idempotency_key is not None:
                existing = await self._idempotent_match(connection, request.idempotency_key)
                if existing is not None:
                    return existing, False
                await connection.execute(
                    """
                    INSERT INTO idempotency_keys (key, run_id) VALUES ($1, $2)
                    ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id
                    """,
                    request.idempotency_key,
                    run_id,
                )
            admitted = True
            if request.concurrency_key is not None:
                admitted = await self._take_slot(connection, request.concurrency_key, run_id)
            events = commands.create_run(
                request, run_id=run_id, counter=counter, now=now, admitted=admitted
            )
            positions = await self.store.append_in_transaction(
                connection,
                stream_of(run_id),
                events,
                NO_STREAM,
                meta=caller.metadata(now),
                scope=request.group,
            )
        return self._created(events, positions), True

    def _created(self, events: list[Event], positions: list[int]) -> Run:
        run: Run | None = None
        for event in events:
            run = apply_event(run, event, version=(run.version if run else 0) + 1)
        assert run is not None
        run.position = positions[-1]
        self._remember(run)
        return run

    async def _idempotent_match(self, connection: asyncpg.Connection, key: str) -> Run | None:
        # Serialises creates with one key across every process until this commits.
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('idempotency:' || $1))", key
        )
        run_id = await connection.fetchval(
            "SELECT run_id FROM idempotency_keys WHERE key = $1", key
        )
        if run_id is None:
            return None
        try:
            run = await self.load(run_id)
        except NotFound:
            return None  # its creation never committed
        return None if run.phase in TERMINAL_PHASES else run

    async def _take_slot(self, connection: asyncpg.Connection, key: str, run_id: str) -> bool:
        """Queue `run_id` on concurrency key `key`; True when it may start right away."""
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('concurrency:' || $1))", key
        )
        active = await connection.fetchval(
            "SELECT run_id FROM concurrency_slots WHERE key = $1 AND active", key
        )
        if active is not None and not await self._still_active(active):
            await connection.execute("DELETE FROM concurrency_slots WHERE run_id = $1", active)
            active = None
        await connection.execute(
            "INSERT INTO concurrency_slots (run_id, key, active) VALUES ($1, $2, $3)",
            run_id,
            key,
            active is None,
        )
        return active is None

    async def _still_active(self, run_id: str) -> bool:
        try:
            return (await self.load(run_id)).phase not in TERMINAL_PHASES
        except NotFound:
            return False

    async def release_slot(self, key: str, run_id: str, caller: Caller) -> None:
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
                    queued = await self.load(next_id)
                except NotFound:
                    queued = None
                if queued is None or queued.phase != "queued":
                    await connection.execute(
                        "DELETE FROM concurrency_slots WHERE run_id = $1", next_id
                    )
                    continue
                now = self.clock()
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
                self._cache.pop(next_id, None)
                log.info("run admitted", run_id=next_id, concurrency_key=key)
                return

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

    # -- the other commands

    async def stop(self, run_id: str, caller: Caller) -> Run:
        return await self.execute(run_id, commands.request_stop, caller)

    async def cancel(self, run_id: str, caller: Caller) -> Run:
        return await self.execute(run_id, commands.cancel, caller)

    async def approve(self, run_id: str, task: str, comment: str | None, caller: Caller) -> Run:
        return await self.execute(
            run_id,
            lambda run, now: commands.approve(
                run, task, approver=caller.actor.id, comment=comment, now=now
            ),
            caller,
        )

    async def tick(self, run_id: str, caller: Caller) -> Run:
        return await self.execute(run_id, commands.tick, caller)

    async def recreate(self, run_id: str, request: RecreateRequest, caller: Caller) -> Run:
        old = await self.load(run_id)
        if old.phase not in TERMINAL_PHASES:
            raise Conflict(f"run {run_id} is {old.phase}; recreate a run once it has ended")
        replacement = CreateRunRequest(
            group=old.group,
            name=old.name,
            config=old.config,
            concurrency_key=old.concurrency_key,
            annotations=old.annotations,
            static_environment=old.static_environment,
            environment=old.environment if request.environment is None else request.environment,
        )
        validate_create(replacement, max_tasks=self.max_tasks)
        counter = await self._next_counter(old.group)
        new_id = new_run_id()
        now = self.clock()
        async with self.pool.acquire() as connection, connection.transaction():
            admitted = True
            if old.concurrency_key is not None:
                admitted = await self._take_slot(connection, old.concurrency_key, new_id)
            events = commands.recreate(
                old,
                mode=request.from_,
                tasks=request.tasks,
                environment=request.environment,
                run_id=new_id,
                counter=counter,
                now=now,
                admitted=admitted,
            )
            positions = await self.store.append_in_transaction(
                connection,
                stream_of(new_id),
                events,
                NO_STREAM,
                meta=caller.metadata(now),
                scope=old.group,
            )
        return self._created(events, positions)
