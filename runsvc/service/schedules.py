"""Schedules on the command side: their commands (create, change, delete, trigger) and the
firing loop every `runsvc serve` process runs.

A firing is one transaction: the run's events, its idempotency key
`schedule:<id>:<fire time>` and the schedule's `schedule_fired` event, appended at the
version the schedule was loaded at. Two processes that decide the same firing cannot both
commit it (the second one's append conflicts and rolls its run back), and a process killed
before the commit leaves the fire time owed, so the next look makes it. An advisory lock
per schedule keeps two processes from even trying at once (a loser would waste a run number).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from eventlog.errors import StreamNotFound, VersionConflict
from eventlog.store import NO_STREAM, EventStore
from projections.schedules import decode_state, stored_schedule
from runsvc.domain import schedules
from runsvc.domain.errors import Conflict, NotFound
from runsvc.domain.events import (
    Actor,
    Event,
    ScheduleFired,
    ScheduleSkipped,
    schedule_stream_of,
)
from runsvc.domain.fold import TERMINAL_PHASES
from runsvc.domain.model import Run
from runsvc.domain.schedule_config import ChangeScheduleRequest, CreateScheduleRequest
from runsvc.domain.schedules import Fire, ScheduleState, Skip
from runsvc.service.runs import RunService, new_run_id
from runsvc.service.writer import Caller

log = structlog.get_logger("runsvc.schedules")

_RETRIES = 5
_LOCK_SPACE = 0x5C4ED  # pg_advisory_xact_lock(int, int): this module's half of the key


class ScheduleCounts:
    """What the firing loop did since the process started, for /metrics."""

    def __init__(self) -> None:
        self.fired = {"clock": 0, "manual": 0}
        self.skipped = {"missed": 0, "overlap": 0}


class ScheduleService:
    def __init__(
        self,
        store: EventStore,
        runs: RunService,
        *,
        grace: timedelta = timedelta(seconds=60),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.pool: asyncpg.Pool = store.pool
        self.runs = runs
        self.grace = grace
        self.clock = clock
        self.counts = ScheduleCounts()

    # -- reading

    async def load(self, schedule_id: str) -> ScheduleState:
        """The schedule as of its newest event. Raises NotFound (also once deleted)."""
        state = await self._load(schedule_id)
        if state.deleted:
            raise NotFound(f"no schedule {schedule_id}")
        return state

    async def _load(self, schedule_id: str) -> ScheduleState:
        """The projection's state of the schedule with the newer events of its stream
        folded in: a schedule that fired a million times is not re-read from its start."""
        stored = await stored_schedule(self.pool, schedule_id)
        try:
            records = await self.store.read_stream(
                schedule_stream_of(schedule_id),
                from_version=1 if stored is None else stored.version + 1,
            )
        except StreamNotFound:
            raise NotFound(f"no schedule {schedule_id}") from None
        state = schedules.fold_all(((r.event, r.version) for r in records), stored)
        if state is None:
            raise NotFound(f"no schedule {schedule_id}")
        return state

    async def listed(self, group: str | None = None) -> list[ScheduleState]:
        """Every schedule (under `group` when given), by group and name, from the
        schedules projection."""
        rows = await self.pool.fetch(
            """
            SELECT state FROM schedules
            WHERE NOT deleted AND ($1::text IS NULL OR group_path = $1
                  OR starts_with(group_path, rtrim($1, '/') || '/'))
            ORDER BY group_path, name, schedule_id
            """,
            group,
        )
        return [decode_state(row["state"]) for row in rows]

    # -- commands

    async def create(self, request: CreateScheduleRequest, caller: Caller) -> ScheduleState:
        schedule_id = new_run_id()
        now = self.clock()
        events = schedules.create(
            request, schedule_id=schedule_id, now=now, created_by=caller.actor.id
        )
        await self.store.append(
            schedule_stream_of(schedule_id),
            events,
            NO_STREAM,
            meta=caller.metadata(now),
            scope=request.group,
        )
        return self._folded(None, events, 0)

    async def change(
        self, schedule_id: str, request: ChangeScheduleRequest, caller: Caller
    ) -> ScheduleState:
        return await self._decide(
            schedule_id,
            lambda state, now: schedules.change(state, request, now=now),
            caller,
        )

    async def delete(self, schedule_id: str, caller: Caller) -> ScheduleState:
        return await self._decide(
            schedule_id, lambda state, now: schedules.delete(state, now=now), caller
        )

    async def _decide(
        self,
        schedule_id: str,
        decide: Callable[[ScheduleState, datetime], list[Event]],
        caller: Caller,
    ) -> ScheduleState:
        for _ in range(_RETRIES):
            state = await self.load(schedule_id)
            now = self.clock()
            events = decide(state, now)
            if not events:
                return state
            try:
                await self.store.append(
                    schedule_stream_of(schedule_id),
                    events,
                    state.version,
                    meta=caller.metadata(now),
                    scope=state.spec.group,
                )
            except VersionConflict:
                continue  # fired or changed meanwhile: decide again on the newer state
            return self._folded(state, events, state.version)
        raise Conflict(f"schedule {schedule_id} kept changing; try again")

    @staticmethod
    def _folded(state: ScheduleState | None, events: list[Event], version: int) -> ScheduleState:
        for offset, event in enumerate(events, start=1):
            state = schedules.fold(state, event, version + offset)
        assert state is not None
        return state

    async def trigger(self, schedule_id: str, caller: Caller) -> Run:
        """Create the schedule's run now, whatever its clock says (paused or not)."""
        for _ in range(_RETRIES):
            state = await self.load(schedule_id)
            try:
                run = await self._fire(state, self.clock(), caller, manual=True)
            except VersionConflict:
                continue
            self.counts.fired["manual"] += 1
            return run
        raise Conflict(f"schedule {schedule_id} kept changing; try again")

    # -- the firing loop

    async def fire_due(self) -> int:
        """Make every firing owed now; returns how many steps were taken."""
        rows = await self.pool.fetch(
            "SELECT schedule_id FROM schedules WHERE next_fire_at <= $1 ORDER BY next_fire_at",
            self.clock(),
        )
        steps = 0
        for row in rows:
            try:
                steps += await self.advance(row["schedule_id"])
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("schedule firing failed", schedule=row["schedule_id"], error=str(exc))
        return steps

    async def advance(self, schedule_id: str) -> int:
        """Take every step the schedule owes now, under its lock; returns how many."""
        steps = 0
        async with self.pool.acquire() as lock, lock.transaction():
            if not await lock.fetchval(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))", _LOCK_SPACE, schedule_id
            ):
                return 0  # another process is on it
            while steps < 1000:
                state = await self._load(schedule_id)
                now = self.clock()
                action = schedules.next_action(
                    state,
                    now,
                    grace=self.grace,
                    previous_running=await self._previous_running(state),
                )
                if action is None:
                    break
                try:
                    await self._take(state, action, now)
                except VersionConflict:
                    continue
                steps += 1
        return steps

    async def _take(self, state: ScheduleState, action: Fire | Skip, now: datetime) -> None:
        caller = Caller(Actor(kind="system", id=f"schedule:{state.id}"))
        if isinstance(action, Fire):
            run = await self._fire(state, action.fire_at, caller, manual=False)
            self.counts.fired["clock"] += 1
            log.info("schedule fired", schedule=state.id, fire_at=action.fire_at, run_id=run.id)
            return
        event = ScheduleSkipped(
            first=action.first,
            last=action.last,
            count=action.count,
            reason="overlap" if action.reason == "overlap" else "missed",
            at=now,
        )
        await self.store.append(
            schedule_stream_of(state.id),
            [event],
            state.version,
            meta=caller.metadata(now),
            scope=state.spec.group,
        )
        self.counts.skipped[event.reason] += action.count
        log.info(
            "schedule skipped",
            schedule=state.id,
            reason=event.reason,
            count=action.count,
            first=action.first,
            last=action.last,
        )

    async def _fire(
        self, state: ScheduleState, fire_at: datetime, caller: Caller, *, manual: bool
    ) -> Run:
        request = schedules.run_request(state, fire_at)

        async def record_firing(connection: asyncpg.Connection, run_id: str) -> None:
            now = self.clock()
            await self.store.append_in_transaction(
                connection,
                schedule_stream_of(state.id),
                [ScheduleFired(fire_at=fire_at, run_id=run_id, at=now, manual=manual)],
                state.version,
                meta=caller.metadata(now),
                scope=state.spec.group,
            )

        run, _ = await self.runs.create(request, caller, within=record_firing)
        return run

    async def _previous_running(self, state: ScheduleState) -> bool:
        if state.spec.overlap != "skip" or not state.recent:
            return False
        try:
            run = await self.runs.load(state.recent[0].run_id)
        except NotFound:
            return False
        return run.phase not in TERMINAL_PHASES


async def schedule_loop(service: ScheduleService, *, interval: float = 1.0) -> None:
    """Look for due schedules every `interval` seconds, until cancelled."""
    while True:
        try:
            await service.fire_due()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("schedule loop failed")
        await asyncio.sleep(interval)
