"""The command loop: load a run, let a pure command decide, append with the expected version,
and on a version conflict load and decide again.

Runs are loaded from an in-process cache, else from the run_state projection's stored
state, else from the stream; in each case only the events after what was loaded are read.
Commands on one run are serialised within the process (a lock per run), so the cache is
never applied twice; across processes the version check decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from eventlog.errors import StreamNotFound, VersionConflict
from eventlog.records import Metadata
from eventlog.store import EventStore
from projections.run_state import stored_run
from runsvc.domain.errors import Conflict, NotFound, ServiceError
from runsvc.domain.events import Actor, Event, RunCreated, stream_of
from runsvc.domain.fold import apply, apply_event
from runsvc.domain.model import Run, approximate_size
from runsvc.infra.lru import SizedLRU

T = TypeVar("T")

Decision = Callable[[Run, datetime], list[Event]]
_ATTEMPTS = 8


class Caller:
    """Who issues a command and under which request: becomes the events' metadata."""

    def __init__(
        self, actor: Actor, request_id: str | None = None, role: str | None = None
    ) -> None:
        self.actor = actor
        self.request_id = request_id
        self.role = role  # the token's role, for rules that name roles

    def metadata(self, now: datetime) -> Metadata:
        return Metadata(actor=self.actor, recorded_at=now, request_id=self.request_id)


class _Pending:
    __slots__ = ("caller", "decision", "future")

    def __init__(self, decision: Decision, caller: Caller, future: asyncio.Future[Run]) -> None:
        self.decision = decision
        self.caller = caller
        self.future = future


class RunWriter:
    """Loads runs and writes the events commands decide, one run at a time."""

    def __init__(
        self,
        store: EventStore,
        *,
        clock: Callable[[], datetime],
        cache_bytes: int = 128 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.clock = clock
        self._cache: SizedLRU[str, Run] = SizedLRU(cache_bytes, approximate_size)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._pending: dict[str, list[_Pending]] = {}
        self._writing: set[str] = set()

    # -- reading

    async def load(self, run_id: str) -> Run:
        """The run as of the newest committed event. Raises NotFound."""
        async with self._serialised(run_id):
            return await self._load(run_id)

    async def _load(self, run_id: str) -> Run:
        cached = self._cache.get(run_id)
        if cached is None:
            cached = await stored_run(self.store.pool, run_id)
        run = await self._caught_up(cached, run_id)
        self.remember(run)
        return run

    async def read_committed(self, connection: asyncpg.Connection, run_id: str) -> Run:
        """The run as committed, read on `connection` alone: for a caller holding a lock
        in a transaction there. Such a caller must wait for nothing else (a pooled
        connection, this process's lock of the run): creates waiting on its lock may hold
        every pooled connection, and a command on the run may be waiting for one.
        Raises NotFound."""
        return await self._caught_up(await stored_run(connection, run_id), run_id, connection)

    async def _caught_up(
        self, run: Run | None, run_id: str, connection: asyncpg.Connection | None = None
    ) -> Run:
        """`run` (None: nothing folded yet) with the events after it applied."""
        try:
            tail = await self.store.read_stream(
                stream_of(run_id),
                from_version=(run.version if run else 0) + 1,
                connection=connection,
            )
        except StreamNotFound:
            raise NotFound(f"no run {run_id}") from None
        for recorded in tail:
            run = apply(run, recorded)
        if run is None:
            raise NotFound(f"no run {run_id}")
        return run

    def remember(self, run: Run) -> None:
        self._cache.put(run.id, run)

    def forget(self, run_id: str) -> None:
        """Another writer changed the run: the next load reads it again."""
        self._cache.pop(run_id)

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

    # -- writing

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
        return await future

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
            # On the loop, even for a big run: deciding on a copy in a thread cost a copy
            # of the whole run per command, which made executing a big run quadratic.
            outcome = _decide(run, batch, now)
            for pending, error in outcome.refused:
                pending.future.set_exception(error)
            decided = outcome.decided
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
                    self.forget(run_id)
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
        self.remember(run)

    async def created(self, events: list[Event], positions: list[int]) -> Run:
        """The run a create appended (`events` at `positions`), folded and cached."""
        run = await off_loop_if(is_big_creation(events), fold_created, events, positions)
        self.remember(run)
        return run


BIG_RUN_TASKS = 1000
"""Runs created with at least this many tasks are checked, planned and folded in a worker
thread."""


def is_big_creation(events: list[Event]) -> bool:
    created = events[0] if events else None
    return isinstance(created, RunCreated) and len(created.config.tasks) >= BIG_RUN_TASKS


async def off_loop_if(big: bool, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`work(*args, **kwargs)`, in a worker thread when `big`. Only for work on objects no
    other code touches meanwhile (a run being created, a private copy)."""
    if big:
        return await asyncio.to_thread(work, *args, **kwargs)
    return work(*args, **kwargs)


def fold_created(events: list[Event], positions: list[int]) -> Run:
    run: Run | None = None
    for event in events:
        run = apply_event(run, event, version=(run.version if run else 0) + 1)
    assert run is not None
    run.position = positions[-1]
    return run


@dataclass
class _Outcome:
    decided: list[tuple[_Pending, list[Event]]]
    refused: list[tuple[_Pending, ServiceError]]


def _decide(run: Run, batch: list[_Pending], now: datetime) -> _Outcome:
    """Each command of the batch decided in turn, each seeing the ones before it; the run
    is left as it was (the events are folded in once appended)."""
    outcome = _Outcome(decided=[], refused=[])
    with run.journal(keep_inner=True):
        _decide_each(run, batch, now, outcome)
    return outcome


def _decide_each(run: Run, batch: list[_Pending], now: datetime, outcome: _Outcome) -> None:
    for pending in batch:
        version = run.version
        try:
            with run.journal():  # a refused command leaves nothing behind
                events = pending.decision(run, now)
        except ServiceError as exc:
            outcome.refused.append((pending, exc))
            continue
        # Every command folds its events under its own journal, which this batch's journal
        # keeps (`Run.journal(keep_inner=True)`): they are not folded a second time.
        assert run.version == version + len(events), "a command did not fold its events"
        outcome.decided.append((pending, events))
