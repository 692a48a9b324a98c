"""The timer loop: what time alone changes (task and run timeouts) is recorded in the
run_timers table (maintained by the run_state projection from the log); every service
process claims due rows in `timer_claims` (this module's table, which a projection rebuild
leaves alone) and ticks those runs. Nothing lives only in memory: a process that dies leaves
its claims to expire and be taken again.

The loop also repairs what a crash between two commits could leave behind: a concurrency
slot still held by a run that has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import structlog

from runsvc.domain.errors import ServiceError
from runsvc.domain.events import SYSTEM
from runsvc.domain.timing import next_wakeup
from runsvc.service.runs import RunService
from runsvc.service.writer import Caller

log = structlog.get_logger("runsvc.timers")
_CLAIM_FOR = "30 seconds"


async def claim_due(service: RunService, limit: int = 100) -> list[tuple[str, datetime]]:
    """Due runs this process now ticks, with the due time each was claimed for."""
    rows = await service.pool.fetch(
        f"""
        INSERT INTO timer_claims AS c (run_id, due_at, claimed_until)
        SELECT t.run_id, t.due_at, now() + interval '{_CLAIM_FOR}' FROM run_timers t
        WHERE t.due_at <= now() AND NOT EXISTS (
            SELECT 1 FROM timer_claims x
            WHERE x.run_id = t.run_id AND x.due_at = t.due_at AND x.claimed_until >= now()
        )
        ORDER BY t.due_at LIMIT $1
        ON CONFLICT (run_id) DO UPDATE
            SET due_at = excluded.due_at, claimed_until = excluded.claimed_until
            WHERE c.due_at <> excluded.due_at OR c.claimed_until < now()
        RETURNING run_id, due_at
        """,
        limit,
    )
    return [(row["run_id"], row["due_at"]) for row in rows]


async def _snooze(
    service: RunService, run_id: str, due_at: datetime, until: datetime | None
) -> None:
    """Hold the claim on this due time until `until`, or for good (None: nothing is due)."""
    await service.pool.execute(
        "UPDATE timer_claims SET claimed_until = coalesce($3::timestamptz, 'infinity') "
        "WHERE run_id = $1 AND due_at = $2",
        run_id,
        due_at,
        until,
    )


async def forget_stale_claims(service: RunService) -> None:
    """Drop timer claims of runs that no longer have a timer."""
    await service.pool.execute(
        "DELETE FROM timer_claims c "
        "WHERE NOT EXISTS (SELECT 1 FROM run_timers t WHERE t.run_id = c.run_id)"
    )


async def tick_due(service: RunService) -> int:
    """Tick every due run once; returns how many."""
    caller = Caller(SYSTEM)
    due = await claim_due(service)
    for run_id, due_at in due:
        try:
            run = await service.tick(run_id, caller)
        except ServiceError as exc:
            log.warning("timer tick refused", run_id=run_id, error=str(exc))
            continue
        # When the tick decided nothing, the projection will not rewrite the row: hold the
        # claim until the run's next wake-up so it is not claimed again for nothing.
        wakeup = next_wakeup(run)
        if wakeup is None:
            await _snooze(service, run_id, due_at, None)
        elif wakeup > service.clock():
            await _snooze(service, run_id, due_at, wakeup)
    return len(due)


async def release_stale_slots(service: RunService) -> None:
    await service.slots.release_ended(Caller(SYSTEM))


Job = Callable[[], Awaitable[object]]


async def timer_loop(
    service: RunService, *, jobs: Sequence[tuple[int, Job]] = (), interval: float = 1.0
) -> None:
    """Tick due runs every `interval`; run each extra job every n rounds. Until cancelled."""
    every: list[tuple[int, Job]] = [
        (10, lambda: release_stale_slots(service)),
        (10, lambda: forget_stale_claims(service)),
        *jobs,
    ]
    rounds = 0
    while True:
        for job in [lambda: tick_due(service)] + [j for n, j in every if rounds % n == 0]:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer job failed")
        rounds += 1
        await asyncio.sleep(interval)
